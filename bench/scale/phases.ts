/**
 * The measured phases of bench/scale, each with what every process spent in it: heartbeats (and
 * reports) from every simulated host, creates through the API, lists through the API.
 */
import { setTimeout as delay } from 'node:timers/promises';
import { type MetricsFigures, api, scrapeMetrics } from './cluster-api.ts';
import { type LoadResult, percentile, runLoad } from './load.ts';
import { cpuSeconds } from './processes.ts';
import type { SimAgentsProcess } from './processes.ts';

/** The pids whose CPU is counted (the control plane's changes when it restarts; undefined while it is stopped). */
export interface Processes {
  control: () => number | undefined;
  sim: number;
}

interface Usage {
  atMs: number;
  control: number;
  sim: number;
  bench: number;
}

/** What each process spent in one phase (CPU seconds) over its wall-clock seconds. */
export interface PhaseUsage {
  phase: string;
  wallSeconds: number;
  cpu: { control: number; sim: number; bench: number; seed?: number };
}

/** CPU seconds of `pid` so far; NaN when it does not run (the control plane while seeding). */
function cpuOf(pid: number | undefined): number {
  try {
    return pid === undefined ? Number.NaN : cpuSeconds(pid);
  } catch {
    return Number.NaN;
  }
}

export function usageNow(processes: Processes): Usage {
  const self = process.cpuUsage();
  return { atMs: performance.now(), control: cpuOf(processes.control()), sim: cpuOf(processes.sim), bench: (self.user + self.system) / 1e6 };
}

export function usageBetween(phase: string, start: Usage, end: Usage): PhaseUsage {
  return {
    phase,
    wallSeconds: (end.atMs - start.atMs) / 1000,
    cpu: { control: end.control - start.control, sim: end.sim - start.sim, bench: end.bench - start.bench },
  };
}

type Target = { url: string; token: string };
const HEARTBEAT_ROUTE = '/v1/hosts/:name/heartbeat';
const REPORT_ROUTE = '/v1/hosts/:name/report';

const routeDelta = (from: MetricsFigures, to: MetricsFigures, route: string) => (to.requests.get(route) ?? 0) - (from.requests.get(route) ?? 0);

/**
 * Heartbeats only (`reports` false) or heartbeats with full and change reports, for `seconds`:
 * what the control plane answered, what it wrote to its database, what it and the hosts spent.
 */
export async function measureReportPhase(options: {
  name: string;
  target: Target;
  sim: SimAgentsProcess;
  processes: Processes;
  seconds: number;
  reports: boolean;
}) {
  const { sim, target } = options;
  await sim.ask({ type: 'set', heartbeats: true, reports: options.reports }, 'set');
  // The scrapes stay out of the measured window (one at 100 000 VMs takes seconds, and the
  // heartbeats waiting behind it would count): the database's changes and the requests counted
  // come from the scrapes around it, the rest from the window itself.
  const m0 = await scrapeMetrics(target);
  await delay(2_000);
  await sim.ask({ type: 'reset-stats' }, 'reset');
  const u0 = usageNow(options.processes);
  await delay(options.seconds * 1000);
  const u1 = usageNow(options.processes);
  const stats = await sim.ask({ type: 'stats' }, 'stats');
  const m1 = await scrapeMetrics(target);
  return {
    usage: usageBetween(options.name, u0, u1),
    /** Between the two scrapes (a little longer than the window): only their ratio is reported. */
    between: {
      heartbeatsAnswered: routeDelta(m0, m1, HEARTBEAT_ROUTE),
      reportsAnswered: routeDelta(m0, m1, REPORT_ROUTE),
      dbRowsChanged: m1.dbRowsChanged - m0.dbRowsChanged,
    },
    sim: stats,
    metrics: m1,
  };
}

/** Fails the benchmark unless every response was a 2xx: a figure over errors measures the errors. */
function requireAllOk(label: string, result: LoadResult): void {
  if (result.non2xx === 0 && result.errors === 0 && result.timeouts === 0 && result.ok2xx > 0) return;
  throw new Error(
    `${label}: ${result.ok2xx} 2xx, ${result.non2xx} non-2xx, ${result.errors} errors, ${result.timeouts} timeouts (status codes ${JSON.stringify(result.statusCodeStats)}); every response must be 2xx`,
  );
}

interface OperationRow {
  kind: string;
  status: string;
  target: { name: string };
  createdAt: string;
  updatedAt: string;
}

async function vmsInProject(target: Target, project: string): Promise<number> {
  const { body } = await api<{ quota: { vms: { used: number } } }>(target, 'GET', `/v1/projects/${project}`);
  return body.quota.vms.used;
}

/**
 * Creates through the API for `seconds` at `connections` (each POST a new 1 vCPU/256 MiB VM with
 * the API's defaults, the guest's readiness included), then waits until no operation runs: the
 * rate counts VMs whose create succeeded, over the whole time until the last one ended.
 */
export async function measureCreates(options: { target: Target; processes: Processes; project: string; seconds: number; connections: number }) {
  const { target, project } = options;
  const before = await vmsInProject(target, project);
  const tag = Date.now().toString(36);
  const startedIso = new Date().toISOString();
  const m0 = await scrapeMetrics(target);
  const u0 = usageNow(options.processes);
  const load = await runLoad({
    url: target.url,
    token: target.token,
    durationSec: options.seconds,
    connections: options.connections,
    path: '/v1/vms',
    body: (index) => ({ name: `c${tag}-${index}`, image: 'tiny', cpus: 1, memoryMb: 256, project }),
  });
  requireAllOk('POST /v1/vms', load);
  // Requests still out when autocannon's time ran out are answered but not counted by it: the
  // control plane's own count is the one kept.
  const drainStart = performance.now();
  for (;;) {
    const { body: running } = await api<unknown[]>(target, 'GET', `/v1/operations?status=running&project=${project}&limit=1`);
    if (running.length === 0) break;
    if (performance.now() - drainStart > 600_000) throw new Error('Create operations still running 10 minutes after the load ended');
    await delay(250);
  }
  const drainSeconds = (performance.now() - drainStart) / 1000;
  const u1 = usageNow(options.processes);
  const m1 = await scrapeMetrics(target);
  const after = await vmsInProject(target, project);
  const { body: recent } = await api<OperationRow[]>(target, 'GET', `/v1/operations?project=${project}&limit=500`);
  const mine = recent.filter((op) => op.kind === 'vm.create' && op.createdAt >= startedIso);
  const failed = mine.filter((op) => op.status !== 'succeeded').length;
  const opMs = Float64Array.from(mine.filter((op) => op.status === 'succeeded').map((op) => Date.parse(op.updatedAt) - Date.parse(op.createdAt)));
  return {
    usage: usageBetween('creates', u0, u1),
    accepted: routeDelta(m0, m1, '/v1/vms'),
    succeeded: after - before,
    failedInLast500: failed,
    loadSeconds: load.durationSec,
    drainSeconds,
    createsPerSecond: (after - before) / (load.durationSec + drainSeconds),
    acceptedPerSecond: routeDelta(m0, m1, '/v1/vms') / load.durationSec,
    postP50Ms: percentile(load.latenciesMs, 0.5),
    postP99Ms: percentile(load.latenciesMs, 0.99),
    operationP50Ms: percentile(opMs, 0.5),
    operationP99Ms: percentile(opMs, 0.99),
    operationsSampled: opMs.length,
    vmsAfter: after,
    dbRowsChanged: m1.dbRowsChanged - m0.dbRowsChanged,
    dbCommits: m1.dbCommits - m0.dbCommits,
    metrics: m1,
  };
}

/** One GET route under load: requests/s, p50 and p99, and the size of an answer. */
async function measureGet(target: Target, path: string, seconds: number, connections: number) {
  const load = await runLoad({ url: target.url, token: target.token, durationSec: seconds, connections, path });
  if (load.ok2xx === 0 && load.non2xx === 0 && load.errors === 0 && load.timeouts === 0) {
    // Not one answer in the whole run (the list before paging, at 10 000 VMs): one request alone, timed.
    const started = performance.now();
    const { body } = await api<unknown[]>(target, 'GET', path);
    const ms = performance.now() - started;
    return { path, requestsPerSecond: 1000 / ms, p50Ms: ms, p99Ms: ms, bytesPerAnswer: Buffer.byteLength(JSON.stringify(body)), answers: 1, aloneOnly: true };
  }
  requireAllOk(`GET ${path}`, load);
  return {
    path,
    requestsPerSecond: load.ok2xx / load.durationSec,
    p50Ms: percentile(load.latenciesMs, 0.5),
    p99Ms: percentile(load.latenciesMs, 0.99),
    bytesPerAnswer: load.bytes2xx / load.ok2xx,
    answers: load.ok2xx,
    aloneOnly: false,
  };
}

/** Follows the list's pages (the `Link: <...>; rel="next"` header) to its end, one request at a time. */
async function walkAllPages(target: Target, first: string) {
  const started = performance.now();
  let path: string | undefined = first;
  let pages = 0;
  let items = 0;
  while (path) {
    const { body, headers }: { body: unknown[]; headers: Headers } = await api<unknown[]>(target, 'GET', path);
    pages += 1;
    items += body.length;
    path = /<([^>]+)>;\s*rel="next"/.exec(headers.get('link') ?? '')?.[1];
  }
  return { pages, items, seconds: (performance.now() - started) / 1000 };
}

/** Lists through the API: the project's VMs (the default page, and pages of a thousand), the hosts, and every VM page after page. */
export async function measureLists(options: { target: Target; processes: Processes; project: string; seconds: number; connections: number }) {
  const { target } = options;
  const u0 = usageNow(options.processes);
  // A control plane from before pages (a bench of the code before the fixes) refuses `limit`.
  const pages = (await fetch(`${target.url}/v1/vms?project=${options.project}&limit=1`, { headers: { authorization: `Bearer ${target.token}` } })).ok;
  const vms = await measureGet(target, `/v1/vms?project=${options.project}`, options.seconds, options.connections);
  const vmsFullPages = pages ? await measureGet(target, `/v1/vms?project=${options.project}&limit=1000`, options.seconds, options.connections) : undefined;
  const hosts = await measureGet(target, '/v1/hosts', Math.max(5, Math.ceil(options.seconds / 4)), options.connections);
  const u1 = usageNow(options.processes);
  const walk = await walkAllPages(target, `/v1/vms?project=${options.project}${pages ? '&limit=1000' : ''}`);
  const metrics = await scrapeMetrics(target);
  return { usage: usageBetween('lists', u0, u1), vms, vmsFullPages, hosts, walk, metrics };
}
