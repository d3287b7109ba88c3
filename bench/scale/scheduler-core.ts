/**
 * The scheduler's core alone (src/control/scheduler.ts), in this process: decisions per second
 * over `hosts` hosts with realistic allocations, for both entry points: `pickHost` (the answer
 * only) and `explainPlacement` (every host's fate, what placement records for each create).
 *
 * The hosts: 64 cores and 256 GiB each (the simulated hosts' size), CPU overcommit 4 and memory 1
 * (the defaults), a `zone` label of four, 97% online, 1% each suspect, in maintenance and
 * offline; each already 30-90% full (a seeded random draw, the same every run). The questions
 * cycle through four kinds: 1 vCPU/256 MiB (7 in 10), 4 vCPUs/8 GiB, a project residency rule
 * (zone=z2) and a soft anti-affinity group with members on 20 hosts. Each answer is then placed
 * (the host's allocation grows), as a create would, so the cluster fills as the run goes.
 */
import {
  DEFAULT_CPU_OVERCOMMIT,
  DEFAULT_MEMORY_OVERCOMMIT,
  explainPlacement,
  pickHost,
  type ScheduleRequest,
  type SchedulerHost,
  cpuCapacity,
  memoryCapacityMb,
} from '../../src/control/scheduler.ts';

/** A small seeded generator (mulberry32): the same cluster and questions every run. */
function random(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function makeHosts(count: number, next: () => number): SchedulerHost[] {
  return Array.from({ length: count }, (_, index) => {
    const draw = next();
    const status = draw < 0.97 ? 'online' : draw < 0.98 ? 'suspect' : draw < 0.99 ? 'maintenance' : 'offline';
    const host: SchedulerHost = {
      id: `host-${index.toString(16).padStart(12, '0')}`,
      name: `sim-${String(index + 1).padStart(4, '0')}`,
      status,
      labels: { zone: `z${(index % 4) + 1}`, rack: `r${Math.floor(index / 40)}` },
      cpus: 64,
      memoryMb: 256 * 1024,
      allocatedCpus: 0,
      allocatedMemoryMb: 0,
      cpuOvercommit: DEFAULT_CPU_OVERCOMMIT,
      memoryOvercommit: DEFAULT_MEMORY_OVERCOMMIT,
      accelerator: 'kvm',
    };
    const fill = 0.3 + 0.6 * next();
    host.allocatedCpus = Math.floor(cpuCapacity(host) * fill);
    host.allocatedMemoryMb = Math.floor(memoryCapacityMb(host) * fill);
    return host;
  });
}

function makeRequests(hosts: readonly SchedulerHost[], next: () => number): ScheduleRequest[] {
  const members = new Set(Array.from({ length: 20 }, () => hosts[Math.floor(next() * hosts.length)].id));
  const small: ScheduleRequest = { cpus: 1, memoryMb: 256, requiredLabels: [] };
  return [
    small,
    small,
    small,
    { cpus: 4, memoryMb: 8192 },
    small,
    { cpus: 1, memoryMb: 256, requiredLabels: [{ key: 'zone', value: 'z2', rule: "project eu's residency rule" }] },
    small,
    { cpus: 1, memoryMb: 256, group: { name: 'web', policy: 'anti-affinity', scope: 'host', strict: false, memberHostIds: members } },
    small,
    small,
  ];
}

/** Decisions per second of one entry point over `decisions` questions. */
function measure(hostCount: number, decisions: number, decide: (hosts: SchedulerHost[], request: ScheduleRequest) => string | undefined) {
  const next = random(12);
  const hosts = makeHosts(hostCount, next);
  const requests = makeRequests(hosts, next);
  const byId = new Map(hosts.map((host) => [host.id, host]));
  let placed = 0;
  const started = performance.now();
  for (let index = 0; index < decisions; index++) {
    const request = requests[index % requests.length];
    const hostId = decide(hosts, request);
    const host = hostId ? byId.get(hostId) : undefined;
    if (!host) continue;
    host.allocatedCpus += request.cpus;
    host.allocatedMemoryMb += request.memoryMb;
    placed += 1;
  }
  const seconds = (performance.now() - started) / 1000;
  return { decisions, placed, seconds, perSecond: decisions / seconds };
}

/** Decisions per second at `hosts` hosts for pickHost and explainPlacement (each after a warm-up). */
export function measureSchedulerCore(hostCount: number, decisions: number) {
  const pick = (hosts: SchedulerHost[], request: ScheduleRequest) => pickHost(hosts, request)?.id;
  const explain = (hosts: SchedulerHost[], request: ScheduleRequest) => explainPlacement(hosts, request).hostId;
  measure(hostCount, Math.ceil(decisions / 10), pick);
  const pickHostResult = measure(hostCount, decisions, pick);
  measure(hostCount, Math.ceil(decisions / 10), explain);
  const explainResult = measure(hostCount, decisions, explain);
  return { pickHost: pickHostResult, explainPlacement: explainResult };
}
