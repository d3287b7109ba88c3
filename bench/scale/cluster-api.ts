/**
 * What bench/scale reads from the control plane over its API: JSON routes with the admin token,
 * and GET /metrics, of which it keeps the figures it reports (the process's CPU and memory, the
 * database's row changes, and the API's request counts by route).
 */
import { parsePrometheusText } from '../../src/cli/prometheus-text.ts';

/** A JSON request to the API; a non-2xx answer throws with its body. */
export async function api<T>(target: { url: string; token: string }, method: string, path: string, body?: unknown): Promise<{ body: T; headers: Headers }> {
  const response = await fetch(`${target.url}${path}`, {
    method,
    headers: { authorization: `Bearer ${target.token}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  if (!response.ok) throw new Error(`${method} ${path} answered ${response.status}: ${text.slice(0, 500)}`);
  return { body: (text ? JSON.parse(text) : undefined) as T, headers: response.headers };
}

/** The figures of one scrape of GET /metrics that the bench reports. */
export interface MetricsFigures {
  /** How long the scrape took (ms), as the bench saw it. */
  scrapeMs: number;
  scrapeBytes: number;
  cpuSeconds: number;
  residentBytes: number;
  heapUsedBytes: number;
  /** Rows the control plane inserted, updated or deleted since it started; NaN where not served. */
  dbRowsChanged: number;
  /** Commits of the database since it started (each waits for the disk); NaN where not served. */
  dbCommits: number;
  /** Requests answered, by route pattern (all methods and statuses together). */
  requests: Map<string, number>;
}

export async function scrapeMetrics(target: { url: string; token: string }): Promise<MetricsFigures> {
  const started = performance.now();
  const response = await fetch(`${target.url}/metrics`, { headers: { authorization: `Bearer ${target.token}` } });
  const text = await response.text();
  const scrapeMs = performance.now() - started;
  if (!response.ok) throw new Error(`GET /metrics answered ${response.status}: ${text.slice(0, 300)}`);
  // Only the lines read here are parsed: a scrape at 100 000 VMs holds two series per VM.
  const wanted =
    /^(nubis_process_cpu_seconds_total|nubis_process_resident_memory_bytes|nubis_nodejs_heap_size_used_bytes|nubis_db_rows_changed_total|nubis_db_commits_total|nubis_api_requests_total)[{ ]/;
  const samples = parsePrometheusText(
    text
      .split('\n')
      .filter((line) => wanted.test(line))
      .join('\n'),
  );
  const value = (name: string) => Number(samples.find((sample) => sample.name === name)?.value ?? Number.NaN);
  const requests = new Map<string, number>();
  for (const sample of samples.filter((s) => s.name === 'nubis_api_requests_total'))
    requests.set(sample.labels.route, (requests.get(sample.labels.route) ?? 0) + Number(sample.value));
  return {
    scrapeMs,
    scrapeBytes: Buffer.byteLength(text),
    cpuSeconds: value('nubis_process_cpu_seconds_total'),
    residentBytes: value('nubis_process_resident_memory_bytes'),
    heapUsedBytes: value('nubis_nodejs_heap_size_used_bytes'),
    dbRowsChanged: value('nubis_db_rows_changed_total'),
    dbCommits: value('nubis_db_commits_total'),
    requests,
  };
}
