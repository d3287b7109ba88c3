/**
 * Host reports at scale: a thousand hosts each send every VM's status every 10 s, so a report
 * that tells nothing new writes nothing, and one that does writes only what changed.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { type FakeCluster, fakeCluster } from '../../test/helpers/fake-cluster.ts';
import { QueryCounter } from '../../test/helpers/query-counter.ts';

describe('VM reports', () => {
  let cluster: FakeCluster;
  let hostId: string;
  const queries = new QueryCounter();

  before(async () => {
    cluster = await fakeCluster(['h1'], { plugins: [queries] });
    for (const name of ['r1', 'r2', 'r3']) {
      const operation = await cluster.services.vms.create({ name, image: 'tiny', cpus: 1, memoryMb: 128, waitReady: false });
      assert.equal((await cluster.services.operations.wait(operation.id)).status, 'succeeded');
    }
    hostId = (await cluster.services.hosts.row('h1')).id;
  });
  after(() => cluster.close());

  const report = async (full = true) => {
    queries.reset();
    await cluster.services.vms.reports.applyReport(hostId, await cluster.agent('h1').listVms(), full);
    return queries.writes();
  };
  const states = async () => Object.fromEntries((await cluster.services.vms.list()).vms.map((vm) => [vm.name, vm.state]));

  it('writes nothing for a full report that tells nothing new', async () => {
    assert.deepEqual(await report(), []);
    assert.deepEqual(await report(), []);
    assert.deepEqual(await states(), { r1: 'running', r2: 'running', r3: 'running' });
  });

  it('writes the one status that changed, and marks a VM the host lost missing, once', async () => {
    const agent = cluster.agent('h1');
    const r2 = (await cluster.services.vms.get('r2')).id;
    agent.vms.get(r2)!.state = 'stopped';
    assert.deepEqual(await report(), [{ kind: 'update', table: 'vms', filtered: true, grouped: false }]);
    const r3 = (await cluster.services.vms.get('r3')).id;
    agent.vms.delete(r3);
    assert.equal((await report()).length, 1, 'r3 marked missing');
    assert.deepEqual(await states(), { r1: 'running', r2: 'stopped', r3: 'missing' });
    assert.deepEqual(await report(), [], 'missing already: nothing to write');
    assert.deepEqual(await report(false), [], 'a change report of unchanged statuses writes nothing either');
  });
});
