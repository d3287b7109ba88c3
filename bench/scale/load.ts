/**
 * The load generator of bench/scale: autocannon 9 in the bench's own process, over real HTTP on
 * 127.0.0.1, with a fixed number of connections (a closed loop). Every 2xx response time is kept
 * unrounded (autocannon's own histogram keeps whole milliseconds).
 */
import autocannon, { type AutocannonRequest } from 'autocannon';

/** One run: where, how long, how many connections, and what each request is. */
export interface LoadJob {
  url: string;
  token: string;
  durationSec: number;
  connections: number;
  /** GET this path... */
  path: string;
  /** ...or POST a body made for each request (its index in the run). */
  body?: (index: number) => unknown;
}

/** What a run measured. */
export interface LoadResult {
  durationSec: number;
  sent: number;
  ok2xx: number;
  non2xx: number;
  errors: number;
  timeouts: number;
  statusCodeStats: Record<string, { count: number }>;
  /** Response times (ms) of the 2xx answers, in the order they came. */
  latenciesMs: Float64Array;
  /** Bytes of the 2xx answers, headers included. */
  bytes2xx: number;
}

/** Runs `job` and resolves with what it measured. */
export async function runLoad(job: LoadJob): Promise<LoadResult> {
  const headers: Record<string, string> = { authorization: `Bearer ${job.token}` };
  const request: AutocannonRequest = { method: 'GET', path: job.path, headers };
  if (job.body) {
    const make = job.body;
    let next = 0;
    request.method = 'POST';
    headers['content-type'] = 'application/json';
    request.setupRequest = (req) => ({ ...req, body: JSON.stringify(make(next++)) });
  }
  let latencies = new Float64Array(1 << 16);
  let count = 0;
  let bytes2xx = 0;
  // A list of 100 000 VMs in one answer takes seconds: give every request a minute.
  const instance = autocannon({ url: job.url, connections: job.connections, duration: job.durationSec, requests: [request], timeout: 60 });
  instance.on('response', (_client: unknown, statusCode: number, bytes: number, responseTimeMs: number) => {
    if (statusCode < 200 || statusCode > 299) return;
    bytes2xx += bytes;
    if (count === latencies.length) {
      const grown = new Float64Array(latencies.length * 2);
      grown.set(latencies);
      latencies = grown;
    }
    latencies[count++] = responseTimeMs;
  });
  const result = await instance;
  return {
    durationSec: result.duration,
    sent: result.requests.sent,
    ok2xx: result['2xx'],
    non2xx: result.non2xx,
    errors: result.errors,
    timeouts: result.timeouts,
    statusCodeStats: result.statusCodeStats,
    latenciesMs: latencies.slice(0, count),
    bytes2xx,
  };
}

/** The `fraction` percentile of `values` (sorted here). */
export function percentile(values: Float64Array, fraction: number): number {
  const sorted = Float64Array.from(values).sort();
  return sorted.length === 0 ? Number.NaN : sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(fraction * sorted.length) - 1))];
}
