/**
 * The simulated hosts of bench/scale, in one process of their own: `--hosts` hosts, each with its
 * agent API on its own unix socket (sim-agent-app.ts), joining the control plane through its real
 * join route with the join token, then doing what a real agent does (src/host/agent.ts,
 * src/host/heartbeat-loop.ts): a heartbeat every HEARTBEAT_INTERVAL_MS listing its VMs (killing
 * the stale ones the answer names), a full report every 10 s, and a change report when a VM's
 * status changes, batched per tick. The bodies are the contract's types (HeartbeatRequest,
 * HostReport, HostJoinRequest), sent with the agent's own client (requestJson).
 *
 * Each host starts its heartbeat and its report cycle at a random point of the period, as agents
 * started at different times would. Every request's latency is kept for the bench.
 *
 * Protocol (IPC): the parent sends `start`, `join`, `set`, `stats` and `reset-stats` and gets one
 * answer each; when the parent disconnects (also when it dies) the servers close, the sockets go
 * and the process exits.
 */
import { randomBytes } from 'node:crypto';
import { createHash } from 'node:crypto';
import { rmSync } from 'node:fs';
import type { Server } from 'node:http';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import type { Static } from '@sinclair/typebox';
import type { VmStatus } from '../../src/agent-api/contract.ts';
import { HEARTBEAT_INTERVAL_MS, type HeartbeatAnswer, type HeartbeatRequest } from '../../src/agent-api/heartbeat.ts';
import { messageOf } from '../../src/core/errors.ts';
import { requestJson } from '../../src/core/http-json.ts';
import type { HostJoinRequest, HostReport } from '../../src/wire/schemas.ts';
import { buildSimAgentApp, serveHost } from './sim-agent-app.ts';
import { SimHost } from './sim-host.ts';

/** Seconds between full reports: the real agent's default (`heartbeatSeconds`). */
const FULL_REPORT_INTERVAL_MS = 10_000;
/** Joins in flight at once. */
const JOINS_AT_ONCE = 16;

/** What the parent asks. */
export type SimRequest =
  | { type: 'start' }
  | { type: 'join' }
  | { type: 'set'; heartbeats: boolean; reports: boolean }
  | { type: 'reset-stats' }
  | { type: 'stats' };

/** Latencies of one kind of request since the last reset. */
export interface LatencyStats {
  count: number;
  errors: number;
  lastError?: string;
  p50Ms: number;
  p99Ms: number;
  maxMs: number;
}

/** What the process answers. */
export type SimAnswer =
  | { type: 'started'; hosts: number }
  | { type: 'joined'; seconds: number; join: LatencyStats }
  | { type: 'set' }
  | { type: 'reset' }
  | { type: 'stats'; vms: number; staleKilled: number; heartbeats: LatencyStats; fullReports: LatencyStats; changeReports: LatencyStats }
  | { type: 'failed'; error: string };

const { values: args } = parseArgs({
  options: {
    hosts: { type: 'string', default: '1000' },
    dir: { type: 'string' },
    control: { type: 'string' },
    'join-token': { type: 'string' },
    cpus: { type: 'string', default: '64' },
    'memory-mb': { type: 'string', default: String(256 * 1024) },
    underlay: { type: 'boolean', default: false },
  },
});
if (!args.dir || !args.control || !args['join-token']) throw new Error('Give --dir, --control and --join-token');
const socketDir = args.dir;
const controlUrl = args.control;
const joinToken = args['join-token'];
const hostCount = Number(args.hosts);
const hostCpus = Number(args.cpus);
const hostMemoryMb = Number(args['memory-mb']);
/** With `--underlay`, each host has an underlay address (10.200.X.Y), as hosts carrying virtual networks do. */
const withUnderlay = args.underlay === true;

/** Latencies of one kind of request, kept until the next reset. */
class Latencies {
  #ms: number[] = [];
  #errors = 0;
  #lastError: string | undefined;

  add(ms: number): void {
    this.#ms.push(ms);
  }

  fail(error: unknown): void {
    this.#errors += 1;
    this.#lastError = messageOf(error).slice(0, 300);
  }

  reset(): void {
    this.#ms = [];
    this.#errors = 0;
    this.#lastError = undefined;
  }

  stats(): LatencyStats {
    const sorted = Float64Array.from(this.#ms).sort();
    const at = (fraction: number) => (sorted.length === 0 ? 0 : sorted[Math.min(sorted.length - 1, Math.ceil(fraction * sorted.length) - 1)]);
    return {
      count: sorted.length,
      errors: this.#errors,
      ...(this.#lastError ? { lastError: this.#lastError } : {}),
      p50Ms: at(0.5),
      p99Ms: at(0.99),
      maxMs: sorted.length ? sorted[sorted.length - 1] : 0,
    };
  }
}

const latencies = { join: new Latencies(), heartbeats: new Latencies(), fullReports: new Latencies(), changeReports: new Latencies() };
const mode = { heartbeats: false, reports: false };
let staleKilled = 0;
let stopping = false;
const timers = new Set<NodeJS.Timeout>();

/** Changed statuses per host, sent as one change report per tick (the real agent's ChangeReports). */
const changed = new Map<SimHost, Map<string, VmStatus>>();
function noteChange(host: SimHost, status: VmStatus): void {
  let batch = changed.get(host);
  if (!batch) {
    batch = new Map();
    changed.set(host, batch);
    queueMicrotask(() => {
      changed.delete(host);
      if (mode.reports) void report(host, [...batch!.values()], false);
    });
  }
  batch.set(status.id, status);
}

const hosts = Array.from(
  { length: hostCount },
  (_, index) =>
    new SimHost({
      name: `sim-${String(index + 1).padStart(4, '0')}`,
      socketPath: join(socketDir, `sim-${String(index + 1).padStart(4, '0')}.sock`),
      agentToken: `nubis_agent_${randomBytes(24).toString('base64url')}`,
      onChange: noteChange,
    }),
);
const servers: Server[] = [];

async function timed<T>(into: Latencies, call: () => Promise<T>): Promise<T | undefined> {
  const started = performance.now();
  try {
    const answer = await call();
    into.add(performance.now() - started);
    return answer;
  } catch (error) {
    into.fail(error);
    return undefined;
  }
}

async function report(host: SimHost, vms: VmStatus[], full: boolean): Promise<void> {
  const body: Static<typeof HostReport> = { vms, full };
  await timed(full ? latencies.fullReports : latencies.changeReports, () =>
    requestJson(controlUrl, { method: 'POST', path: `/v1/hosts/${host.name}/report`, token: host.agentToken, body, timeoutMs: 10_000 }),
  );
}

async function heartbeat(host: SimHost): Promise<void> {
  const body: HeartbeatRequest = { vms: host.ids() };
  const answer = await timed(latencies.heartbeats, () =>
    requestJson<HeartbeatAnswer>(controlUrl, { method: 'POST', path: `/v1/hosts/${host.name}/heartbeat`, token: host.agentToken, body, timeoutMs: 2_000 }),
  );
  // As the real agent: VMs of a fenced host that now run elsewhere are killed first.
  for (const id of answer?.stale ?? []) {
    host.delete(id);
    staleKilled += 1;
  }
}

/** Runs `step` every `intervalMs` after the previous one ended, starting at a random point of the period. */
function every(intervalMs: number, step: () => Promise<void>): void {
  const next = (delayMs: number) => {
    const timer = setTimeout(async () => {
      timers.delete(timer);
      await step();
      if (!stopping) next(intervalMs);
    }, delayMs);
    timers.add(timer);
  };
  next(Math.random() * intervalMs);
}

async function joinHost(host: SimHost, index: number): Promise<void> {
  const body: Static<typeof HostJoinRequest> = {
    ...(withUnderlay ? { underlayIp: `10.200.${(index + 1) >> 8}.${(index + 1) & 255}` } : {}),
    name: host.name,
    joinToken,
    endpoint: `unix:${host.socketPath}`,
    agentToken: host.agentToken,
    accelerator: 'kvm',
    acceleratorReason: 'simulated host (bench/scale)',
    cpus: hostCpus,
    memoryMb: hostMemoryMb,
    qemuVersion: 'QEMU emulator version 10.0.2 (simulated)',
  };
  const answer = await timed(latencies.join, () =>
    requestJson<{ controlToken: string }>(controlUrl, { method: 'POST', path: '/v1/hosts/join', body, timeoutMs: 30_000 }),
  );
  if (!answer) throw new Error(`Host ${host.name} could not join: ${latencies.join.stats().lastError}`);
  host.controlTokenSha256 = createHash('sha256').update(answer.controlToken).digest('hex');
}

async function joinAll(): Promise<number> {
  const started = performance.now();
  let next = 0;
  await Promise.all(
    Array.from({ length: JOINS_AT_ONCE }, async () => {
      for (let index = next++; index < hosts.length; index = next++) await joinHost(hosts[index], index);
    }),
  );
  const seconds = (performance.now() - started) / 1000;
  for (const host of hosts) {
    every(HEARTBEAT_INTERVAL_MS, async () => {
      if (mode.heartbeats) await heartbeat(host);
    });
    every(FULL_REPORT_INTERVAL_MS, async () => {
      if (mode.reports) await report(host, host.list(), true);
    });
  }
  return seconds;
}

async function answer(request: SimRequest): Promise<SimAnswer> {
  switch (request.type) {
    case 'start': {
      const app = await buildSimAgentApp();
      for (const host of hosts) servers.push(await serveHost(app, host));
      return { type: 'started', hosts: hosts.length };
    }
    case 'join': {
      const seconds = await joinAll();
      return { type: 'joined', seconds, join: latencies.join.stats() };
    }
    case 'set':
      mode.heartbeats = request.heartbeats;
      mode.reports = request.reports;
      return { type: 'set' };
    case 'reset-stats':
      for (const kind of Object.values(latencies)) kind.reset();
      staleKilled = 0;
      return { type: 'reset' };
    case 'stats':
      return {
        type: 'stats',
        vms: hosts.reduce((sum, host) => sum + host.vmCount, 0),
        staleKilled,
        heartbeats: latencies.heartbeats.stats(),
        fullReports: latencies.fullReports.stats(),
        changeReports: latencies.changeReports.stats(),
      };
  }
}

function stop(): void {
  if (stopping) return;
  stopping = true;
  for (const timer of timers) clearTimeout(timer);
  for (const server of servers) server.close();
  for (const host of hosts) rmSync(host.socketPath, { force: true });
  process.exit(0);
}

process.on('message', (request: SimRequest) => {
  answer(request)
    .catch((error: unknown): SimAnswer => ({ type: 'failed', error: messageOf(error) }))
    .then((reply) => process.send?.(reply));
});
process.on('disconnect', stop);
process.on('SIGTERM', stop);
// Ctrl-C reaches the whole process group: the parent cleans up and disconnects us.
process.on('SIGINT', () => undefined);
