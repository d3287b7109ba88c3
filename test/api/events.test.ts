/**
 * The cluster-wide event stream as a client meets it: a real HTTP connection to the API over a
 * fake cluster, read as server-sent events. A VM's life shows up as it happens, nobody sees
 * another project's resources, a reconnect resumes exactly where it broke off (or is told to
 * start over), and a revoked token's stream ends.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { FastifyInstance } from 'fastify';
import type { Principal } from '../../src/access/authorize.ts';
import type { ChangeEvent } from '../../src/events/change-feed.ts';
import { type FakeCluster, fakeCluster } from '../helpers/fake-cluster.ts';
import { openStream, type SseMessage } from '../helpers/sse-stream.ts';

const changeOf = (message: SseMessage) => message.data as ChangeEvent;

describe('the cluster-wide event stream', () => {
  let cluster: FakeCluster;
  let app: FastifyInstance;
  let base: string;
  const tokens: Record<string, string> = {};

  async function call(method: string, url: string, token: string, body?: unknown) {
    const response = await app.inject({
      method: method as 'GET',
      url,
      headers: { authorization: `Bearer ${token}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
      ...(body === undefined ? {} : { payload: JSON.stringify(body) }),
    });
    return { status: response.statusCode, body: (response.body ? response.json() : {}) as Record<string, unknown> };
  }

  /** A session token of a new user holding `role` on `project`. */
  async function userToken(name: string, role: string, project: string): Promise<string> {
    const user = await cluster.services.access.users.create(name, `${name}-password-1`);
    const userId = (await cluster.services.access.users.row(user.name)).id;
    const projectId = (await cluster.db.selectFrom('projects').select('id').where('name', '=', project).executeTakeFirstOrThrow()).id;
    await cluster.services.access.roles.grant({ type: 'user', id: userId, name }, role, projectId);
    const owner: Principal = { userId, userName: name, tokenId: '', tokenName: '', grants: [], tokenProjectId: null, tokenRole: null };
    return (await cluster.services.access.tokens.create(owner, { name: `events-${name}`, kind: 'session' })).secret;
  }

  before(async () => {
    cluster = await fakeCluster(['h1']);
    app = await cluster.app();
    for (const name of ['alpha', 'beta']) assert.equal((await call('POST', '/v1/projects', cluster.token, { name })).status, 201);
    tokens.alpha = await userToken('ann', 'member', 'alpha');
    tokens.beta = await userToken('ben', 'member', 'beta');
    base = await app.listen({ host: '127.0.0.1', port: 0 });
  });
  after(() => cluster.close());

  it('shows a new VM created, then updated to running', async () => {
    const stream = await openStream(`${base}/v1/events?types=vm`, cluster.token);
    assert.equal(stream.status, 200);
    try {
      const created = await call('POST', '/v1/vms', cluster.token, { name: 'web1', image: 'tiny', project: 'alpha', waitReady: false });
      assert.equal(created.status, 202, JSON.stringify(created.body));
      const running = await stream.next((m) => changeOf(m).name === 'web1' && (changeOf(m).resource as { state?: string } | undefined)?.state === 'running');
      const ofWeb1 = stream.messages.filter((m) => changeOf(m).name === 'web1');
      assert.equal(changeOf(ofWeb1[0]).action, 'created');
      assert.equal(changeOf(running).action, 'updated');
      assert.equal(changeOf(running).project, 'alpha');
      assert.equal((changeOf(running).resource as { name: string }).name, 'web1', 'the resource as GET shows it');
      assert.ok(
        stream.messages.every((m) => m.event === 'change' && changeOf(m).type === 'vm'),
        'only the asked types',
      );
      assert.match(running.id ?? '', /^[a-z0-9]+-\d+$/);
    } finally {
      stream.close();
    }
  });

  it('shows a host going quiet and coming back (a status moved by the clock, not by a write)', async () => {
    const stream = await openStream(`${base}/v1/events?types=host`, cluster.token);
    try {
      await cluster.services.ha.tick();
      await cluster.silence('h1', 20_000);
      await cluster.services.ha.tick();
      const quiet = await stream.next((m) => changeOf(m).name === 'h1' && (changeOf(m).resource as { status?: string } | undefined)?.status !== 'online');
      assert.match((changeOf(quiet).resource as { status: string }).status, /^(suspect|offline)$/);
      await cluster.revive('h1');
      await cluster.services.ha.tick();
      await stream.next((m) => m !== quiet && changeOf(m).name === 'h1' && (changeOf(m).resource as { status?: string } | undefined)?.status === 'online');
    } finally {
      stream.close();
    }
  });

  it("never shows a user of one project another project's events", async () => {
    const ann = await openStream(`${base}/v1/events`, tokens.alpha);
    const ben = await openStream(`${base}/v1/events`, tokens.beta);
    try {
      for (const [token, project, name] of [
        [tokens.alpha, 'alpha', 'a-net'],
        [tokens.beta, 'beta', 'b-net'],
      ])
        assert.equal((await call('POST', '/v1/networks', token, { name, subnet: project === 'alpha' ? '10.61.0.0/24' : '10.62.0.0/24', project })).status, 201);
      const bVm = await call('POST', '/v1/vms', tokens.beta, { name: 'b-vm', image: 'tiny', project: 'beta', waitReady: false });
      await cluster.services.operations.wait((bVm.body.operation as { id: string }).id);
      await ann.next((m) => changeOf(m).name === 'a-net');
      await ben.next((m) => changeOf(m).name === 'b-vm' && changeOf(m).type === 'vm');
      await cluster.services.changes.settled();
      assert.ok(ann.messages.length > 0 && ben.messages.length > 0);
      assert.deepEqual([...new Set(ann.messages.map((m) => changeOf(m).project))], ['alpha'], 'ann sees alpha only');
      assert.deepEqual([...new Set(ben.messages.map((m) => changeOf(m).project))], ['beta'], 'ben sees beta only (no hosts: a platform resource)');
      assert.ok(
        ben.messages.some((m) => changeOf(m).type === 'operation'),
        "ben sees his VM's operation",
      );
    } finally {
      ann.close();
      ben.close();
    }
  });

  it('resumes after Last-Event-ID with exactly the missed events, and says reset for an id of another epoch', async () => {
    const first = await openStream(`${base}/v1/events`, cluster.token);
    assert.equal((await call('POST', '/v1/networks', cluster.token, { name: 'r-net1', subnet: '10.63.0.0/24', project: 'alpha' })).status, 201);
    const seen = await first.next((m) => changeOf(m).name === 'r-net1');
    first.close();
    await first.ended;
    for (const [name, subnet] of [
      ['r-net2', '10.64.0.0/24'],
      ['r-net3', '10.65.0.0/24'],
    ])
      assert.equal((await call('POST', '/v1/networks', cluster.token, { name, subnet, project: 'alpha' })).status, 201);
    assert.equal((await call('DELETE', '/v1/networks/r-net2?project=alpha', cluster.token)).status, 204);
    await cluster.services.changes.settled();
    const lastSeq = Number(cluster.services.changes.lastEventId.split('-')[1]);
    const seenSeq = changeOf(seen).seq;
    const resumed = await openStream(`${base}/v1/events`, cluster.token, { 'last-event-id': seen.id! });
    try {
      await resumed.next((m) => changeOf(m).seq === lastSeq);
      const seqs = resumed.messages.map((m) => changeOf(m).seq);
      assert.deepEqual(
        seqs,
        Array.from({ length: lastSeq - seenSeq }, (_, i) => seenSeq + 1 + i),
        'every event after the last one seen, once each, in order',
      );
      const names = resumed.messages.map((m) => `${changeOf(m).action} ${changeOf(m).name}`);
      for (const expected of ['created r-net2', 'created r-net3', 'deleted r-net2']) assert.ok(names.includes(expected), `${expected} in ${names}`);
    } finally {
      resumed.close();
    }
    const stale = await openStream(`${base}/v1/events?lastEventId=zzzz0-${seenSeq}`, cluster.token);
    try {
      const reset = await stale.next((m) => m.event === 'reset');
      assert.match((reset.data as { reason: string }).reason, /restarted/);
      assert.equal(reset.id, cluster.services.changes.lastEventId, 'the reset carries the id to resume from after refetching');
    } finally {
      stale.close();
    }
  });

  it('ends a stream when its token is revoked', async () => {
    const owner = await cluster.services.access.users.row('ann');
    const principal: Principal = { userId: owner.id, userName: 'ann', tokenId: '', tokenName: '', grants: [], tokenProjectId: null, tokenRole: null };
    const token = await cluster.services.access.tokens.create(principal, { name: 'to-revoke', kind: 'session' });
    const stream = await openStream(`${base}/v1/events`, token.secret);
    assert.equal(stream.status, 200);
    const open = cluster.services.access.liveConnections;
    assert.equal((await call('DELETE', `/v1/tokens/${token.token.id}`, token.secret)).status, 204);
    await stream.ended;
    assert.equal(cluster.services.access.liveConnections, open - 1);
  });

  it('refuses an unknown type and a missing token', async () => {
    const unknown = await call('GET', '/v1/events?types=vm,spaceship', cluster.token);
    assert.equal(unknown.status, 400);
    const anonymous = await app.inject({ method: 'GET', url: '/v1/events' });
    assert.equal(anonymous.statusCode, 401);
  });

  it('answers a HEAD with the headers and ends (a page asking whether the stream exists)', async () => {
    const head = await app.inject({ method: 'HEAD', url: '/v1/events', headers: { authorization: `Bearer ${cluster.token}` } });
    assert.deepEqual([head.statusCode, head.headers['content-type'], head.body], [200, 'text/event-stream', '']);
  });
});
