/**
 * The load side of bench/access, in its own process so that autocannon does not share the event
 * loop (and the core) of the API it measures. The parent sends one `LoadJob` at a time and gets
 * one `LoadResult` back; the process ends when the parent disconnects.
 */
import { rmSync } from 'node:fs';
import autocannon, { type AutocannonRequest } from 'autocannon';

/** One autocannon run against one API. */
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
  /** Every 2xx response time in ms, unrounded: autocannon's own histogram keeps whole ms only. */
  latenciesMs: Float64Array;
}

/** A /24 per request, 10.X.Y.0/24: 65536 of them, enough for a run when the parent resets networks between runs. */
const SUBNETS_PER_RUN = 256 * 256;

async function run(job: LoadJob): Promise<LoadResult> {
  const headers: Record<string, string> = { authorization: `Bearer ${job.token}` };
  const request: AutocannonRequest = { method: 'GET', path: job.path, headers };
  if (job.body) {
    const { project, namePrefix } = job.body;
    let next = 0;
    request.method = 'POST';
    headers['content-type'] = 'application/json';
    request.setupRequest = (req) => {
      const index = next++;
      if (index >= SUBNETS_PER_RUN) throw new Error(`Ran out of distinct /24 subnets after ${index} creates; shorten --duration`);
      const subnet = `10.${index >> 8}.${index & 255}.0/24`;
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

/** What the parent sends: a job to run, or a folder to remove should the parent die without cleaning up. */
export type LoadMessage = { job: LoadJob } | { guardDir: string };

// `npx tsx` answers a Ctrl-C that the parent does not acknowledge within 30 ms with SIGKILL (its
// relaySignals), which a busy parent can miss: then no clean-up of its own runs, and this process,
// told by the disconnect, removes the parent's temporary folders. After a normal clean-up they are gone already.
const guarded: string[] = [];

process.on('message', (message: LoadMessage) => {
  if ('guardDir' in message) {
    guarded.push(message.guardDir);
    return;
  }
  run(message.job).then(
    (result) => process.send?.({ result }),
    (error: Error) => process.send?.({ error: error.message }),
  );
});
process.on('disconnect', () => {
  for (const dir of guarded) rmSync(dir, { recursive: true, force: true });
  process.exit(0);
});
// Ctrl-C reaches the whole process group: the parent ends this process (by disconnecting) once it
// has cleaned up, rather than having its run fail under it.
process.on('SIGINT', () => undefined);
