/**
 * The balancer's core: how uneven the hosts are, and which live migrations would even them out
 * for what they cost. Pure and synchronous, like the scheduler it asks (scheduler.ts): the
 * balancing service (migration/cluster-balancer.ts) loads the hosts, VMs and costs, calls
 * `planBalance`, and carries the moves out.
 *
 * The metric (README, "Balancing"):
 * - host load L(h) = max(allocated memory / memory capacity, allocated vCPUs / vCPU capacity),
 *   with the scheduler's `memoryCapacityMb` and `cpuCapacity` (reserve and overcommit ratios
 *   included). It is what placement allocates, not what guests use; a measured CPU figure may
 *   replace the vCPU term later.
 * - imbalance s = the (population) standard deviation of L over the online hosts, as vSphere DRS.
 * - a move's benefit b = s before - s after, the move simulated on the hosts' allocations.
 * - its cost: the migration model's predicted time and bytes (migration/migration-cost.ts).
 *
 * The decision, for threshold t (THRESHOLDS) over n online hosts, M the mean memory capacity:
 * a run acts only when s > act(t), and stops once s <= target(t) or after `maxMoves`. At each
 * step it takes, among the running VMs of the (up to three) most loaded hosts above the mean,
 * to every host the scheduler accepts for them, the move with the best b / bytes that pays:
 *   b >= minBenefit(t) * 3/n                       (one move changes 2 of n loads: s moves as 1/n)
 *   pre-copy converges, time <= the move's timeout
 *   bytes <= costFactor(t) * b * (n/3) * M         (bytes per unit of benefit under a bound)
 * A VM moves at most once per run, never within the cooldown of its last move, and only where
 * every placement rule holds: the scheduler's filters on the simulated hosts (state, capacity,
 * residency labels, accelerator, underlay, placement groups, with soft groups held as strict:
 * balancing never trades a group's preference for load), and hosts its migration can reach (a
 * QEMU that loads its stream, a folder of its local disks' pool).
 */
import { type ScheduleRequest, type SchedulerHost, cpuCapacity, explainPlacement, memoryCapacityMb } from './scheduler.ts';

/** What a threshold level asks of the imbalance and of each move. 1 is the most careful, 5 the most eager. */
export interface ThresholdLevel {
  level: number;
  /** A run acts only when the imbalance is above this. */
  actAbove: number;
  /** A run stops once the imbalance is at or below this (half of `actAbove`: hysteresis). */
  target: number;
  /** The least benefit a move must bring, on three hosts (scaled by 3/n on n hosts). */
  minBenefit: number;
  /** Bytes a move may send per unit of (3/n-scaled) benefit, in mean host memory capacities. */
  costFactor: number;
}

/** The threshold levels, as vSphere DRS's migration threshold (1 conservative .. 5 aggressive); 3 is the default. */
export const THRESHOLDS: readonly ThresholdLevel[] = [
  { level: 1, actAbove: 0.3, target: 0.15, minBenefit: 0.05, costFactor: 1.5 },
  { level: 2, actAbove: 0.2, target: 0.1, minBenefit: 0.03, costFactor: 2 },
  { level: 3, actAbove: 0.15, target: 0.075, minBenefit: 0.02, costFactor: 3 },
  { level: 4, actAbove: 0.1, target: 0.05, minBenefit: 0.01, costFactor: 4 },
  { level: 5, actAbove: 0.05, target: 0.025, minBenefit: 0.005, costFactor: 6 },
];
export const DEFAULT_THRESHOLD = 3;
/** How many of the most loaded hosts a step takes VMs from. */
export const SOURCE_HOSTS_PER_STEP = 3;

export function thresholdLevel(level: number): ThresholdLevel {
  return THRESHOLDS.find((t) => t.level === level) ?? THRESHOLDS[DEFAULT_THRESHOLD - 1];
}

/** A host's load and the two shares it is the larger of. */
export interface HostLoad {
  load: number;
  memory: number;
  cpu: number;
}

function share(allocated: number, capacity: number): number {
  // A host with no capacity left for VMs (all memory reserved) is full once it holds anything.
  return capacity > 0 ? allocated / capacity : allocated > 0 ? 1 : 0;
}

export function hostLoad(host: SchedulerHost): HostLoad {
  const memory = share(host.allocatedMemoryMb, memoryCapacityMb(host));
  const cpu = share(host.allocatedCpus, cpuCapacity(host));
  return { load: Math.max(memory, cpu), memory, cpu };
}

/** The standard deviation of `loads` (0 for fewer than two). */
export function standardDeviation(loads: readonly number[]): number {
  if (loads.length < 2) return 0;
  const mean = loads.reduce((sum, load) => sum + load, 0) / loads.length;
  return Math.sqrt(loads.reduce((sum, load) => sum + (load - mean) ** 2, 0) / loads.length);
}

/** The imbalance of the cluster: the standard deviation of the online hosts' loads. */
export function imbalanceOf(hosts: readonly SchedulerHost[]): number {
  return standardDeviation(hosts.filter((host) => host.status === 'online').map((host) => hostLoad(host).load));
}

/** A VM as the balancer sees it. Every VM is given (its place counts for its group's rules); only some may move. */
export interface BalanceVm {
  id: string;
  name: string;
  hostId: string;
  cpus: number;
  memoryMb: number;
  groupId?: string | null;
  /** The scheduler's question for moving it (its group's members are recomputed as moves are
   * simulated). Absent for a VM that is no candidate at all (not running, or its host not online). */
  request?: ScheduleRequest;
  /** Why this running VM may not move (busy, user-mode network, a local disk outside a pool). */
  blocked?: string;
  /** Beyond the scheduler's rules, the hosts a migration can take it to: those whose QEMU loads
   * its stream and that all of its local (dir-pool) disks can be mirrored to; absent: any host. */
  reachableHostIds?: ReadonlySet<string>;
  /** When it last moved (epoch ms): migrate, evacuate, restore, balance or HA restart. */
  lastMovedAtMs?: number;
}

/** What the gate needs of a cost; the service's costs carry more, kept in the plan as they are. */
export interface MoveCost {
  converges: boolean;
  timeMs?: number;
  bytes?: number;
  lambda?: number;
}

export interface BalanceInput<C extends MoveCost> {
  hosts: readonly SchedulerHost[];
  vms: readonly BalanceVm[];
  threshold: ThresholdLevel;
  maxMoves: number;
  cooldownMs: number;
  nowMs: number;
  /** The longest a move may be predicted to take (the migration's completion timeout). */
  maxMoveTimeMs: number;
  /** The predicted cost of moving `vm` from `from` to `to`. */
  cost(vm: BalanceVm, from: SchedulerHost, to: SchedulerHost): C;
}

export interface PlannedMove<C extends MoveCost> {
  vmId: string;
  vm: string;
  from: string;
  to: string;
  toId: string;
  benefit: number;
  imbalanceAfter: number;
  cost: C;
}

/** Why a run stopped: under the act threshold at the start, at target, no move paid, or the move limit. */
export type BalanceOutcome = 'below-threshold' | 'balanced' | 'no-move-pays' | 'max-moves' | 'too-few-hosts';

export interface BalancePlan<C extends MoveCost> {
  imbalanceBefore: number;
  imbalanceAfter: number;
  threshold: ThresholdLevel;
  outcome: BalanceOutcome;
  moves: Array<PlannedMove<C>>;
  /** VMs of the most loaded hosts that were considered and stay, with why. */
  held: Array<{ vm: string; host: string; reason: string }>;
  /** Every online host's load before and after the planned moves. */
  hosts: Array<{ host: string; before: HostLoad; after: HostLoad }>;
}

/** Plans the moves that bring the imbalance under the threshold's target, best benefit per byte first. */
export function planBalance<C extends MoveCost>(input: BalanceInput<C>): BalancePlan<C> {
  const state = new Simulation(input);
  const before = state.imbalance();
  const loadsBefore = state.online.map((host) => ({ host: host.name, before: hostLoad(host) }));
  const moves: Array<PlannedMove<C>> = [];
  let outcome: BalanceOutcome;
  if (state.online.length < 2) outcome = 'too-few-hosts';
  else if (before <= input.threshold.actAbove) outcome = 'below-threshold';
  else {
    for (;;) {
      if (state.imbalance() <= input.threshold.target) {
        outcome = 'balanced';
        break;
      }
      if (moves.length >= input.maxMoves) {
        outcome = 'max-moves';
        break;
      }
      const move = state.bestMove();
      if (!move) {
        outcome = 'no-move-pays';
        break;
      }
      state.apply(move);
      moves.push(move);
    }
  }
  return {
    imbalanceBefore: before,
    imbalanceAfter: state.imbalance(),
    threshold: input.threshold,
    outcome,
    moves,
    held: [...state.held.values()].filter((held) => !state.moved.has(held.vmId)).map(({ vmId: _, ...rest }) => rest),
    hosts: loadsBefore.map((entry, index) => ({ ...entry, after: hostLoad(state.online[index]) })),
  };
}

/** The hosts and VM positions as moves are simulated on them. */
class Simulation<C extends MoveCost> {
  readonly input: BalanceInput<C>;
  /** Copies of the hosts, their allocations changed by the simulated moves. */
  readonly hosts: SchedulerHost[];
  readonly online: SchedulerHost[];
  readonly #byId: Map<string, SchedulerHost>;
  readonly #position = new Map<string, string>();
  readonly moved = new Set<string>();
  readonly held = new Map<string, { vmId: string; vm: string; host: string; reason: string }>();
  readonly #costs = new Map<string, C>();
  readonly #meanMemoryBytes: number;

  constructor(input: BalanceInput<C>) {
    this.input = input;
    this.hosts = input.hosts.map((host) => ({ ...host }));
    this.online = this.hosts.filter((host) => host.status === 'online');
    this.#byId = new Map(this.hosts.map((host) => [host.id, host]));
    for (const vm of input.vms) this.#position.set(vm.id, vm.hostId);
    this.#meanMemoryBytes = (this.online.reduce((sum, host) => sum + memoryCapacityMb(host), 0) / Math.max(1, this.online.length)) * 2 ** 20;
  }

  imbalance(): number {
    return standardDeviation(this.online.map((host) => hostLoad(host).load));
  }

  apply(move: PlannedMove<C>): void {
    const vm = this.input.vms.find((v) => v.id === move.vmId)!;
    this.#shift(this.#byId.get(this.#position.get(vm.id)!)!, this.#byId.get(move.toId)!, vm, 1);
    this.#position.set(vm.id, move.toId);
    this.moved.add(vm.id);
  }

  #shift(from: SchedulerHost, to: SchedulerHost, vm: BalanceVm, sign: 1 | -1): void {
    from.allocatedCpus -= sign * vm.cpus;
    from.allocatedMemoryMb -= sign * vm.memoryMb;
    to.allocatedCpus += sign * vm.cpus;
    to.allocatedMemoryMb += sign * vm.memoryMb;
  }

  /** The sum and the sum of squares of the online hosts' loads, from which a move's imbalance follows in O(1). */
  #sums(): { sum: number; squares: number } {
    let sum = 0;
    let squares = 0;
    for (const host of this.online) {
      const load = hostLoad(host).load;
      sum += load;
      squares += load * load;
    }
    return { sum, squares };
  }

  /** The imbalance if `vm` moved from `from` to `to`: only their two loads change. */
  #imbalanceWith(vm: BalanceVm, from: SchedulerHost, to: SchedulerHost, sums: { sum: number; squares: number }): number {
    const [fromBefore, toBefore] = [hostLoad(from).load, hostLoad(to).load];
    this.#shift(from, to, vm, 1);
    const [fromAfter, toAfter] = [hostLoad(from).load, hostLoad(to).load];
    this.#shift(from, to, vm, -1);
    const sum = sums.sum - fromBefore - toBefore + fromAfter + toAfter;
    const squares = sums.squares - fromBefore ** 2 - toBefore ** 2 + fromAfter ** 2 + toAfter ** 2;
    return deviationOf({ sum, squares }, this.online.length);
  }

  /** The most loaded online hosts above the mean, most loaded first. */
  #sources(): SchedulerHost[] {
    const loads = new Map(this.online.map((host) => [host.id, hostLoad(host).load]));
    const mean = [...loads.values()].reduce((sum, load) => sum + load, 0) / Math.max(1, loads.size);
    return this.online
      .filter((host) => loads.get(host.id)! > mean)
      .sort((a, b) => loads.get(b.id)! - loads.get(a.id)!)
      .slice(0, SOURCE_HOSTS_PER_STEP);
  }

  #hold(vm: BalanceVm, host: SchedulerHost, reason: string): void {
    this.held.set(vm.id, { vmId: vm.id, vm: vm.name, host: host.name, reason });
  }

  /** The move of the best benefit per byte that pays, from the most loaded hosts; undefined when none does. */
  bestMove(): PlannedMove<C> | undefined {
    const sums = this.#sums();
    const before = deviationOf(sums, this.online.length);
    let best: { move: PlannedMove<C>; score: number } | undefined;
    for (const source of this.#sources()) {
      for (const vm of this.input.vms) {
        if (this.#position.get(vm.id) !== source.id || !vm.request || this.moved.has(vm.id)) continue;
        const candidate = this.#bestMoveOf(vm, source, before, sums);
        if (!candidate) continue;
        const score = candidate.benefit / Math.max(1, candidate.cost.bytes ?? 0);
        if (!best || score > best.score || (score === best.score && candidate.benefit > best.move.benefit)) best = { move: candidate, score };
      }
    }
    return best?.move;
  }

  /** The best paying move of one VM, or undefined (and why it stays, in `held`). */
  #bestMoveOf(vm: BalanceVm, source: SchedulerHost, before: number, sums: { sum: number; squares: number }): PlannedMove<C> | undefined {
    const { input } = this;
    if (vm.blocked) return void this.#hold(vm, source, vm.blocked);
    if (vm.lastMovedAtMs !== undefined && input.nowMs - vm.lastMovedAtMs < input.cooldownMs) {
      const minutes = Math.round((input.nowMs - vm.lastMovedAtMs) / 60_000);
      return void this.#hold(vm, source, `moved ${minutes} min ago; it stays for the cooldown of ${Math.round(input.cooldownMs / 60_000)} min`);
    }
    const destinations = this.#accepted(vm, source);
    if (typeof destinations === 'string') return void this.#hold(vm, source, destinations);
    let best: { move: PlannedMove<C>; score: number } | undefined;
    let refusal: { benefit: number; reason: string } | undefined;
    for (const destination of destinations) {
      const after = this.#imbalanceWith(vm, source, destination, sums);
      const benefit = before - after;
      // Below a rounding error, a move changes nothing.
      if (!(benefit > 1e-9)) continue;
      const key = `${vm.id}>${destination.id}`;
      const cost = this.#costs.get(key) ?? input.cost(vm, source, destination);
      this.#costs.set(key, cost);
      const refused = this.#refusal(benefit, cost);
      if (refused) {
        if (!refusal || benefit > refusal.benefit) refusal = { benefit, reason: `to ${destination.name}: ${refused}` };
        continue;
      }
      const score = benefit / Math.max(1, cost.bytes ?? 0);
      const move = { vmId: vm.id, vm: vm.name, from: source.name, to: destination.name, toId: destination.id, benefit, imbalanceAfter: after, cost };
      if (!best || score > best.score) best = { move, score };
    }
    if (!best) this.#hold(vm, source, refusal?.reason ?? 'no host it may move to lowers the imbalance');
    return best?.move;
  }

  /** The hosts the scheduler accepts for `vm` now (every filter, on the simulated hosts), or why none does. */
  #accepted(vm: BalanceVm, source: SchedulerHost): SchedulerHost[] | string {
    const request = this.#question(vm, source);
    const decision = explainPlacement(this.hosts, request);
    const refused = new Set(decision.refused.map((r) => r.host));
    const accepted = this.online.filter((host) => !refused.has(host.name) && (vm.reachableHostIds?.has(host.id) ?? true));
    if (accepted.length > 0) return accepted;
    const reasons = decision.refused.filter((r) => r.filter !== 'avoid').map((r) => r.reason);
    if (reasons.length === 0) return 'the hosts that would take it run an older QEMU or have no folder of the pool of its local disks';
    return `no other host takes it: ${reasons.slice(0, 3).join('; ')}${reasons.length > 3 ? `; and ${reasons.length - 3} more` : ''}`;
  }

  /** The scheduler's question for moving `vm` off `source`, its group's members where the simulation has them. */
  #question(vm: BalanceVm, source: SchedulerHost): ScheduleRequest {
    const request = vm.request!;
    const group = request.group && vm.groupId ? request.group : undefined;
    const members = new Set<string>();
    if (group) for (const other of this.input.vms) if (other.groupId === vm.groupId && other.id !== vm.id) members.add(this.#position.get(other.id)!);
    return {
      ...request,
      avoidHostIds: new Set([source.id]),
      ...(group ? { group: { ...group, strict: true, memberHostIds: members } } : {}),
    };
  }

  /** Why a move of this benefit and cost does not pay, or undefined when it does (the decision rule above). */
  #refusal(benefit: number, cost: MoveCost): string | undefined {
    const { threshold, maxMoveTimeMs } = this.input;
    const n = this.online.length;
    const minBenefit = (threshold.minBenefit * 3) / n;
    if (benefit < minBenefit) return `a benefit of ${benefit.toFixed(3)} is under the minimum of ${minBenefit.toFixed(3)} (threshold ${threshold.level})`;
    if (!cost.converges || cost.timeMs === undefined || cost.bytes === undefined)
      return `pre-copy is not predicted to converge (dirty rate / link = ${cost.lambda ?? '?'})`;
    if (cost.timeMs > maxMoveTimeMs)
      return `predicted to take ${Math.round(cost.timeMs / 1000)} s, over the ${Math.round(maxMoveTimeMs / 1000)} s a move may take`;
    const maxBytes = threshold.costFactor * benefit * (n / 3) * this.#meanMemoryBytes;
    if (cost.bytes > maxBytes)
      return `predicted to send ${gib(cost.bytes)} for a benefit of ${benefit.toFixed(3)}, over the ${gib(maxBytes)} that benefit is worth (threshold ${threshold.level})`;
    return undefined;
  }
}

/** The standard deviation of n values from their sum and sum of squares. */
function deviationOf(sums: { sum: number; squares: number }, n: number): number {
  return n < 2 ? 0 : Math.sqrt(Math.max(0, sums.squares / n - (sums.sum / n) ** 2));
}

function gib(bytes: number): string {
  return `${(bytes / 2 ** 30).toFixed(2)} GiB`;
}
