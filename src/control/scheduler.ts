/**
 * The scheduler's core: which host takes a VM. Filters refuse hosts (each refusal names its
 * rule), weighers score the rest (spread or pack by memory and CPU, soft placement groups), the
 * best score wins. It is pure and synchronous: the placement service (placement.ts) loads the
 * hosts and rules, calls it, and records the decision.
 *
 * Two entry points share the filters: `pickHost` is the hot path (no allocation per host, a
 * thousand hosts thousands of times a second), `explainPlacement` gives every host's fate.
 */

/** Memory kept free on every host for the host itself and QEMU's own overhead. */
export const HOST_RESERVED_MEMORY_MB = 512;
/** vCPUs per host core a host gives VMs unless its own ratio is set (`nubis host set --cpu-overcommit`). */
export const DEFAULT_CPU_OVERCOMMIT = 4;
/** Guest memory per MiB of host memory unless set: none overcommitted (a host has no swap to fall back on). */
export const DEFAULT_MEMORY_OVERCOMMIT = 1;
/** How many of the best-scored hosts a decision keeps (the record stays small at a thousand hosts). */
export const RANKED_KEPT = 10;

/** A host as the scheduler sees it. */
export interface SchedulerHost {
  id: string;
  name: string;
  /** online, suspect, offline, maintenance, fenced: online and suspect hosts take VMs. */
  status: string;
  labels: Readonly<Record<string, string>>;
  cpus: number;
  memoryMb: number;
  allocatedCpus: number;
  allocatedMemoryMb: number;
  cpuOvercommit: number;
  memoryOvercommit: number;
  accelerator: string;
  underlayIp?: string;
}

/** A placement group's rule, with where its other members run now. */
export interface GroupRule {
  name: string;
  policy: 'affinity' | 'anti-affinity';
  scope: 'host' | 'zone';
  strict: boolean;
  /** Hosts that run the group's other members (the VM being placed is not one of them). */
  memberHostIds: ReadonlySet<string>;
}

/** A label a host must carry, and the rule that asks for it (named in a refusal). */
export interface RequiredLabel {
  key: string;
  value: string;
  rule: string;
}

export interface ScheduleRequest {
  cpus: number;
  memoryMb: number;
  /** Only this host may take the VM (a pin, or the host of its dir-pool disks), and why. */
  onlyHost?: { id: string; why: string };
  /** These hosts may not (a migration's source). */
  avoidHostIds?: ReadonlySet<string>;
  requiredLabels?: readonly RequiredLabel[];
  /** The VM is on virtual networks: its host needs an underlay address for the overlay. */
  needsUnderlay?: boolean;
  /** The accelerator the host must have (a running VM migrates only between hosts of its own). */
  accelerator?: string;
  /** The host CPUs the VM is pinned to (`--cpu-pin`): the host must have them all. */
  cpuPin?: { list: string; highest: number };
  group?: GroupRule;
  /** The VM's HA group: hosts it prefers (or, `restricted`, the only ones it may use). */
  haGroup?: { name: string; hostIds: ReadonlySet<string>; restricted: boolean };
  /** spread (default): the least-loaded host; pack: the fullest host that fits. */
  strategy?: 'spread' | 'pack';
}

/** What a filter sees besides the host: the request and what was worked out once for it. */
interface Prepared {
  request: ScheduleRequest;
  /** Zones (the `zone` label) of the hosts that run the group's other members. */
  memberZones: ReadonlySet<string>;
}

interface Filter {
  name: string;
  /** False when the filter has nothing to say about this request (it is skipped). */
  applies(request: ScheduleRequest): boolean;
  passes(host: SchedulerHost, prepared: Prepared): boolean;
  /** Why `host` is refused: called only for refused hosts, only when explaining. */
  reason(host: SchedulerHost, prepared: Prepared): string;
}

/** Memory the host can give VMs: after its reserve, times its overcommit ratio. */
export function memoryCapacityMb(host: SchedulerHost): number {
  return Math.max(0, host.memoryMb - HOST_RESERVED_MEMORY_MB) * host.memoryOvercommit;
}

export function cpuCapacity(host: SchedulerHost): number {
  return host.cpus * host.cpuOvercommit;
}

function zoneOf(host: SchedulerHost): string | undefined {
  return host.labels.zone;
}

/** Whether `host` is where the group's other members are (same host, or same zone). */
function withMembers(host: SchedulerHost, prepared: Prepared): boolean {
  const group = prepared.request.group!;
  if (group.scope === 'host') return group.memberHostIds.has(host.id);
  const zone = zoneOf(host);
  return zone !== undefined && prepared.memberZones.has(zone);
}

const always = (): boolean => true;

/** The filters, cheapest and most refusing first. */
const FILTERS: readonly Filter[] = [
  {
    name: 'pinned',
    applies: (request) => request.onlyHost !== undefined,
    passes: (host, { request }) => host.id === request.onlyHost!.id,
    reason: (host, { request }) => `${host.name} is not the host the VM must run on (${request.onlyHost!.why})`,
  },
  {
    name: 'avoid',
    applies: (request) => (request.avoidHostIds?.size ?? 0) > 0,
    passes: (host, { request }) => !request.avoidHostIds!.has(host.id),
    reason: (host) => `${host.name} is where the VM runs now`,
  },
  {
    name: 'state',
    applies: always,
    // A suspect host missed a few heartbeats (a busy host can): it is not refused for that alone.
    passes: (host) => host.status === 'online' || host.status === 'suspect',
    reason: (host) => `${host.name} is ${host.status}`,
  },
  {
    name: 'memory',
    applies: always,
    passes: (host, { request }) => host.allocatedMemoryMb + request.memoryMb <= memoryCapacityMb(host),
    reason: (host, { request }) =>
      `${host.name} has ${Math.max(0, memoryCapacityMb(host) - host.allocatedMemoryMb)} MiB free for VMs (${host.memoryOvercommit}x its ${host.memoryMb} MiB less ${HOST_RESERVED_MEMORY_MB} MiB reserved), the VM needs ${request.memoryMb} MiB`,
  },
  {
    name: 'cpu',
    applies: always,
    passes: (host, { request }) => host.allocatedCpus + request.cpus <= cpuCapacity(host),
    reason: (host, { request }) =>
      `${host.name} has ${Math.max(0, cpuCapacity(host) - host.allocatedCpus)} vCPUs left (${host.cpuOvercommit}x its ${host.cpus} cores), the VM needs ${request.cpus}`,
  },
  {
    name: 'labels',
    applies: (request) => (request.requiredLabels?.length ?? 0) > 0,
    passes: (host, { request }) => request.requiredLabels!.every((label) => host.labels[label.key] === label.value),
    reason: (host, { request }) => {
      const missing = request.requiredLabels!.find((label) => host.labels[label.key] !== label.value)!;
      const has = host.labels[missing.key];
      return `${host.name} ${has === undefined ? `has no ${missing.key} label` : `has ${missing.key}=${has}`}; ${missing.rule} requires ${missing.key}=${missing.value}`;
    },
  },
  {
    name: 'accelerator',
    applies: (request) => request.accelerator !== undefined,
    passes: (host, { request }) => host.accelerator === request.accelerator,
    reason: (host, { request }) => `${host.name} runs VMs with ${host.accelerator}, the VM runs with ${request.accelerator}`,
  },
  {
    name: 'cpu-pin',
    applies: (request) => request.cpuPin !== undefined,
    passes: (host, { request }) => host.cpus > request.cpuPin!.highest,
    reason: (host, { request }) => `${host.name} has CPUs 0-${host.cpus - 1}, the VM is pinned to ${request.cpuPin!.list}`,
  },
  {
    name: 'network',
    applies: (request) => request.needsUnderlay === true,
    passes: (host) => host.underlayIp !== undefined,
    reason: (host) => `${host.name} has no underlay address, so it cannot carry virtual networks`,
  },
  {
    name: 'ha-group',
    applies: (request) => request.haGroup?.restricted === true,
    passes: (host, { request }) => request.haGroup!.hostIds.has(host.id),
    reason: (host, { request }) => `${host.name} is not a host of restricted HA group ${request.haGroup!.name}`,
  },
  {
    name: 'zone',
    applies: (request) => request.group?.scope === 'zone',
    passes: (host) => zoneOf(host) !== undefined,
    reason: (host, { request }) => `${host.name} has no zone label, and group ${request.group!.name} places by zone`,
  },
  {
    name: 'group',
    applies: (request) => request.group?.strict === true && request.group.memberHostIds.size > 0,
    passes: (host, prepared) => withMembers(host, prepared) === (prepared.request.group!.policy === 'affinity'),
    reason: (host, { request }) => {
      const group = request.group!;
      const where = group.scope === 'host' ? 'host' : `zone ${zoneOf(host)}`;
      return group.policy === 'affinity'
        ? `${host.name} is not where the members of strict affinity group ${group.name} run`
        : `${host.name}'s ${where} already runs a member of strict anti-affinity group ${group.name}`;
    },
  },
];

/** A weigher scores a host that passed every filter, from 0 (worst) to 1 (best), times its weight. */
interface Weigher {
  name: string;
  weight: number;
  applies(request: ScheduleRequest): boolean;
  score(host: SchedulerHost, prepared: Prepared): number;
}

/** The share of a capacity still free after the VM is placed; packing wants it small. */
function freeShare(allocated: number, asked: number, capacity: number, strategy: 'spread' | 'pack' | undefined): number {
  const free = capacity > 0 ? 1 - (allocated + asked) / capacity : 0;
  return strategy === 'pack' ? 1 - free : free;
}

const WEIGHERS: readonly Weigher[] = [
  {
    name: 'memory',
    weight: 1,
    applies: always,
    score: (host, { request }) => freeShare(host.allocatedMemoryMb, request.memoryMb, memoryCapacityMb(host), request.strategy),
  },
  {
    name: 'cpu',
    weight: 1,
    applies: always,
    score: (host, { request }) => freeShare(host.allocatedCpus, request.cpus, cpuCapacity(host), request.strategy),
  },
  {
    // A soft group counts more than load: with it, a host that keeps the group's policy wins
    // whenever one fits (as OpenStack's soft (anti-)affinity weighers do).
    name: 'group',
    weight: 4,
    applies: (request) => request.group !== undefined && !request.group.strict && request.group.memberHostIds.size > 0,
    score: (host, prepared) => (withMembers(host, prepared) === (prepared.request.group!.policy === 'affinity') ? 1 : 0),
  },
  {
    // The HA group's hosts come first whenever one fits: the whole point of the group.
    name: 'ha-group',
    weight: 8,
    applies: (request) => request.haGroup !== undefined,
    score: (host, { request }) => (request.haGroup!.hostIds.has(host.id) ? 1 : 0),
  },
];

function prepare(hosts: readonly SchedulerHost[], request: ScheduleRequest): Prepared {
  const memberZones = new Set<string>();
  if (request.group?.scope === 'zone') {
    for (const host of hosts) {
      const zone = zoneOf(host);
      if (zone !== undefined && request.group.memberHostIds.has(host.id)) memberZones.add(zone);
    }
  }
  return { request, memberZones };
}

function scoreOf(host: SchedulerHost, weighers: readonly Weigher[], prepared: Prepared): number {
  let total = 0;
  for (const weigher of weighers) total += weigher.weight * weigher.score(host, prepared);
  return total;
}

/** The host that takes the VM, or undefined when none can (then `explainPlacement` says why). */
export function pickHost(hosts: readonly SchedulerHost[], request: ScheduleRequest): SchedulerHost | undefined {
  const prepared = prepare(hosts, request);
  const filters = FILTERS.filter((filter) => filter.applies(request));
  const weighers = WEIGHERS.filter((weigher) => weigher.applies(request));
  let best: SchedulerHost | undefined;
  let bestScore = -Infinity;
  candidates: for (const host of hosts) {
    for (const filter of filters) if (!filter.passes(host, prepared)) continue candidates;
    const score = scoreOf(host, weighers, prepared);
    // Ties go to the first host in the list's order (by name): the same question, the same answer.
    if (score > bestScore) {
      best = host;
      bestScore = score;
    }
  }
  return best;
}

/** Every host's fate: refused by which filter and why, or scored (the best `RANKED_KEPT`). */
export interface PlacementDecision {
  host?: string;
  hostId?: string;
  refused: Array<{ host: string; filter: string; reason: string }>;
  ranked: Array<{ host: string; score: number; weights: Record<string, number> }>;
}

/**
 * Every host's fate: refused by which filter and why, or scored, the best RANKED_KEPT with their
 * weights. A thousand hosts a create: only the best are kept as they come (a short sorted list,
 * no sort of every host) and only theirs get a breakdown of their weights.
 */
export function explainPlacement(hosts: readonly SchedulerHost[], request: ScheduleRequest): PlacementDecision {
  const prepared = prepare(hosts, request);
  const filters = FILTERS.filter((filter) => filter.applies(request));
  const weighers = WEIGHERS.filter((weigher) => weigher.applies(request));
  const refused: PlacementDecision['refused'] = [];
  // Best first; equal scores keep the hosts' order, as pickHost does.
  const best: Array<{ host: SchedulerHost; exact: number }> = [];
  for (const host of hosts) {
    const failed = filters.find((filter) => !filter.passes(host, prepared));
    if (failed) {
      refused.push({ host: host.name, filter: failed.name, reason: failed.reason(host, prepared) });
      continue;
    }
    const exact = scoreOf(host, weighers, prepared);
    if (best.length === RANKED_KEPT && exact <= best[RANKED_KEPT - 1].exact) continue;
    let at = best.length;
    while (at > 0 && best[at - 1].exact < exact) at--;
    best.splice(at, 0, { host, exact });
    if (best.length > RANKED_KEPT) best.pop();
  }
  const ranked = best.map(({ host, exact }) => ({
    host: host.name,
    score: round(exact),
    weights: Object.fromEntries(weighers.map((weigher) => [weigher.name, round(weigher.weight * weigher.score(host, prepared))])),
  }));
  const chosen = best[0]?.host;
  return { ...(chosen ? { host: chosen.name, hostId: chosen.id } : {}), refused, ranked };
}

function round(value: number): number {
  return Math.round(value * 1000) / 1000;
}
