/**
 * Placement at scale: the hosts and their allocations are read again only when something
 * placement reads changed (a counter that database triggers keep), creates placed together each
 * count the others' shares and never overcommit a host, and a create refused after its placement
 * gives its share back.
 */
import assert from 'node:assert/strict';
import { sql } from 'kysely';
import { after, before, describe, it } from 'node:test';
import type { NubisError } from '../core/errors.ts';
import { type FakeCluster, fakeCluster } from '../../test/helpers/fake-cluster.ts';
import { QueryCounter } from '../../test/helpers/query-counter.ts';
import { placementVersion } from './host-usage.ts';
import { cpuCapacity } from './scheduler.ts';
import { toSchedulerHost } from './placement.ts';

describe('placement cache', () => {
  let cluster: FakeCluster;
  const queries = new QueryCounter();

  before(async () => {
    // Fake hosts have 4 cores: 16 vCPUs each at the default overcommit of 4.
    cluster = await fakeCluster(['h1', 'h2'], { plugins: [queries] });
    await cluster.services.networks.create({ name: 'n1', subnet: '10.73.0.0/24', dhcp: false, nat: false });
  });
  after(() => cluster.close());

  const create = (name: string, extra: Record<string, unknown> = {}) =>
    cluster.services.vms.create({ name, image: 'tiny', cpus: 1, memoryMb: 128, waitReady: false, ...extra });
  const allocated = async () => Object.fromEntries((await cluster.services.hosts.list()).map((host) => [host.name, host.allocatedCpus]));

  it('places without reading the hosts again when nothing placement reads changed', async () => {
    await cluster.services.operations.wait((await create('warm')).id);
    for (let index = 0; index < 3; index++) {
      queries.reset();
      await cluster.services.operations.wait((await create(`quiet${index}`)).id);
      assert.equal(queries.count({ kind: 'select', table: 'hosts', filtered: false }), 0, 'the host list is not read again');
      assert.equal(queries.count({ kind: 'select', table: 'vms', grouped: true }), 0, 'the allocations are not summed again');
    }
    assert.deepEqual(await allocated(), { h1: 2, h2: 2 }, 'spread over both hosts, each create counted');
  });

  it('sees a change made anywhere, also straight in the database, at the next placement', async () => {
    const before = await placementVersion(cluster.db);
    await cluster.db.updateTable('hosts').set({ maintenance: 1 }).where('name', '=', 'h1').execute();
    assert.ok((await placementVersion(cluster.db)) > before);
    const decision = await cluster.services.placement.explain({ projectId: 'prj-1', cpus: 1, memoryMb: 128 });
    assert.equal(decision.host, 'h2');
    assert.deepEqual(
      decision.refused.map((refusal) => [refusal.host, refusal.filter]),
      [['h1', 'state']],
    );
    await cluster.db.updateTable('hosts').set({ maintenance: 0 }).where('name', '=', 'h1').execute();
    // A VM removed behind the service's back frees its share at once.
    const vm = await cluster.services.vms.get('quiet0');
    await cluster.db.deleteFrom('vms').where('id', '=', vm.id).execute();
    const after = await allocated();
    assert.equal(after.h1 + after.h2, 3, 'four VMs, one gone');
  });

  it('never overcommits a host with creates placed together', async () => {
    const capacity = (await cluster.services.hosts.list()).reduce((sum, host) => sum + cpuCapacity(toSchedulerHost(host)), 0);
    const used = Object.values(await allocated()).reduce((sum, cpus) => sum + cpus, 0);
    const results = await Promise.allSettled(Array.from({ length: capacity - used + 10 }, (_, index) => create(`burst${index}`)));
    const refused = results.filter((result) => result.status === 'rejected');
    assert.equal(results.length - refused.length, capacity - used, 'exactly what was free was taken');
    for (const result of refused) assert.equal((result.reason as NubisError).code, 'NO_HOST_FITS');
    await cluster.services.operations.drain();
    for (const host of await cluster.services.hosts.list()) assert.ok(host.allocatedCpus <= cpuCapacity(toSchedulerHost(host)), `${host.name} overcommitted`);
    assert.deepEqual(await allocated(), { h1: 16, h2: 16 });
    // Free them again for what follows.
    for (let index = 0; index < capacity - used; index++) await cluster.services.operations.wait((await cluster.services.vms.delete(`burst${index}`)).id);
  });

  it('gives back the share of a create refused after its placement', async () => {
    const free = async () => (await cluster.services.hosts.list()).reduce((sum, host) => sum + cpuCapacity(toSchedulerHost(host)) - host.allocatedCpus, 0);
    const freeBefore = await free();
    for (let index = 0; index < freeBefore + 5; index++)
      await assert.rejects(create(`bad${index}`, { networks: [{ network: 'n1', ip: '192.0.2.9' }] }), (error: NubisError) => error.code !== 'NO_HOST_FITS');
    assert.equal(await free(), freeBefore);
    assert.equal((await cluster.services.operations.wait((await create('fits')).id)).status, 'succeeded');
  });

  it('keeps heartbeat times out of the version, and every other host column in it', async () => {
    const before = await placementVersion(cluster.db);
    for (const host of await cluster.services.hosts.rows()) cluster.services.hosts.heartbeat(host.id, Date.now() + 20_000);
    await cluster.services.hosts.persistHeartbeats();
    assert.equal(await placementVersion(cluster.db), before, 'a heartbeat written is no change to placement');
    const columns = (await sql<{ name: string }>`select name from pragma_table_info('hosts')`.execute(cluster.db)).rows.map((row) => row.name);
    const trigger = (await sql<{ sql: string }>`select sql from sqlite_master where name = 'placement_hosts_changed'`.execute(cluster.db)).rows[0].sql;
    assert.deepEqual(
      columns.filter((column) => !trigger.includes(`old.${column} IS NOT new.${column}`)),
      ['last_seen_at'],
      'a column of hosts that placement does not see change',
    );
  });
});
