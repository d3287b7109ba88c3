/**
 * What VM creates cost the database in commits, each of which waits for the disk (synchronous =
 * FULL): creates that run together share their commits (group commit, state/write-queue.ts), so
 * the commits a second, not the creates, are bounded by the disk.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { sql } from 'kysely';
import { type FakeCluster, fakeCluster } from '../helpers/fake-cluster.ts';

describe('VM creates and commits', () => {
  let cluster: FakeCluster;
  const commits = async () => Number((await sql<{ value: number }>`select nubis_commits() as value`.execute(cluster.db)).rows[0].value);

  before(async () => {
    cluster = await fakeCluster(['h1', 'h2']);
  });
  after(() => cluster.close());

  const createAll = async (names: string[]) => {
    const operations = await Promise.all(names.map((name) => cluster.services.vms.create({ name, image: 'tiny', cpus: 1, memoryMb: 64, waitReady: true })));
    for (const operation of operations) {
      const done = await cluster.services.operations.wait(operation.id);
      assert.equal(done.status, 'succeeded', JSON.stringify(done.error));
    }
  };

  it('creates 24 VMs at once in fewer commits than VMs, every one recorded with its operation and audit entry', async () => {
    await createAll(['warm-up']);
    const before = await commits();
    // Two hosts of 4 cores, CPU overcommit 4: room for 32 VMs of one vCPU.
    const names = Array.from({ length: 24 }, (_, index) => `together-${index}`);
    await createAll(names);
    const spent = (await commits()) - before;
    // Alone, a create commits eight times (its record with its operation, two statuses, five stages):
    // together, a commit carries the writes of many.
    assert.ok(spent <= names.length / 2, `${spent} commits for ${names.length} creates`);
    const vms = await cluster.services.vms.list({ limit: 1000 });
    assert.equal(vms.vms.filter((vm) => vm.name.startsWith('together-') && vm.state === 'running').length, names.length);
    const created = await cluster.db.selectFrom('operations').select('id').where('kind', '=', 'vm.create').where('status', '=', 'succeeded').execute();
    assert.equal(created.length, names.length + 1);
  });
});
