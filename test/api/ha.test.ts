/**
 * The HA manager's decisions over a fake three-host cluster (real services and database, fake
 * agents, its rounds driven by hand): a silent host with HA VMs is fenced after the fence delay
 * and not before, its HA VMs restart elsewhere highest priority first under the placement rules,
 * VMs that cannot restart are reported, a host without HA VMs is only shown offline, and a fenced
 * host that comes back is told what to kill before it is let back in. The real thing (watchdogs,
 * links, storage fencing, QEMU) is test/cluster/high-availability.test.ts.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { FENCE_AFTER_MS } from '../../src/agent-api/heartbeat.ts';
import { notRestartable, type VmSpec } from '../../src/compute/vm-spec.ts';
import { type FakeCluster, fakeCluster } from '../helpers/fake-cluster.ts';

describe('high availability decisions', () => {
  let cluster: FakeCluster;

  async function createVm(name: string, request: Record<string, unknown>): Promise<string> {
    const operation = await cluster.services.vms.create({ name, image: 'tiny', cpus: 1, memoryMb: 256, waitReady: true, ...request });
    const final = await cluster.services.operations.wait(operation.id);
    assert.equal(final.status, 'succeeded', JSON.stringify(final.error));
    return (final.result as { id: string }).id;
  }

  const hostOf = async (vm: string): Promise<string> => (await cluster.services.vms.get(vm)).host;
  const status = async (host: string): Promise<string> => (await cluster.services.hosts.get(host)).status;

  before(async () => {
    cluster = await fakeCluster(['h1', 'h2', 'h3']);
    await createVm('low', { host: 'h1', ha: true, haPriority: 1 });
    await createVm('high', { host: 'h1', ha: true, haPriority: 9 });
    await createVm('plain', { host: 'h1' });
    await createVm('other', { host: 'h3' });
  });
  after(() => cluster.close());

  it('knows which VMs can restart elsewhere, and says why not', () => {
    const spec = (disks: VmSpec['disks'], boot: VmSpec['boot']['kind'] = 'kernel'): VmSpec => ({
      id: 'vm-x',
      name: 'x',
      cpus: 1,
      memoryMb: 256,
      boot: boot === 'kernel' ? { kind: 'kernel', kernelPath: '/k', initrdPath: '/i', cmdline: '' } : { kind: 'disk', path: '/o.qcow2', format: 'qcow2' },
      disks,
      nics: [],
    });
    assert.equal(notRestartable(spec([])), undefined);
    assert.equal(notRestartable(spec([{ id: 'disk0', kind: 'nbd', socketPath: '/s', exportName: 'p1/v1' }])), undefined);
    assert.match(notRestartable(spec([{ id: 'disk0', kind: 'file', path: '/d.qcow2', format: 'qcow2' }])) ?? '', /disk0 is a file on its host/);
    assert.match(notRestartable(spec([], 'disk')) ?? '', /imported disk image/);
  });

  it('shows a silent host suspect, and fences it only after the fence delay', async () => {
    await cluster.silence('h1', 5_000);
    assert.equal(await status('h1'), 'suspect');
    await cluster.services.ha.tick();
    assert.equal(await status('h1'), 'suspect', 'not fenced before the watchdog must have fired');
    await cluster.silence('h1', FENCE_AFTER_MS + 1_000);
    await cluster.services.ha.tick();
    assert.equal(await status('h1'), 'fenced');
  });

  it('restarts the HA VMs elsewhere, highest priority first, and leaves the others', async () => {
    assert.notEqual(await hostOf('high'), 'h1');
    assert.notEqual(await hostOf('low'), 'h1');
    assert.equal(await hostOf('plain'), 'h1', 'a VM without HA stays with its host');
    const events = (await cluster.db.selectFrom('ha_events').selectAll().orderBy('seq').execute()).map((e) => [e.vm_name, e.status]);
    assert.deepEqual(events, [
      ['high', 'restarted'],
      ['low', 'restarted'],
    ]);
    const placement = await cluster.services.vms.policies.placementHistory('high');
    assert.deepEqual(
      placement.events.map((e) => e.action),
      ['create', 'ha-restart'],
    );
    assert.ok(
      placement.events[1]!.decision.refused.some((r) => r.host === 'h1'),
      'the fenced host was refused',
    );
    const running = await cluster.services.vms.get('high');
    assert.deepEqual([running.state, running.ready], ['running', true]);
  });

  it('tells a fenced host that comes back what to kill, and lets it in once it has', async () => {
    const h1 = await cluster.services.hosts.row('h1');
    const ids = await Promise.all(['high', 'low', 'plain'].map(async (vm) => (await cluster.services.vms.get(vm)).id));
    const first = await cluster.services.ha.onHeartbeat(h1, ids);
    assert.equal(first.fenced, true);
    assert.deepEqual(first.stale.sort(), [ids[0], ids[1]].sort(), 'the two that now run elsewhere');
    const second = await cluster.services.ha.onHeartbeat(await cluster.services.hosts.row('h1'), [ids[2]!]);
    assert.deepEqual([second.fenced, second.stale], [false, []]);
    assert.equal(await status('h1'), 'online');
    assert.deepEqual(second.ha, [], 'h1 keeps no HA VM');
  });

  it('only shows a silent host without HA VMs offline', async () => {
    await cluster.silence('h3', 60_000);
    await cluster.services.ha.tick();
    assert.equal(await status('h3'), 'offline');
    assert.equal(await hostOf('other'), 'h3');
  });
});
