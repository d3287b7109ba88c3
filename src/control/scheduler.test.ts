import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { explainPlacement, type GroupRule, pickHost, type SchedulerHost } from './scheduler.ts';

function host(name: string, change: Partial<SchedulerHost> = {}): SchedulerHost {
  return {
    id: `host-${name}`,
    name,
    status: 'online',
    labels: {},
    cpus: 2,
    memoryMb: 4608,
    allocatedCpus: 0,
    allocatedMemoryMb: 0,
    cpuOvercommit: 4,
    memoryOvercommit: 1,
    accelerator: 'tcg',
    underlayIp: '172.31.0.11',
    ...change,
  };
}

function group(change: Partial<GroupRule>): GroupRule {
  return { name: 'web', policy: 'anti-affinity', scope: 'host', strict: true, memberHostIds: new Set(), ...change };
}

describe('scheduler', () => {
  it('spreads to the least-loaded host, or packs onto the fullest that fits', () => {
    const hosts = [host('a', { allocatedMemoryMb: 2048, allocatedCpus: 2 }), host('b', { allocatedMemoryMb: 512, allocatedCpus: 1 })];
    assert.equal(pickHost(hosts, { cpus: 1, memoryMb: 256 })?.name, 'b');
    assert.equal(pickHost(hosts, { cpus: 1, memoryMb: 256, strategy: 'pack' })?.name, 'a');
  });

  it('counts each host’s own overcommit ratios and names them in a refusal', () => {
    const hosts = [host('a', { allocatedCpus: 8 }), host('b', { allocatedCpus: 8, cpuOvercommit: 5 })];
    assert.equal(pickHost(hosts, { cpus: 2, memoryMb: 256 })?.name, 'b');
    const decision = explainPlacement([host('a', { allocatedMemoryMb: 3900 })], { cpus: 1, memoryMb: 512 });
    assert.equal(decision.host, undefined);
    assert.match(decision.refused[0]!.reason, /a has 196 MiB free for VMs \(1x its 4608 MiB less 512 MiB reserved\), the VM needs 512 MiB/);
    const overcommitted = explainPlacement([host('a', { allocatedMemoryMb: 3900, memoryOvercommit: 1.5 })], { cpus: 1, memoryMb: 512 });
    assert.equal(overcommitted.host, 'a');
  });

  it('refuses hosts that are not online, pinned elsewhere, the source, or of another accelerator, each with its rule', () => {
    const hosts = [host('a', { status: 'maintenance' }), host('b'), host('c', { accelerator: 'kvm' }), host('d')];
    const decision = explainPlacement(hosts, { cpus: 1, memoryMb: 256, avoidHostIds: new Set(['host-d']), accelerator: 'tcg' });
    assert.equal(decision.host, 'b');
    assert.deepEqual(
      decision.refused.map((r) => [r.host, r.filter]),
      [
        ['a', 'state'],
        ['c', 'accelerator'],
        ['d', 'avoid'],
      ],
    );
    const pinned = explainPlacement(hosts, { cpus: 1, memoryMb: 256, onlyHost: { id: 'host-c', why: '--host c was asked for' } });
    assert.equal(pinned.host, 'c');
    assert.match(pinned.refused.find((r) => r.host === 'b')!.reason, /not the host the VM must run on \(--host c was asked for\)/);
  });

  it('places a VM pinned to host CPUs only on a host that has them all, naming the pin', () => {
    const hosts = [host('a', { cpus: 2 }), host('b', { cpus: 8 })];
    const decision = explainPlacement(hosts, { cpus: 1, memoryMb: 256, cpuPin: { list: '0-1,6', highest: 6 } });
    assert.equal(decision.host, 'b');
    assert.deepEqual(decision.refused, [{ host: 'a', filter: 'cpu-pin', reason: 'a has CPUs 0-1, the VM is pinned to 0-1,6' }]);
    assert.equal(pickHost([host('a', { cpus: 2 })], { cpus: 1, memoryMb: 256, cpuPin: { list: '2', highest: 2 } }), undefined);
    assert.equal(pickHost([host('a', { cpus: 2 })], { cpus: 1, memoryMb: 256, cpuPin: { list: '1', highest: 1 } })?.name, 'a');
  });

  it('keeps a project on hosts with its required labels, naming the rule', () => {
    const hosts = [host('a', { labels: { region: 'us' } }), host('b'), host('c', { labels: { region: 'eu' } })];
    const requiredLabels = [{ key: 'region', value: 'eu', rule: "project web's residency rule" }];
    const decision = explainPlacement(hosts, { cpus: 1, memoryMb: 256, requiredLabels });
    assert.equal(decision.host, 'c');
    assert.equal(decision.refused[0]!.reason, "a has region=us; project web's residency rule requires region=eu");
    assert.equal(decision.refused[1]!.reason, "b has no region label; project web's residency rule requires region=eu");
  });

  it('strict anti-affinity keeps members on separate hosts and refuses when none is left', () => {
    const hosts = [host('a'), host('b'), host('c')];
    const rule = group({ memberHostIds: new Set(['host-a', 'host-b']) });
    assert.equal(pickHost(hosts, { cpus: 1, memoryMb: 256, group: rule })?.name, 'c');
    const full = explainPlacement(hosts, { cpus: 1, memoryMb: 256, group: group({ memberHostIds: new Set(['host-a', 'host-b', 'host-c']) }) });
    assert.equal(full.host, undefined);
    assert.match(full.refused[0]!.reason, /a's host already runs a member of strict anti-affinity group web/);
  });

  it('zone scope spreads across zones; hosts without a zone are refused', () => {
    const hosts = [host('a', { labels: { zone: 'z1' } }), host('b', { labels: { zone: 'z1' } }), host('c', { labels: { zone: 'z2' } }), host('d')];
    const decision = explainPlacement(hosts, { cpus: 1, memoryMb: 256, group: group({ scope: 'zone', memberHostIds: new Set(['host-a']) }) });
    assert.equal(decision.host, 'c');
    assert.deepEqual(
      decision.refused.map((r) => [r.host, r.filter]),
      [
        ['a', 'group'],
        ['b', 'group'],
        ['d', 'zone'],
      ],
    );
  });

  it('strict affinity keeps members together; soft groups only prefer', () => {
    const hosts = [host('a', { allocatedMemoryMb: 2000 }), host('b')];
    assert.equal(pickHost(hosts, { cpus: 1, memoryMb: 256, group: group({ policy: 'affinity', memberHostIds: new Set(['host-a']) }) })?.name, 'a');
    // Soft anti-affinity: b runs a member, a is fuller, a still wins.
    const soft = group({ strict: false, memberHostIds: new Set(['host-b']) });
    assert.equal(pickHost(hosts, { cpus: 1, memoryMb: 256, group: soft })?.name, 'a');
    // ... but when only b fits, b takes it.
    assert.equal(pickHost([host('a', { allocatedMemoryMb: 4000 }), host('b')], { cpus: 1, memoryMb: 256, group: soft })?.name, 'b');
  });

  it('explains the same choice pickHost makes, with every weight', () => {
    const hosts = Array.from({ length: 20 }, (_, i) => host(`h${i}`, { allocatedMemoryMb: (i * 733) % 4000, allocatedCpus: i % 7 }));
    const request = { cpus: 1, memoryMb: 256 };
    const decision = explainPlacement(hosts, request);
    assert.equal(decision.host, pickHost(hosts, request)?.name);
    assert.equal(decision.ranked.length, 10);
    assert.deepEqual(Object.keys(decision.ranked[0]!.weights), ['memory', 'cpu']);
  });

  it('ranks a thousand hosts as a full stable sort would: the best ten, ties in host order, every refusal', () => {
    // Few distinct loads: many ties. Some hosts full or in maintenance: refusals among them.
    const hosts = Array.from({ length: 1000 }, (_, i) =>
      host(`h${String(i).padStart(4, '0')}`, {
        allocatedMemoryMb: [0, 1024, 2048, 4096][(i * 7) % 4],
        allocatedCpus: (i * 3) % 4,
        ...(i % 97 === 0 ? { status: 'maintenance' } : {}),
      }),
    );
    for (const request of [
      { cpus: 1, memoryMb: 256 },
      { cpus: 1, memoryMb: 256, strategy: 'pack' as const },
      { cpus: 2, memoryMb: 1024, group: group({ strict: false, memberHostIds: new Set(['host-h0004', 'host-h0008']) }) },
    ]) {
      const decision = explainPlacement(hosts, request);
      // The reference: each host alone (its refusal or its score), then a stable sort of all.
      const alone = hosts.map((h) => ({ name: h.name, decision: explainPlacement([h], request) }));
      const scored = alone.filter((a) => a.decision.host).map((a) => ({ name: a.name, score: a.decision.ranked[0]!.score }));
      scored.sort((a, b) => b.score - a.score);
      assert.deepEqual(
        decision.ranked.map((r) => [r.host, r.score]),
        scored.slice(0, 10).map((s) => [s.name, s.score]),
      );
      assert.deepEqual(
        decision.refused,
        alone.flatMap((a) => a.decision.refused),
      );
      assert.equal(decision.host, pickHost(hosts, request)?.name);
    }
  });
});
