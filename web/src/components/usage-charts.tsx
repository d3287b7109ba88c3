/**
 * A VM's or a host's usage over the last hour (10 s points) or day (5 min points), from GET
 * /v1/vms/{vm}/usage or /v1/hosts/{host}/usage: CPU, memory, disk and network, one uPlot chart
 * each. The hour is read again every 10 s, the step of its points.
 */
import { useEffect, useMemo, useState } from 'react';
import type uPlot from 'uplot';
import { api, unwrap } from '../api/client';
import { formatBytes, UPlotChart } from './uplot-chart';

type UsageSeries = Awaited<ReturnType<typeof fetchVmUsage>>;
type Range = 'hour' | 'day';
export type UsageOf = { kind: 'vm'; project: string; name: string } | { kind: 'host'; name: string };

const REFRESH_HOUR_MS = 10_000;
const COLOURS = ['#2563eb', '#dc2626', '#059669', '#d97706'];

async function fetchVmUsage(project: string, name: string, range: Range) {
  return unwrap(await api.GET('/v1/vms/{vm}/usage', { params: { path: { vm: name }, query: { project, range } } }));
}

async function fetchUsage(of: UsageOf, range: Range): Promise<UsageSeries> {
  if (of.kind === 'vm') return fetchVmUsage(of.project, of.name, range);
  return unwrap(await api.GET('/v1/hosts/{host}/usage', { params: { path: { host: of.name }, query: { range } } }));
}

type ChartSpec = { title: string; series: Array<{ label: string; values: Array<number | null> }>; format(value: number): string };

/** The four charts of a usage series. */
function chartsOf(usage: UsageSeries, kind: UsageOf['kind']): ChartSpec[] {
  const { average } = usage;
  const rate = (value: number) => formatBytes(value, true);
  return [
    {
      title: kind === 'vm' ? 'CPU (% of its vCPUs)' : 'CPU (% of the host)',
      series: [{ label: 'CPU', values: average.cpu.map((value) => (value === null ? null : value * 100)) }],
      format: (value) => `${Math.round(value)} %`,
    },
    {
      title: `Memory${usage.memoryTotalBytes ? ` (of ${formatBytes(usage.memoryTotalBytes)})` : ''}`,
      series: [{ label: 'used', values: average.memoryBytes }],
      format: (value) => formatBytes(value),
    },
    {
      title: 'Disk',
      series: [
        { label: 'read', values: average.diskReadBytesPerSec },
        { label: 'write', values: average.diskWriteBytesPerSec },
      ],
      format: rate,
    },
    {
      title: 'Network',
      series: [
        { label: 'received', values: average.netRxBytesPerSec },
        { label: 'sent', values: average.netTxBytesPerSec },
      ],
      format: rate,
    },
  ];
}

function UsageChart({ spec, timestamps }: { spec: ChartSpec; timestamps: number[] }) {
  const options = useMemo<Omit<uPlot.Options, 'width' | 'height'>>(
    () => ({
      series: [
        {},
        ...spec.series.map((series, index) => ({
          label: series.label,
          stroke: COLOURS[index],
          width: 1.5,
          value: (_: uPlot, v: number | null) => (v === null ? '—' : spec.format(v)),
        })),
      ],
      axes: [{}, { values: (_: uPlot, ticks: number[]) => ticks.map((tick) => spec.format(tick)), size: 70 }],
      scales: { y: { range: (_: uPlot, min: number, max: number) => [Math.min(0, min), Math.max(max, 1)] } },
    }),
    [spec],
  );
  const data = useMemo<uPlot.AlignedData>(() => [timestamps, ...spec.series.map((series) => series.values)], [timestamps, spec]);
  return <UPlotChart title={spec.title} options={options} seriesKey={spec.series.map((series) => series.label).join()} data={data} />;
}

/** The usage charts of a VM or a host, with the range to show. */
export function UsageCharts({ of }: { of: UsageOf }) {
  const [range, setRange] = useState<Range>('hour');
  const [usage, setUsage] = useState<UsageSeries>();
  const [failure, setFailure] = useState<string>();
  const key = of.kind === 'vm' ? `vm/${of.project}/${of.name}` : `host/${of.name}`;
  // biome-ignore lint/correctness/useExhaustiveDependencies: `key` names `of`
  useEffect(() => {
    let ended = false;
    const load = () =>
      fetchUsage(of, range).then(
        (found) => {
          if (ended) return;
          setUsage(found);
          setFailure(undefined);
        },
        (error: unknown) => !ended && setFailure(error instanceof Error ? error.message : String(error)),
      );
    void load();
    const timer = range === 'hour' ? setInterval(load, REFRESH_HOUR_MS) : undefined;
    return () => {
      ended = true;
      clearInterval(timer);
    };
  }, [key, range]);
  const timestamps = useMemo(() => usage?.timestamps.map((at) => Date.parse(at) / 1000) ?? [], [usage]);
  const specs = useMemo(() => (usage ? chartsOf(usage, of.kind) : []), [usage, of.kind]);
  return (
    <section className="card" aria-labelledby="usage-heading">
      <div className="page-head">
        <h2 id="usage-heading">Usage</h2>
        <fieldset className="segmented">
          <legend className="visually-hidden">Range</legend>
          {(['hour', 'day'] as const).map((value) => (
            <label key={value}>
              <input type="radio" name={`range-${key}`} value={value} checked={range === value} onChange={() => setRange(value)} /> Last {value}
            </label>
          ))}
        </fieldset>
      </div>
      {failure && <p role="alert">{failure}</p>}
      {usage && !usage.timestamps.length && <p className="empty">No usage reported yet</p>}
      <div className="charts" data-usage-range={usage?.range}>
        {specs.map((spec) => (
          <UsageChart key={spec.title} spec={spec} timestamps={timestamps} />
        ))}
      </div>
    </section>
  );
}
