/**
 * The VM and migration services over a real database and fake agents: one owner per VM (a
 * refused or queued action, never a mixed state), what a failing agent leaves behind, and the
 * reconciliation of a create that a control plane restart interrupted.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { NubisError } from '../core/errors.ts';
import { type FakeCluster, fakeCluster } from '../../test/helpers/fake-cluster.ts';

describe('VM service with fake agents', () => {
  let cluster: FakeCluster;
  let services: FakeCluster['services'];
  let db: FakeCluster['db'];
  const agent = (host: string) => cluster.agent(host);

  before(async () => {
    cluster = await fakeCluster(['h1', 'h2']);
    ({ services, db } = cluster);
    await services.networks.create({ name: 'n1', subnet: '10.70.0.0/24', dhcp: false, nat: false });
  });
  after(() => cluster.close());

  const create = (name: string, host = 'h1') =>
    services.vms.create({ name, image: 'tiny', cpus: 1, memoryMb: 256, host, networks: [{ network: 'n1' }], waitReady: false });

  it('creates a VM through its host agent and records what the agent reports', async () => {
    const operation = await services.operations.wait((await create('a1')).id);
    assert.equal(operation.status, 'succeeded', JSON.stringify(operation.error));
    const vm = await services.vms.get('a1');
    assert.deepEqual([vm.state, vm.host], ['running', 'h1']);
    assert.equal(agent('h1').callsOf('createVm').length, 1);
  });

  it('refuses an action that meets a migration in progress, naming it, and changes nothing', async () => {
    const release = agent('h2').hold('prepareIncoming');
    const migration = await services.migrations.migrate((await services.vms.get('a1')).id, { to: 'h2', strategy: 'precopy' });
    for (const refused of [
      () => services.vms.act('a1', 'stop'),
      () => services.vms.delete('a1'),
      () => services.migrations.migrate(migration.target.id, { to: 'h2', strategy: 'precopy' }),
    ]) {
      await assert.rejects(
        refused(),
        (error: NubisError) => error.code === 'VM_BUSY' && error.message.includes(`busy with migrate (operation ${migration.id})`),
      );
    }
    release();
    const done = await services.operations.wait(migration.id);
    assert.equal(done.status, 'succeeded', JSON.stringify(done.error));
    assert.deepEqual(agent('h1').callsOf('stopVm'), [], 'the refused stop never reached the agent');
    const vm = await services.vms.get('a1');
    assert.deepEqual([vm.host, vm.state], ['h2', 'running']);
  });

  it('queues a delete behind a create in progress: the VM ends deleted, with nothing left', async () => {
    const release = agent('h1').hold('createVm');
    const creating = await create('a2');
    const deleting = await services.vms.delete('a2');
    await assert.rejects(services.vms.act('a2', 'start'), (error: NubisError) => error.code === 'VM_BUSY');
    release();
    assert.equal((await services.operations.wait(creating.id)).status, 'succeeded');
    assert.equal((await services.operations.wait(deleting.id)).status, 'succeeded');
    await assert.rejects(services.vms.get('a2'), (error: NubisError) => error.code === 'VM_NOT_FOUND');
    assert.equal(agent('h1').vms.has(creating.target.id), false);
  });

  it('queues a delete behind an attach in progress: the disk is attached, then the VM and its disk record are gone', async () => {
    await services.storage.dirPools.create('local', ['h1'], false);
    await services.storage.dirPools.createVolume('local', 'scratch', 2 ** 30, 'h1');
    const created = await services.operations.wait((await create('a4')).id);
    assert.equal(created.status, 'succeeded');
    const release = agent('h1').hold('attachDisk');
    const attaching = await services.vms.attachVolume('a4', 'local/scratch');
    const deleting = await services.vms.delete('a4');
    await assert.rejects(
      services.migrations.migrate(attaching.target.id, { to: 'h2', strategy: 'precopy' }),
      (error: NubisError) => error.code === 'VM_BUSY' && error.message.includes('busy with attach'),
    );
    release();
    assert.equal((await services.operations.wait(attaching.id)).status, 'succeeded');
    assert.equal((await services.operations.wait(deleting.id)).status, 'succeeded');
    assert.deepEqual(await services.storage.disksOf(attaching.target.id), [], 'no disk record outlives its VM');
    assert.equal(agent('h1').vms.has(attaching.target.id), false);
  });

  it('forgets a VM whose agent refused to start it, keeping the agent’s error code', async () => {
    agent('h1').failNext('createVm', new NubisError('VM_START_FAILED', 'QEMU exited at once'));
    const operation = await services.operations.wait((await create('a3')).id);
    assert.deepEqual([operation.status, operation.error?.code], ['failed', 'VM_START_FAILED']);
    await assert.rejects(services.vms.get('a3'), (error: NubisError) => error.code === 'VM_NOT_FOUND');
    assert.equal((await services.hosts.get('h1')).allocatedMemoryMb, 0, 'its capacity is free');
  });

  it('settles a create interrupted by a restart with the host’s report: done where the host runs it, undone where it never started', async () => {
    const now = new Date().toISOString();
    const h1 = await services.hosts.row('h1');
    const image = await services.images.row('tiny');
    const spec = (id: string, name: string) =>
      JSON.stringify({ id, name, cpus: 1, memoryMb: 128, boot: { kind: 'kernel', kernelPath: '/k', initrdPath: '/i', cmdline: '' }, disks: [], nics: [] });
    for (const [id, name] of [
      ['vm-gone', 'gone'],
      ['vm-runs', 'runs'],
    ]) {
      await db
        .insertInto('vms')
        .values({
          id,
          project_id: 'prj-1',
          name,
          host_id: h1.id,
          image_id: image.id,
          cpus: 1,
          memory_mb: 128,
          desired_state: 'running',
          actual_state: 'pending',
          spec: spec(id, name),
          status: '{}',
          allow_postcopy: 1,
          ha: 0,
          ha_priority: 0,
          autostart: 0,
          boot_order: 0,
          boot_delay_seconds: 0,
          balance: 'auto',
          template: 0,
          linked_to: null,
          created_at: now,
          updated_at: now,
        })
        .execute();
      await db
        .insertInto('operations')
        .values({
          id: `op-${id}`,
          kind: 'vm.create',
          project_id: 'prj-1',
          target_type: 'vm',
          target_id: id,
          target_name: name,
          status: 'failed',
          stage: 'placed',
          progress: 0.1,
          error_code: 'OPERATION_INTERRUPTED',
          error_message: 'The control plane stopped while this operation ran',
          result: null,
          created_at: now,
          updated_at: now,
        })
        .execute();
    }
    await services.vms.reports.applyReport(h1.id, [{ id: 'vm-runs', name: 'runs', state: 'running', pid: 7 }], true);
    assert.equal((await services.vms.get('runs')).state, 'running');
    assert.equal((await services.operations.get('op-vm-runs')).status, 'succeeded');
    await assert.rejects(services.vms.get('gone'), (error: NubisError) => error.code === 'VM_NOT_FOUND');
    const undone = await services.operations.get('op-vm-gone');
    assert.deepEqual([undone.status, undone.error?.code], ['failed', 'OPERATION_INTERRUPTED']);
    assert.match(undone.error?.message ?? '', /undone/);
    // Settled once: a later report changes nothing more.
    await services.vms.reports.applyReport(h1.id, [{ id: 'vm-runs', name: 'runs', state: 'running', pid: 7 }], true);
    assert.equal((await services.operations.events('op-vm-runs')).filter((event) => event.stage === 'reconciled').length, 1);
  });
});
