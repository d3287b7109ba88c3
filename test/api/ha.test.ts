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

describe('HA groups', () => {
  let cluster: FakeCluster;

  async function createVm(name: string, request: Record<string, unknown>): Promise<void> {
    const operation = await cluster.services.vms.create({
      name,
      image: 'tiny',
      cpus: 1,
      memoryMb: 256,
      waitReady: true,
      networks: [{ network: 'n1' }],
      ...request,
    });
    assert.equal((await cluster.services.operations.wait(operation.id)).status, 'succeeded');
  }
  const hostOf = async (vm: string): Promise<string> => (await cluster.services.vms.get(vm)).host;

  before(async () => {
    cluster = await fakeCluster(['g1', 'g2', 'g3']);
    await cluster.services.networks.create({ name: 'n1', subnet: '10.30.0.0/24' });
    await cluster.services.placement.haGroups.create({ name: 'home', hosts: ['g1'], failback: true });
    await cluster.services.placement.haGroups.create({ name: 'only3', hosts: ['g3'], restricted: true });
  });
  after(() => cluster.close());

  it("places a VM on its group's hosts, restarts it elsewhere only when the group is not restricted, and fails it back home", async () => {
    await createVm('homed', { ha: true, haGroup: 'home' });
    await createVm('kept', { ha: true, haGroup: 'only3' });
    assert.deepEqual([await hostOf('homed'), await hostOf('kept')], ['g1', 'g3'], "on their groups' hosts although g2 is emptier");

    await cluster.silence('g1', FENCE_AFTER_MS + 1_000);
    await cluster.silence('g3', FENCE_AFTER_MS + 1_000);
    await cluster.services.ha.tick();
    assert.equal(await hostOf('homed'), 'g2', 'an unrestricted group lets it run elsewhere');
    assert.equal(await hostOf('kept'), 'g3', 'a restricted group keeps it off other hosts');
    const failed = await cluster.db.selectFrom('ha_events').select(['vm_name', 'status', 'message']).where('vm_name', '=', 'kept').execute();
    assert.equal(failed[0]?.status, 'failed');
    assert.match(failed[0]!.message, /not a host of restricted HA group only3/);

    // g1 comes back (its heartbeat has nothing stale): homed migrates back to it.
    await cluster.revive('g1');
    await cluster.services.ha.onHeartbeat(await cluster.services.hosts.row('g1'), []);
    await cluster.services.ha.tick();
    for (let i = 0; i < 50 && (await hostOf('homed')) !== 'g1'; i++) await new Promise((resolve) => setTimeout(resolve, 100));
    assert.equal(await hostOf('homed'), 'g1');
    const actions = (await cluster.services.vms.policies.placementHistory('homed')).events.map((e) => e.action);
    assert.deepEqual(actions, ['create', 'ha-restart', 'failback']);
  });

  it('refuses to delete a group with VMs, and lets a VM leave its group', async () => {
    await assert.rejects(cluster.services.placement.haGroups.delete('home'), { code: 'HA_GROUP_IN_USE' });
    await cluster.services.vms.policies.update('homed', undefined, { haGroup: '' });
    await cluster.services.placement.haGroups.delete('home');
    assert.deepEqual(
      (await cluster.services.placement.haGroups.list()).map((g) => g.name),
      ['only3'],
    );
  });
});
