/** How the CLI prints: aligned tables for people, JSON with --json, a progress bar on a terminal. */
import type { OperationEvent } from '../wire/schemas.ts';

/** Prints rows as a table with a header, columns padded to their widest cell. */
export function printTable(headers: string[], rows: Array<Array<string | number | undefined>>): void {
  const cells = [headers, ...rows.map((row) => row.map((cell) => (cell === undefined ? '-' : String(cell))))];
  const widths = headers.map((_, column) => Math.max(...cells.map((row) => row[column].length)));
  for (const row of cells)
    console.log(
      row
        .map((cell, column) => cell.padEnd(widths[column]))
        .join('  ')
        .trimEnd(),
    );
}

/** Prints a value as indented JSON, the output of every command under --json. */
export function printJson(value: unknown): void {
  console.log(JSON.stringify(value, null, 2));
}

/** "1.5 GiB" from a GiB up, "20 MiB" below: for pools and volumes. */
export function formatSize(bytes: number): string {
  return bytes >= 2 ** 30 ? `${(bytes / 2 ** 30).toFixed(1)} GiB` : `${(bytes / 2 ** 20).toFixed(0)} MiB`;
}

/** "1h 2m", "3m 4s", "5s": for uptimes. */
export function formatDuration(seconds: number | undefined): string | undefined {
  if (seconds === undefined) return undefined;
  const h = Math.floor(seconds / 3600);
  const m = Math.floor((seconds % 3600) / 60);
  const s = seconds % 60;
  return h > 0 ? `${h}h ${m}m` : m > 0 ? `${m}m ${s}s` : `${s}s`;
}

/**
 * Shows operation progress on stderr: a redrawn bar on a terminal, one line per event otherwise.
 * Silent with --json, so standard output stays machine-readable.
 */
export class ProgressView {
  readonly #enabled: boolean;
  readonly #tty = Boolean(process.stderr.isTTY);
  readonly #title: string;

  constructor(title: string, enabled: boolean) {
    this.#title = title;
    this.#enabled = enabled;
  }

  update(event: OperationEvent): void {
    if (!this.#enabled) return;
    if (!this.#tty) {
      process.stderr.write(`${this.#title}: [${event.stage}] ${event.message}\n`);
      return;
    }
    const width = 24;
    const filled = Math.round(event.progress * width);
    const bar = `${'#'.repeat(filled)}${'.'.repeat(width - filled)}`;
    process.stderr.write(
      `\r\x1b[2K${this.#title} [${bar}] ${Math.round(event.progress * 100)}% ${event.message}`.slice(0, (process.stderr.columns ?? 100) - 1),
    );
  }

  done(): void {
    if (this.#enabled && this.#tty) process.stderr.write('\n');
  }
}
