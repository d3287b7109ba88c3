/**
 * What heartbeats and HA rounds cost the database, for a thousand hosts beating every second:
 * a heartbeat writes nothing and reads a fixed few rows (its host, its HA VMs), heartbeat times
 * reach the database at most once per host per 10 s in one transaction, and an HA round reads
 * the host list again only when a host changed.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { HeartbeatAnswer } from '../../src/agent-api/heartbeat.ts';
import { type FakeCluster, fakeCluster } from '../helpers/fake-cluster.ts';
import { QueryCounter } from '../helpers/query-counter.ts';

describe('heartbeats at scale', () => {
  let cluster: FakeCluster;
  const queries = new QueryCounter();
  let haVm: string;

  before(async () => {
    cluster = await fakeCluster(['h1', 'h2', 'h3'], { plugins: [queries] });
    for (const [name, ha] of [
      ['plain', false],
      ['guarded', true],
    ] as const) {
      const operation = await cluster.services.vms.create({ name, image: 'tiny', cpus: 1, memoryMb: 128, host: 'h1', ha, waitReady: false });
      const done = await cluster.services.operations.wait(operation.id);
      assert.equal(done.status, 'succeeded', JSON.stringify(done.error));
    }
    haVm = (await cluster.services.vms.get('guarded')).id;
  });
  after(() => cluster.close());

  const heartbeat = async (host: string) => {
    const app = await cluster.app();
    const response = await app.inject({
      method: 'POST',
      url: `/v1/hosts/${host}/heartbeat`,
      headers: { authorization: `Bearer nubis_agent_${host.padEnd(32, 'x')}`, 'content-type': 'application/json' },
      payload: JSON.stringify({ vms: [] }),
    });
    assert.equal(response.statusCode, 200, response.body);
    return response.json() as HeartbeatAnswer;
  };

  it('answers heartbeats without writing, with a fixed few reads each', async () => {
    // The heartbeats below keep the hosts alive: the fake cluster's own (and their reads) stop.
    for (const host of ['h1', 'h2', 'h3']) await cluster.silence(host, 0);
    await heartbeat('h1');
    // The event stream's descriptions of the VMs created above and the hosts heard from again.
    await cluster.services.changes.settled();
    queries.reset();
    const rounds = 30;
    for (let index = 0; index < rounds; index++) {
      const answer = await heartbeat(index % 2 === 0 ? 'h1' : 'h2');
      assert.deepEqual(answer.ha, index % 2 === 0 ? [haVm] : []);
    }
    assert.deepEqual(queries.writes(), [], 'a heartbeat writes nothing');
    assert.ok(queries.count({ kind: 'select', table: 'hosts' }) <= 2, 'the agents are authenticated from memory, their hosts read once');
    assert.ok(queries.queries.length <= rounds + 5, `${queries.queries.length} queries for ${rounds} heartbeats: one each (its HA VMs), and a few`);
  });

  it('writes heartbeat times at most once per host per 10 s, and reads the hosts again only when one changed', async () => {
    await cluster.services.ha.tick();
    queries.reset();
    for (let round = 0; round < 5; round++) {
      for (const host of ['h1', 'h2', 'h3']) await heartbeat(host);
      await cluster.services.ha.tick();
    }
    assert.deepEqual(queries.writes(), [], 'no heartbeat time is due again within 10 s');
    assert.equal(queries.count({ kind: 'select', table: 'hosts', filtered: false }), 0, 'no HA round read every host');
    // Ten seconds on, each host's time is written once, in one round.
    for (const host of await cluster.services.hosts.rows()) cluster.services.hosts.heartbeat(host.id, Date.now() + 10_000);
    await cluster.services.ha.tick();
    assert.equal(queries.writes().length, 3, 'one row per host');
  });
});
