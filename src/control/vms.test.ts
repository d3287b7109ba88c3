/**
 * The VM and migration services over a real database and fake agents: one owner per VM (a
 * refused or queued action, never a mixed state), what a failing agent leaves behind, and the
 * reconciliation of a create that a control plane restart interrupted.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { FakeAgent } from '../agent-api/fake-agent.ts';
import type { AppServices } from '../api/app.ts';
import { createServices } from '../app/control-plane.ts';
import { NubisError } from '../core/errors.ts';
import { openDatabase, type Db } from '../state/database.ts';

describe('VM service with fake agents', () => {
  let dir: string;
  let db: Db;
  let services: AppServices;
  const agents = new Map<string, FakeAgent>();
  const agent = (host: string): FakeAgent => agents.get(host)!;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'nubis-vms-test-'));
    db = await openDatabase(join(dir, 'nubis.db'));
    await db.insertInto('projects').values({ id: 'prj-1', name: 'default', created_at: new Date().toISOString() }).execute();
    services = createServices({
      db,
      dataDir: dir,
      joinToken: 'nubis_join_test',
      agentFactory: ({ hostName }) => {
        if (!agents.has(hostName)) agents.set(hostName, new FakeAgent(hostName));
        return agents.get(hostName)!;
      },
    });
    writeFileSync(join(dir, 'vmlinuz'), 'kernel');
    writeFileSync(join(dir, 'initrd'), 'initrd');
    await services.images.registerBuiltin('tiny', { kernelPath: join(dir, 'vmlinuz'), initrdPath: join(dir, 'initrd') });
    for (const name of ['h1', 'h2']) {
      await services.hosts.join({
        name,
        joinToken: 'nubis_join_test',
        endpoint: `unix:/fake/${name}.sock`,
        agentToken: `nubis_agent_${name.repeat(20)}`,
        accelerator: 'tcg',
        acceleratorReason: 'fake',
        cpus: 4,
        memoryMb: 8192,
        underlayIp: '172.31.0.11',
        qemuVersion: 'QEMU emulator version 10.0.2',
      });
      services.hosts.agent(await services.hosts.row(name));
    }
    await services.networks.create({ name: 'n1', subnet: '10.70.0.0/24', dhcp: false, nat: false });
  });
  after(async () => {
    await services.operations.drain();
    await db.destroy();
    rmSync(dir, { recursive: true, force: true });
  });

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
    await services.vms.applyReport(h1.id, [{ id: 'vm-runs', name: 'runs', state: 'running', pid: 7 }], true);
    assert.equal((await services.vms.get('runs')).state, 'running');
    assert.equal((await services.operations.get('op-vm-runs')).status, 'succeeded');
    await assert.rejects(services.vms.get('gone'), (error: NubisError) => error.code === 'VM_NOT_FOUND');
    const undone = await services.operations.get('op-vm-gone');
    assert.deepEqual([undone.status, undone.error?.code], ['failed', 'OPERATION_INTERRUPTED']);
    assert.match(undone.error?.message ?? '', /undone/);
    // Settled once: a later report changes nothing more.
    await services.vms.applyReport(h1.id, [{ id: 'vm-runs', name: 'runs', state: 'running', pid: 7 }], true);
    assert.equal((await services.operations.events('op-vm-runs')).filter((event) => event.stage === 'reconciled').length, 1);
  });
});
