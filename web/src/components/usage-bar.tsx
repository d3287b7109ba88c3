/** A used / total bar with its figures in words, so it reads the same without the colour. */
export function UsageBar({ label, used, total, unit }: { label: string; used: number; total: number; unit: string }) {
  const share = total > 0 ? Math.min(used / total, 1) : 0;
  const text = `${formatAmount(used, unit)} / ${formatAmount(total, unit)}`;
  return (
    <div className="usage">
      <span className="usage-label">
        {label} <span className="usage-figures">{text}</span>
      </span>
      <meter min={0} max={1} value={share} high={0.85} optimum={0} aria-label={`${label} ${text}`} />
    </div>
  );
}

/** A figure with its unit, bytes and MiB shown in the largest unit that keeps it above 1. */
export function formatAmount(value: number, unit: string): string {
  if (unit === 'MiB' || unit === 'B') {
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
    let index = units.indexOf(unit);
    let amount = value;
    while (amount >= 1024 && index < units.length - 1) {
      amount /= 1024;
      index++;
    }
    return `${Number.isInteger(amount) ? amount : amount.toFixed(1)} ${units[index]}`;
  }
  return `${Number.isInteger(value) ? value : value.toFixed(1)} ${unit}`;
}
