import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ASSUMED_LINK_BYTES_PER_SEC, predictMigrationCost } from '../migration/migration-cost.ts';
import { type BalanceInput, type BalanceVm, hostLoad, imbalanceOf, type MoveCost, planBalance, thresholdLevel } from './balance-plan.ts';
import type { GroupRule, SchedulerHost } from './scheduler.ts';

/** A host of 8 GiB (7.5 GiB for VMs) and 4 cores (16 vCPUs at the default overcommit). */
function host(name: string, change: Partial<SchedulerHost> = {}): SchedulerHost {
  return {
    id: `host-${name}`,
    name,
    status: 'online',
    labels: {},
    cpus: 4,
    memoryMb: 8192,
    allocatedCpus: 0,
    allocatedMemoryMb: 0,
    cpuOvercommit: 4,
    memoryOvercommit: 1,
    accelerator: 'tcg',
    underlayIp: '172.31.0.11',
    ...change,
  };
}

function vm(name: string, hostName: string, change: Partial<BalanceVm> = {}): BalanceVm {
  const memoryMb = change.memoryMb ?? 1024;
  const cpus = change.cpus ?? 1;
  return {
    id: `vm-${name}`,
    name,
    hostId: `host-${hostName}`,
    cpus,
    memoryMb,
    request: { cpus, memoryMb, accelerator: 'tcg', needsUnderlay: true },
    ...change,
  };
}

/** The hosts with what the VMs allocate on them. */
function allocate(hosts: SchedulerHost[], vms: BalanceVm[]): SchedulerHost[] {
  return hosts.map((h) => {
    const mine = vms.filter((v) => v.hostId === h.id);
    return { ...h, allocatedCpus: mine.reduce((s, v) => s + v.cpus, 0), allocatedMemoryMb: mine.reduce((s, v) => s + v.memoryMb, 0) };
  });
}

/** The model's cost over an assumed gigabit, with each VM's dirty rate (8 MiB/s unless `dirty` says). */
function modelCost(dirty: Record<string, number> = {}, diskBytes: Record<string, number> = {}) {
  return (v: BalanceVm): MoveCost =>
    predictMigrationCost({
      memoryMb: v.memoryMb,
      dirtyRateBytesPerSec: dirty[v.name] ?? 8 * 2 ** 20,
      linkBytesPerSec: ASSUMED_LINK_BYTES_PER_SEC,
      diskBytes: diskBytes[v.name] ?? 0,
      downtimeLimitMs: 20,
      maxDowntimeLimitMs: 300,
    });
}

function input(hosts: SchedulerHost[], vms: BalanceVm[], change: Partial<BalanceInput<MoveCost>> = {}): BalanceInput<MoveCost> {
  return {
    hosts: allocate(hosts, vms),
    vms,
    threshold: thresholdLevel(3),
    maxMoves: 8,
    cooldownMs: 3_600_000,
    nowMs: Date.parse('2025-06-01T12:00:00Z'),
    maxMoveTimeMs: 300_000,
    cost: modelCost(),
    ...change,
  };
}

/** Where each VM ends up after the plan's moves. */
function finalHosts(vms: BalanceVm[], moves: Array<{ vmId: string; toId: string }>): Map<string, string> {
  const at = new Map(vms.map((v) => [v.id, v.hostId]));
  for (const move of moves) at.set(move.vmId, move.toId);
  return at;
}

const crowded = (count: number, on = 'a', change: Partial<BalanceVm> = {}): BalanceVm[] => Array.from({ length: count }, (_, i) => vm(`v${i + 1}`, on, change));

describe('balance plan', () => {
  it('measures a host by its larger share of memory or vCPUs (overcommit included), and the cluster by their spread over online hosts', () => {
    const memoryBound = host('a', { allocatedMemoryMb: 3840, allocatedCpus: 2 });
    assert.deepEqual(hostLoad(memoryBound), { load: 0.5, memory: 0.5, cpu: 0.125 });
    const cpuBound = host('b', { allocatedMemoryMb: 768, allocatedCpus: 12, cpuOvercommit: 2 });
    assert.deepEqual(hostLoad(cpuBound), { load: 1.5, memory: 0.1, cpu: 1.5 });
    assert.equal(imbalanceOf([memoryBound, host('c')]), 0.25);
    assert.equal(imbalanceOf([memoryBound, host('c'), host('d', { status: 'maintenance', allocatedMemoryMb: 7680 })]), 0.25, 'hosts not online do not count');
  });

  it('evens out a crowded host in a bounded number of moves, each lowering the imbalance, best benefit per byte first', () => {
    const vms = crowded(6);
    const plan = planBalance(input([host('a'), host('b'), host('c')], vms));
    assert.equal(plan.outcome, 'balanced');
    assert.equal(plan.moves.length, 4);
    assert.ok(plan.imbalanceBefore > 0.37 && plan.imbalanceAfter < 1e-9, `${plan.imbalanceBefore} -> ${plan.imbalanceAfter}`);
    let previous = plan.imbalanceBefore;
    for (const move of plan.moves) {
      assert.equal(move.from, 'a');
      assert.ok(move.benefit > 0 && Math.abs(previous - move.benefit - move.imbalanceAfter) < 1e-9);
      assert.ok(move.cost.converges && move.cost.bytes! >= 2 ** 30 && move.cost.timeMs! > 8000, JSON.stringify(move.cost));
      previous = move.imbalanceAfter;
    }
    const counts = [...finalHosts(vms, plan.moves).values()].reduce((c, h) => c.set(h, (c.get(h) ?? 0) + 1), new Map<string, number>());
    assert.deepEqual([...counts.values()].sort(), [2, 2, 2]);
    assert.deepEqual(
      plan.hosts.map((h) => h.after.load.toFixed(3)),
      ['0.267', '0.267', '0.267'],
    );
    const limited = planBalance(input([host('a'), host('b'), host('c')], vms, { maxMoves: 2 }));
    assert.deepEqual([limited.outcome, limited.moves.length], ['max-moves', 2]);
  });

  it('prefers the move that buys most balance per byte: of two equal benefits, the small VM', () => {
    // Moving either leaves a gap of 0.4 between the hosts; the small one sends a quarter of the bytes.
    const vms = [vm('big', 'a', { memoryMb: 4096 }), vm('small', 'a', { memoryMb: 1024 })];
    const plan = planBalance(input([host('a'), host('b')], vms, { maxMoves: 1 }));
    assert.equal(plan.moves[0]?.vm, 'small');
  });

  it('does nothing below the threshold, and acts on the same cluster at a more eager level', () => {
    const vms = [vm('v1', 'a', { memoryMb: 768 }), vm('v2', 'a', { memoryMb: 768 }), vm('v3', 'b', { memoryMb: 512 })];
    const hosts = [host('a'), host('b'), host('c')];
    const careful = planBalance(input(hosts, vms, { threshold: thresholdLevel(1) }));
    assert.deepEqual([careful.outcome, careful.moves.length], ['below-threshold', 0]);
    const eager = planBalance(input(hosts, vms, { threshold: thresholdLevel(5) }));
    assert.deepEqual([eager.outcome, eager.moves.map((m) => `${m.vm}:${m.from}>${m.to}`)], ['balanced', ['v1:a>c']]);
  });

  it('makes no move whose predicted cost exceeds what its benefit is worth, and says why', () => {
    const hosts = [host('a'), host('b'), host('c')];
    // Dirtying memory faster than the link carries it: pre-copy never converges.
    const hot = planBalance(input(hosts, crowded(4), { cost: modelCost({ v1: 300e6, v2: 300e6, v3: 300e6, v4: 300e6 }) }));
    assert.deepEqual([hot.outcome, hot.moves.length], ['no-move-pays', 0]);
    assert.match(hot.held[0]!.reason, /pre-copy is not predicted to converge \(dirty rate \/ link = 2\.4/);
    // 20 GiB of local disk to mirror for a 1 GiB VM: more bytes than the benefit is worth.
    const disks = Object.fromEntries(['v1', 'v2', 'v3', 'v4'].map((name) => [name, 20 * 2 ** 30]));
    const heavy = planBalance(input(hosts, crowded(4), { cost: modelCost({}, disks) }));
    assert.equal(heavy.moves.length, 0);
    assert.match(heavy.held[0]!.reason, /predicted to send 21\.\d\d GiB for a benefit of 0\.\d+, over the \d+\.\d\d GiB that benefit is worth/);
    // A slow link: the move would outlast the migration's timeout.
    const slow = planBalance(input(hosts, crowded(4), { maxMoveTimeMs: 5_000 }));
    assert.equal(slow.moves.length, 0);
    assert.match(slow.held[0]!.reason, /predicted to take 9 s, over the 5 s a move may take/);
    // Only the cheap VM among expensive ones moves.
    const mixed = planBalance(input(hosts, crowded(4), { cost: modelCost({ v1: 300e6, v2: 300e6, v3: 300e6 }), maxMoves: 8 }));
    assert.deepEqual(
      mixed.moves.map((m) => m.vm),
      ['v4'],
    );
  });

  it('leaves a VM that moved within the cooldown where it is, and moves the others', () => {
    const now = Date.parse('2025-06-01T12:00:00Z');
    const vms = crowded(4);
    vms[0] = { ...vms[0]!, lastMovedAtMs: now - 10 * 60_000 };
    vms[1] = { ...vms[1]!, lastMovedAtMs: now - 2 * 3_600_000 };
    const plan = planBalance(input([host('a'), host('b'), host('c')], vms, { nowMs: now }));
    assert.ok(plan.moves.length >= 2);
    assert.ok(!plan.moves.some((m) => m.vm === 'v1'));
    assert.ok(
      plan.moves.some((m) => m.vm === 'v2'),
      'its cooldown is over',
    );
    assert.deepEqual(
      plan.held.find((h) => h.vm === 'v1'),
      { vm: 'v1', host: 'a', reason: 'moved 10 min ago; it stays for the cooldown of 60 min' },
    );
  });

  it('moves only candidates: never a VM that is blocked or not running, and says why for the blocked', () => {
    const vms = [
      vm('busy', 'a', { blocked: 'busy with stop (operation op-1)' }),
      vm('user', 'a', { blocked: 'it uses user-mode networking' }),
      { ...vm('stopped', 'a'), request: undefined },
      vm('free', 'a'),
    ];
    const plan = planBalance(input([host('a'), host('b')], vms, { threshold: thresholdLevel(5) }));
    assert.deepEqual(
      plan.moves.map((m) => m.vm),
      ['free'],
    );
    assert.deepEqual(
      plan.held.map((h) => [h.vm, h.reason]),
      [
        ['busy', 'busy with stop (operation op-1)'],
        ['user', 'it uses user-mode networking'],
      ],
    );
  });

  it("never proposes a residency-labelled project's VM to a host without the label", () => {
    const eu = { key: 'region', value: 'eu', rule: "project web's residency rule" };
    const hosts = [host('a', { labels: { region: 'eu' } }), host('b', { labels: { region: 'us' } }), host('c', { labels: { region: 'eu' } })];
    const vms = crowded(6).map((v, i) => (i < 4 ? { ...v, request: { ...v.request!, requiredLabels: [eu] } } : v));
    const plan = planBalance(input(hosts, vms, { threshold: thresholdLevel(5) }));
    assert.ok(plan.moves.length >= 2);
    for (const move of plan.moves) if (['v1', 'v2', 'v3', 'v4'].includes(move.vm)) assert.equal(move.to, 'c', `${move.vm} stays in region eu`);
    assert.ok(
      plan.moves.some((m) => m.to === 'b'),
      'the unlabelled VMs may go to b',
    );
    // Only the residency-bound VMs, and only us hosts elsewhere: they stay, and the refusal names the rule.
    const bound = planBalance(input([hosts[0]!, hosts[1]!], vms.slice(0, 4), { threshold: thresholdLevel(5) }));
    assert.equal(bound.moves.length, 0);
    assert.match(bound.held[0]!.reason, /no other host takes it: b has region=us; project web's residency rule requires region=eu/);
  });

  it('never puts members of a strict anti-affinity group together, and holds a soft group as strict', () => {
    for (const strict of [true, false]) {
      const rule: GroupRule = { name: 'web', policy: 'anti-affinity', scope: 'host', strict, memberHostIds: new Set() };
      const member = (name: string, on: string): BalanceVm => {
        const v = vm(name, on);
        return { ...v, groupId: 'pg-web', request: { ...v.request!, group: rule } };
      };
      // a is crowded with two members among others; b runs the third member and is empty otherwise.
      const vms = [member('w1', 'a'), ...crowded(5), member('w2', 'b'), member('w3', 'c'), vm('x', 'c', { memoryMb: 3072 })];
      const plan = planBalance(input([host('a'), host('b'), host('c'), host('d')], vms, { threshold: thresholdLevel(5) }));
      assert.ok(plan.moves.length >= 2, JSON.stringify(plan));
      const at = finalHosts(vms, plan.moves);
      const memberHosts = ['vm-w1', 'vm-w2', 'vm-w3'].map((id) => at.get(id));
      assert.equal(new Set(memberHosts).size, 3, `members apart (${strict ? 'strict' : 'soft'}): ${memberHosts.join(', ')}`);
    }
  });

  it('moves a VM with local disks only to hosts its pool reaches', () => {
    const vms = crowded(4).map((v) => ({ ...v, reachableHostIds: new Set(['host-a', 'host-c']) }));
    const plan = planBalance(input([host('a'), host('b'), host('c')], vms, { threshold: thresholdLevel(5) }));
    assert.ok(plan.moves.length >= 1);
    for (const move of plan.moves) assert.equal(move.to, 'c');
  });

  it('keeps every move within capacity, and leaves hosts that are not online out', () => {
    const hosts = [host('a'), host('b', { memoryMb: 2048 }), host('c', { status: 'maintenance' })];
    const plan = planBalance(input(hosts, crowded(6), { threshold: thresholdLevel(5) }));
    assert.ok(plan.moves.every((m) => m.to === 'b'));
    assert.ok(plan.moves.length <= 1, 'b has 1536 MiB for VMs: one 1 GiB VM fits');
    assert.equal(plan.hosts.length, 2);
  });
});
