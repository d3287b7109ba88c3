/**
 * One autocannon run against one API of bench/access, with every 2xx response time kept
 * unrounded (autocannon's own histogram keeps whole milliseconds, too coarse for a +1 ms goal).
 */
import autocannon, { type AutocannonRequest } from 'autocannon';

/** One run: where, how long, how many connections, and what each request carries. */
export interface LoadJob {
  url: string;
  path: string;
  token: string;
  durationSec: number;
  connections: number;
  /** `network-create`: each request POSTs a network with a unique name and subnet in `project`. */
  body?: { kind: 'network-create'; project: string; namePrefix: string };
}

/** What a run measured: counts from autocannon, latencies (ms, 2xx only) recorded here. */
export interface LoadResult {
  durationSec: number;
  sent: number;
  ok2xx: number;
  non2xx: number;
  errors: number;
  timeouts: number;
  statusCodeStats: Record<string, { count: number }>;
  latenciesMs: Float64Array;
}

/** A /24 per request, 10.X.Y.0/24: 65536 of them, enough for one run (the bench removes networks between runs). */
const SUBNETS_PER_RUN = 256 * 256;

/** Runs `job` and resolves with what it measured; a run that ran out of subnets rejects. */
export async function runLoad(job: LoadJob): Promise<LoadResult> {
  const headers: Record<string, string> = { authorization: `Bearer ${job.token}` };
  const request: AutocannonRequest = { method: 'GET', path: job.path, headers };
  let exhausted = false;
  if (job.body) {
    const { project, namePrefix } = job.body;
    let next = 0;
    request.method = 'POST';
    headers['content-type'] = 'application/json';
    request.setupRequest = (req) => {
      const index = next++;
      // Past the last subnet the names stay unique and the subnets repeat: those creates fail
      // (non-2xx) and the run is refused below with the reason.
      if (index >= SUBNETS_PER_RUN) exhausted = true;
      const subnet = `10.${(index >> 8) & 255}.${index & 255}.0/24`;
      return { ...req, body: JSON.stringify({ name: `${namePrefix}-${index}`, subnet, project }) };
    };
  }
  let latencies = new Float64Array(1 << 16);
  let count = 0;
  const instance = autocannon({ url: job.url, connections: job.connections, duration: job.durationSec, requests: [request] });
  instance.on('response', (_client: unknown, statusCode: number, _bytes: number, responseTimeMs: number) => {
    if (statusCode < 200 || statusCode > 299) return;
    if (count === latencies.length) {
      const grown = new Float64Array(latencies.length * 2);
      grown.set(latencies);
      latencies = grown;
    }
    latencies[count++] = responseTimeMs;
  });
  const result = await instance;
  if (exhausted) throw new Error(`The run made more than ${SUBNETS_PER_RUN} networks and ran out of distinct /24 subnets; shorten --duration`);
  return {
    durationSec: result.duration,
    sent: result.requests.sent,
    ok2xx: result['2xx'],
    non2xx: result.non2xx,
    errors: result.errors,
    timeouts: result.timeouts,
    statusCodeStats: result.statusCodeStats,
    latenciesMs: latencies.slice(0, count),
  };
}
