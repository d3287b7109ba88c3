/**
 * Access control as a user meets it, through the real API over a fake cluster: signing in (with a
 * second factor), tokens narrower than their user, expiry and revocation at once (an open event
 * stream closes), references that never cross projects, agent and user credentials kept apart,
 * and quotas that hold under parallel creates.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { FastifyInstance } from 'fastify';
import { totpCode } from '../../src/access/totp.ts';
import { type FakeCluster, fakeCluster } from '../helpers/fake-cluster.ts';

describe('access control through the API', () => {
  let cluster: FakeCluster;
  let app: FastifyInstance;

  async function call(method: string, url: string, token: string | undefined, body?: unknown) {
    const response = await app.inject({
      method: method as 'GET',
      url,
      headers: { ...(token ? { authorization: `Bearer ${token}` } : {}), ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
      ...(body === undefined ? {} : { payload: JSON.stringify(body) }),
    });
    return { status: response.statusCode, body: response.body ? (response.json() as Record<string, unknown> & { code?: string; message?: string }) : {} };
  }

  async function login(user: string, password: string, totp?: string): Promise<string> {
    const response = await call('POST', '/v1/auth/login', undefined, { user, password, ...(totp ? { totp } : {}) });
    assert.equal(response.status, 200, JSON.stringify(response.body));
    return response.body.secret as string;
  }

  before(async () => {
    cluster = await fakeCluster(['h1']);
    app = await cluster.app();
    const adminToken = cluster.token;
    for (const name of ['web', 'shop']) assert.equal((await call('POST', '/v1/projects', adminToken, { name })).status, 201);
    for (const user of ['alice', 'bob', 'carol'])
      assert.equal((await call('POST', '/v1/users', adminToken, { name: user, password: `${user}-password-1` })).status, 201);
    assert.equal((await call('POST', '/v1/access/grants', adminToken, { user: 'alice', role: 'owner', project: 'web' })).status, 204);
    assert.equal((await call('POST', '/v1/access/grants', adminToken, { user: 'bob', role: 'member', project: 'web' })).status, 204);
    assert.equal((await call('POST', '/v1/access/grants', adminToken, { user: 'carol', role: 'member', project: 'shop' })).status, 204);
  });
  after(() => cluster.close());

  it('signs in with a password, says who it acts as, and refuses a wrong password or unknown user alike', async () => {
    const wrong = await call('POST', '/v1/auth/login', undefined, { user: 'alice', password: 'not-her-password' });
    const unknown = await call('POST', '/v1/auth/login', undefined, { user: 'mallory', password: 'whatever-1' });
    assert.deepEqual([wrong.status, wrong.body.code, wrong.body.message], [401, 'AUTH_LOGIN_FAILED', 'Wrong user name or password']);
    assert.deepEqual([unknown.status, unknown.body.message], [401, wrong.body.message]);
    const session = await login('alice', 'alice-password-1');
    const whoami = await call('GET', '/v1/auth/whoami', session);
    assert.equal(whoami.body.user, 'alice');
    assert.deepEqual(whoami.body.roles, [{ role: 'owner', project: 'web', via: 'user' }]);
    assert.equal(whoami.body.tokenKind, 'session');
    assert.ok(whoami.body.expiresAt, 'a session expires');
  });

  it('requires the TOTP code of an enrolled user, and takes each code once', async () => {
    const session = await login('bob', 'bob-password-1');
    const enrolment = await call('POST', '/v1/auth/totp', session);
    assert.match(enrolment.body.uri as string, /^otpauth:\/\/totp\/Nubis:bob\?/);
    const secret = enrolment.body.secret as string;
    assert.equal((await call('POST', '/v1/auth/totp/confirm', session, { code: totpCode(secret) })).status, 204);
    const without = await call('POST', '/v1/auth/login', undefined, { user: 'bob', password: 'bob-password-1' });
    assert.deepEqual([without.status, without.body.code], [401, 'AUTH_TOTP_REQUIRED']);
    const wrongCode = String((Number(totpCode(secret)) + 1) % 1_000_000).padStart(6, '0');
    assert.equal((await call('POST', '/v1/auth/login', undefined, { user: 'bob', password: 'bob-password-1', totp: wrongCode })).status, 401);
    const code = totpCode(secret);
    await login('bob', 'bob-password-1', code);
    const replay = await call('POST', '/v1/auth/login', undefined, { user: 'bob', password: 'bob-password-1', totp: code });
    assert.deepEqual([replay.status, replay.body.code], [401, 'AUTH_LOGIN_FAILED'], 'a code is good once');
  });

  it('makes tokens narrower than their user, never wider, and shows the secret once', async () => {
    const alice = await login('alice', 'alice-password-1');
    const reader = await call('POST', '/v1/tokens', alice, { name: 'ci', project: 'web', role: 'reader', expiresInSeconds: 3600 });
    assert.equal(reader.status, 201, JSON.stringify(reader.body));
    const secret = reader.body.secret as string;
    assert.equal((await call('GET', '/v1/vms?project=web', secret)).status, 200);
    const create = await call('POST', '/v1/vms', secret, { name: 'x1', image: 'tiny', project: 'web' });
    assert.deepEqual([create.status, create.body.code], [403, 'ACCESS_DENIED']);
    assert.match(create.body.message as string, /limited to role reader, which lacks vm\.create/);
    const listed = await call('GET', '/v1/tokens', alice);
    assert.ok(!JSON.stringify(listed.body).includes(secret), 'the secret is never listed');
    const wider = await call('POST', '/v1/tokens', alice, { name: 'too-wide', role: 'admin' });
    assert.deepEqual([wider.status, wider.body.code], [403, 'TOKEN_TOO_WIDE']);
    const bob = await call('POST', '/v1/tokens', await tokenFor('bob'), { name: 'mig', project: 'web', role: 'operator' });
    assert.deepEqual([bob.status, bob.body.code], [403, 'TOKEN_TOO_WIDE']);
    assert.match(bob.body.message as string, /vm\.migrate/);
  });

  /** A token of `user` made directly (bob has a second factor by now). */
  async function tokenFor(user: string, expiresAt?: Date): Promise<string> {
    const row = await cluster.services.access.users.row(user);
    const principal = { userId: row.id, userName: user, tokenId: '', tokenName: '', grants: [], tokenProjectId: null, tokenRole: null };
    return (await cluster.services.access.tokens.create(principal, { name: `t-${Math.random().toString(36).slice(2)}`, kind: 'session', expiresAt })).secret;
  }

  it('refuses an expired or revoked token with a reason that says so', async () => {
    const expired = await tokenFor('alice', new Date(Date.now() - 1000));
    const refused = await call('GET', '/v1/auth/whoami', expired);
    assert.deepEqual([refused.status, refused.body.code], [401, 'AUTH_TOKEN_EXPIRED']);
    assert.match(refused.body.message as string, /expired at/);
    const session = await login('alice', 'alice-password-1');
    assert.equal((await call('POST', '/v1/auth/logout', session)).status, 204);
    const after = await call('GET', '/v1/auth/whoami', session);
    assert.deepEqual([after.status, after.body.code], [401, 'AUTH_TOKEN_REVOKED']);
  });

  it("never reaches another project's resource, by name or by id, and a denial creates nothing", async () => {
    const carol = await tokenFor('carol');
    const created = await call('POST', '/v1/networks', carol, { name: 'n1', subnet: '10.91.0.0/24', project: 'shop' });
    assert.equal(created.status, 201, JSON.stringify(created.body));
    const bob = await tokenFor('bob');
    const byId = await call('GET', `/v1/networks/${created.body.id}?project=web`, bob);
    assert.deepEqual([byId.status, byId.body.code], [404, 'NET_NOT_FOUND']);
    const inShop = await call('GET', '/v1/networks/n1?project=shop', bob);
    assert.deepEqual([inShop.status, inShop.body.code], [403, 'ACCESS_DENIED']);
    assert.match(inShop.body.message as string, /bob lacks permission network\.read on project shop/);
    const sneaky = await call('POST', '/v1/networks', bob, { name: 'n2', subnet: '10.92.0.0/24', project: 'shop' });
    assert.equal(sneaky.status, 403);
    assert.equal((await cluster.db.selectFrom('networks').select('id').where('name', '=', 'n2').execute()).length, 0);
    const listed = await call('GET', '/v1/networks', bob);
    assert.deepEqual(listed.body, [], 'a list without a project shows only what bob may see');
    // The project is read where the route declares it (here the body): a ?project= of bob's own
    // project next to it authorizes nothing.
    const smuggled = await call('POST', '/v1/networks?project=web', bob, { name: 'n3', subnet: '10.95.0.0/24', project: 'shop' });
    assert.deepEqual([smuggled.status, smuggled.body.code], [403, 'ACCESS_DENIED']);
    const defaulted = await call('POST', '/v1/networks?project=web', bob, { name: 'n4', subnet: '10.96.0.0/24' });
    assert.deepEqual([defaulted.status, defaulted.body.code], [403, 'ACCESS_DENIED'], 'no body project is the default project, where bob holds nothing');
    assert.equal((await cluster.db.selectFrom('networks').select('id').where('name', 'in', ['n3', 'n4']).execute()).length, 0);
  });

  it('keeps agent and user credentials apart', async () => {
    const alice = await tokenFor('alice');
    const report = await call('POST', '/v1/hosts/h1/report', alice, { vms: [], full: false });
    assert.equal(report.status, 401, 'a user token never works on agent routes');
    const agentToken = `nubis_agent_${'h1'.padEnd(32, 'x')}`;
    assert.equal((await call('GET', '/v1/vms', agentToken)).status, 401, 'a host credential never works on user routes');
    assert.equal((await call('POST', '/v1/hosts/h1/report', agentToken, { vms: [], full: false })).status, 204);
  });

  it('never removes the last platform admin', async () => {
    const revoke = await call('DELETE', '/v1/access/grants?user=admin&role=admin', cluster.token);
    assert.deepEqual([revoke.status, revoke.body.code], [409, 'ACCESS_LAST_ADMIN']);
    const remove = await call('DELETE', '/v1/users/admin', cluster.token);
    assert.deepEqual([remove.status, remove.body.code], [409, 'ACCESS_LAST_ADMIN']);
    assert.equal((await call('GET', '/v1/auth/whoami', cluster.token)).status, 200);
  });

  it('holds a quota under parallel creates, and says which quota, its limit and its use', async () => {
    assert.equal((await call('PUT', '/v1/projects/web/quota', cluster.token, { vms: 3, cpus: 64 })).status, 200);
    const alice = await tokenFor('alice');
    const answers = await Promise.all(
      Array.from({ length: 12 }, (_, i) => call('POST', '/v1/vms', alice, { name: `q${i}`, image: 'tiny', project: 'web', waitReady: false })),
    );
    const accepted = answers.filter((a) => a.status === 202);
    const refused = answers.filter((a) => a.status === 409);
    assert.equal(accepted.length, 3, JSON.stringify(answers.map((a) => [a.status, a.body.code])));
    assert.equal(refused.length, 9);
    for (const r of refused) {
      assert.equal(r.body.code, 'QUOTA_EXCEEDED');
      assert.match(r.body.message as string, /exceed its vms quota: limit 3 VMs, in use 3, this request adds 1/);
    }
    for (const a of accepted) await cluster.services.operations.wait((a.body.operation as { id: string }).id);
    const web = await cluster.db.selectFrom('projects').select('id').where('name', '=', 'web').executeTakeFirstOrThrow();
    assert.equal((await cluster.db.selectFrom('vms').select('id').where('project_id', '=', web.id).execute()).length, 3);
    assert.equal((await cluster.db.selectFrom('nics').select('id').execute()).length, 0, 'refused creates left no address behind');
    const shown = await call('GET', '/v1/projects/web', alice);
    assert.deepEqual((shown.body.quota as Record<string, unknown>).vms, { limit: 3, used: 3 });
    assert.deepEqual((shown.body.quota as Record<string, unknown>).memoryMb, { used: 3 * 256 });
    const networks = await Promise.all(
      ['a', 'b', 'c', 'd'].map(async (n, i) => {
        if (i === 0) await call('PUT', '/v1/projects/web/quota', cluster.token, { networks: 2 });
        return call('POST', '/v1/networks', alice, { name: `nq-${n}`, subnet: `10.93.${i}.0/24`, project: 'web' });
      }),
    );
    assert.equal(networks.filter((n) => n.status === 201).length, 2);
  });

  it('closes an open event stream the moment its token is revoked, or expires', async () => {
    const release = cluster.agent('h1').hold('createVm');
    const alice = await tokenFor('alice');
    const created = await call('POST', '/v1/vms', cluster.token, { name: 'slow', image: 'tiny', project: 'shop', waitReady: false });
    const operation = (created.body.operation as { id: string }).id;
    const carol = await cluster.services.access.tokens.create(
      {
        userId: (await cluster.services.access.users.row('carol')).id,
        userName: 'carol',
        tokenId: '',
        tokenName: '',
        grants: [],
        tokenProjectId: null,
        tokenRole: null,
      },
      { name: 'stream' },
    );
    const address = await app.listen({ host: '127.0.0.1', port: 0 });
    try {
      const denied = await fetch(`${address}/v1/operations/${operation}/events`, { headers: { authorization: `Bearer ${alice}` } });
      assert.equal(denied.status, 403, 'alice has no role in shop');
      const response = await fetch(`${address}/v1/operations/${operation}/events`, { headers: { authorization: `Bearer ${carol.secret}` } });
      assert.equal(response.status, 200);
      const reader = response.body!.getReader();
      const ended = (async () => {
        for (;;) if ((await reader.read()).done) return 'closed';
      })();
      assert.equal(cluster.services.access.liveConnections, 1);
      assert.equal((await call('DELETE', `/v1/tokens/${carol.token.id}`, carol.secret)).status, 204);
      assert.equal(await ended, 'closed');
      assert.equal(cluster.services.access.liveConnections, 0);
      // A token that expires while its stream is open: the stream ends at the expiry.
      const shortLived = await tokenFor('carol', new Date(Date.now() + 1500));
      const expiring = await fetch(`${address}/v1/operations/${operation}/events`, { headers: { authorization: `Bearer ${shortLived}` } });
      assert.equal(expiring.status, 200);
      const opened = Date.now();
      const expiringReader = expiring.body!.getReader();
      while (!(await expiringReader.read()).done);
      assert.ok(Date.now() - opened < 10_000, 'closed at the expiry, not by the operation ending');
      assert.equal(cluster.services.access.liveConnections, 0);
    } finally {
      release();
      await cluster.services.operations.wait(operation);
    }
  });
});
