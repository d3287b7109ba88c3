/**
 * The web console's session as a browser meets it, through the real API over a fake cluster: the
 * cookie's flags, the cookie accepted in place of a bearer token, a cookie-authenticated change
 * refused unless it comes from this origin (CSRF), sign-out that revokes the session and clears
 * the cookie, a token exchanged for a session with the token's limits, and the console's files
 * served with their security headers and caching.
 */
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { FastifyInstance } from 'fastify';
import { Agent, fetch } from 'undici';
import { buildApp } from '../../src/api/app.ts';
import { prepareApiTls } from '../../src/app/tls.ts';
import { type FakeCluster, fakeCluster } from '../helpers/fake-cluster.ts';

// light-my-request's requests come to http://localhost:80.
const OWN_ORIGIN = 'http://localhost:80';

describe('web console sessions and serving', () => {
  let cluster: FakeCluster;
  let app: FastifyInstance;

  async function call(method: string, url: string, options: { cookie?: string; origin?: string; token?: string; body?: unknown } = {}) {
    const response = await app.inject({
      method: method as 'GET',
      url,
      headers: {
        ...(options.cookie ? { cookie: `nubis_session=${options.cookie}` } : {}),
        ...(options.origin ? { origin: options.origin } : {}),
        ...(options.token ? { authorization: `Bearer ${options.token}` } : {}),
        ...(options.body === undefined ? {} : { 'content-type': 'application/json' }),
      },
      ...(options.body === undefined ? {} : { payload: JSON.stringify(options.body) }),
    });
    const json = String(response.headers['content-type']).startsWith('application/json') && response.body !== '';
    return { response, status: response.statusCode, body: (json ? response.json() : {}) as Record<string, unknown> };
  }

  /** Signs alice in as the console does; returns the cookie's secret and its Set-Cookie line. */
  async function signIn(): Promise<{ secret: string; setCookie: string }> {
    const { response, status, body } = await call('POST', '/v1/auth/session', { origin: OWN_ORIGIN, body: { user: 'alice', password: 'alice-password-1' } });
    assert.equal(status, 200, JSON.stringify(body));
    const setCookie = String(response.headers['set-cookie']);
    const secret = /^nubis_session=([^;]+)/.exec(setCookie)?.[1];
    assert.ok(secret, setCookie);
    return { secret, setCookie };
  }

  before(async () => {
    cluster = await fakeCluster(['h1']);
    app = await cluster.app();
    assert.equal((await call('POST', '/v1/projects', { token: cluster.token, body: { name: 'web' } })).status, 201);
    assert.equal((await call('POST', '/v1/users', { token: cluster.token, body: { name: 'alice', password: 'alice-password-1' } })).status, 201);
    assert.equal((await call('POST', '/v1/access/grants', { token: cluster.token, body: { user: 'alice', role: 'owner', project: 'web' } })).status, 204);
  });
  after(() => cluster.close());

  it('signs in into an HttpOnly, SameSite=Strict cookie for the whole origin, and answers no secret', async () => {
    const { response, body } = await call('POST', '/v1/auth/session', { origin: OWN_ORIGIN, body: { user: 'alice', password: 'alice-password-1' } });
    assert.deepEqual(Object.keys(body).sort(), ['expiresAt', 'user']);
    const setCookie = String(response.headers['set-cookie']);
    assert.match(setCookie, /^nubis_session=nubis_tok_[^;]+;/);
    assert.match(setCookie, /; HttpOnly/);
    assert.match(setCookie, /; SameSite=Strict/);
    assert.match(setCookie, /; Path=\//);
    assert.match(setCookie, /; Expires=/);
    assert.doesNotMatch(setCookie, /; Secure/, 'plain HTTP: a Secure cookie would never come back');
    const wrong = await call('POST', '/v1/auth/session', { origin: OWN_ORIGIN, body: { user: 'alice', password: 'wrong-password' } });
    assert.deepEqual([wrong.status, wrong.body.code, wrong.response.headers['set-cookie']], [401, 'AUTH_LOGIN_FAILED', undefined]);
  });

  it('refuses a sign-in posted from another origin (login CSRF)', async () => {
    const foreign = await call('POST', '/v1/auth/session', { origin: 'https://evil.example', body: { user: 'alice', password: 'alice-password-1' } });
    assert.deepEqual([foreign.status, foreign.body.code, foreign.response.headers['set-cookie']], [403, 'AUTH_ORIGIN_REFUSED', undefined]);
  });

  it('accepts the cookie where there is no Authorization header, and judges a request with one by that header alone', async () => {
    const { secret } = await signIn();
    const whoami = await call('GET', '/v1/auth/whoami', { cookie: secret });
    assert.deepEqual([whoami.status, whoami.body.user, whoami.body.tokenKind], [200, 'alice', 'session']);
    const list = await call('GET', '/v1/vms?project=web', { cookie: secret });
    assert.equal(list.status, 200);
    const wrongBearer = await call('GET', '/v1/auth/whoami', { cookie: secret, token: 'nubis_tok_not-a-token' });
    assert.equal(wrongBearer.status, 401);
    assert.equal((await call('GET', '/v1/auth/whoami')).status, 401);
  });

  it('refuses a change with the cookie unless the request comes from this origin (CSRF), and changes nothing then', async () => {
    const { secret } = await signIn();
    const body = { name: 'net1', subnet: '10.91.0.0/24', project: 'web' };
    const withoutOrigin = await call('POST', '/v1/networks', { cookie: secret, body });
    assert.deepEqual([withoutOrigin.status, withoutOrigin.body.code], [403, 'AUTH_ORIGIN_REFUSED']);
    const foreign = await call('POST', '/v1/networks', { cookie: secret, origin: 'http://localhost:81', body });
    assert.deepEqual([foreign.status, foreign.body.code], [403, 'AUTH_ORIGIN_REFUSED']);
    assert.deepEqual((await call('GET', '/v1/networks?project=web', { cookie: secret })).body, [], 'nothing was created');
    const own = await call('POST', '/v1/networks', { cookie: secret, origin: OWN_ORIGIN, body });
    assert.equal(own.status, 201, JSON.stringify(own.body));
    // A bearer token is not sent by a browser on its own: no Origin needed.
    const byToken = await call('DELETE', '/v1/networks/net1?project=web', { token: cluster.token });
    assert.ok(byToken.status < 300, JSON.stringify(byToken.body));
    const audit = await call('GET', '/v1/audit?limit=50', { token: cluster.token });
    const entries = audit.body as unknown as Array<{ user?: string; route: string; result: string; code?: string }>;
    const refusals = entries.filter((entry) => entry.user === 'alice' && entry.route === '/v1/networks' && entry.result === 'denied');
    assert.deepEqual(
      refusals.map((entry) => entry.code),
      ['AUTH_ORIGIN_REFUSED', 'AUTH_ORIGIN_REFUSED'],
      'both refusals are audited',
    );
  });

  it('signs out: the session is revoked and the cookie cleared', async () => {
    const { secret } = await signIn();
    const foreign = await call('POST', '/v1/auth/logout', { cookie: secret, origin: 'https://evil.example' });
    assert.equal(foreign.status, 403, 'another site cannot sign the user out either');
    const out = await call('POST', '/v1/auth/logout', { cookie: secret, origin: OWN_ORIGIN });
    assert.equal(out.status, 204);
    const cleared = String(out.response.headers['set-cookie']);
    assert.match(cleared, /^nubis_session=;/);
    assert.match(cleared, /Expires=Thu, 01 Jan 1970/);
    const after = await call('GET', '/v1/auth/whoami', { cookie: secret });
    assert.deepEqual([after.status, after.body.code], [401, 'AUTH_TOKEN_REVOKED']);
  });

  it('exchanges a bearer token for a cookie session with the same limits; signing out of it leaves the token working', async () => {
    const alice = await call('POST', '/v1/auth/login', { body: { user: 'alice', password: 'alice-password-1' } });
    const limited = await call('POST', '/v1/tokens', { token: alice.body.secret as string, body: { name: 'ci', project: 'web', role: 'reader' } });
    assert.equal(limited.status, 201, JSON.stringify(limited.body));
    const apiToken = limited.body.secret as string;
    const exchanged = await call('POST', '/v1/auth/session/token', { token: apiToken, origin: OWN_ORIGIN });
    assert.equal(exchanged.status, 200, JSON.stringify(exchanged.body));
    const secret = /^nubis_session=([^;]+)/.exec(String(exchanged.response.headers['set-cookie']))?.[1];
    assert.ok(secret && secret !== apiToken, 'a new session secret, not the token itself');
    const whoami = await call('GET', '/v1/auth/whoami', { cookie: secret });
    assert.deepEqual([whoami.body.tokenKind, whoami.body.limitedToProject, whoami.body.limitedToRole], ['session', 'web', 'reader']);
    const create = await call('POST', '/v1/networks', { cookie: secret, origin: OWN_ORIGIN, body: { name: 'net2', subnet: '10.92.0.0/24', project: 'web' } });
    assert.equal(create.status, 403, 'a reader session cannot create');
    assert.equal((await call('POST', '/v1/auth/logout', { cookie: secret, origin: OWN_ORIGIN })).status, 204);
    assert.equal((await call('GET', '/v1/auth/whoami', { token: apiToken })).status, 200, 'the API token still works');
    const byCookie = await call('POST', '/v1/auth/session/token', { cookie: (await signIn()).secret, origin: OWN_ORIGIN });
    assert.equal(byCookie.status, 400, 'only a bearer token is exchanged');
  });

  it('names the refused field of a request in details.field, for the console to show beside it', async () => {
    const { secret } = await signIn();
    const bad = await call('POST', '/v1/vms', { cookie: secret, origin: OWN_ORIGIN, body: { name: 'Web_1', image: 'tiny', project: 'web' } });
    assert.deepEqual([bad.status, bad.body.code, bad.body.details], [400, 'VALIDATION_FAILED', { field: 'body.name' }]);
    const missing = await call('POST', '/v1/vms', { cookie: secret, origin: OWN_ORIGIN, body: { image: 'tiny', project: 'web' } });
    assert.deepEqual(missing.body.details, { field: 'body.name' });
  });
});

describe('web console files', () => {
  let cluster: FakeCluster;
  let app: FastifyInstance;
  let missingApp: FastifyInstance;
  const dist = mkdtempSync(join(tmpdir(), `nubis-web-dist-${process.pid}-`));

  before(async () => {
    mkdirSync(join(dist, 'assets'));
    writeFileSync(join(dist, 'index.html'), '<!doctype html><script type="module" src="/assets/app-3f9c1a.js"></script>');
    writeFileSync(join(dist, 'assets', 'app-3f9c1a.js'), 'console.log("console")');
    cluster = await fakeCluster([]);
    app = await buildApp(cluster.services, { webConsoleRoot: dist });
    missingApp = await buildApp(cluster.services, { webConsoleRoot: join(dist, 'not-built') });
  });
  after(async () => {
    await app.close();
    await missingApp.close();
    await cluster.close();
    rmSync(dist, { recursive: true, force: true });
  });

  it('serves index.html at / and for every page path, never cached, with a policy that allows no inline script and no framing', async () => {
    for (const url of ['/', '/vms/default/web1', '/vms/new?x=1']) {
      const page = await app.inject({ url, headers: { host: 'nubis.test:8600' } });
      assert.equal(page.statusCode, 200, url);
      assert.match(page.body, /assets\/app-3f9c1a\.js/);
      assert.match(String(page.headers['content-type']), /^text\/html/);
      assert.equal(page.headers['cache-control'], 'no-cache');
      const policy = String(page.headers['content-security-policy']);
      assert.match(policy, /script-src 'self'(;|$)/);
      assert.doesNotMatch(policy, /unsafe-inline|unsafe-eval/);
      assert.match(policy, /connect-src 'self' ws:\/\/nubis\.test:8600/);
      assert.match(policy, /frame-ancestors 'none'/);
      assert.equal(page.headers['x-content-type-options'], 'nosniff');
      assert.equal(page.headers['x-frame-options'], 'DENY');
    }
  });

  it('lets browsers keep hashed assets for a year, and keeps API paths the API answers', async () => {
    const asset = await app.inject({ url: '/assets/app-3f9c1a.js' });
    assert.equal(asset.statusCode, 200);
    assert.match(String(asset.headers['cache-control']), /max-age=31536000.*immutable/);
    assert.match(String(asset.headers['content-type']), /javascript/);
    const api = await app.inject({ url: '/v1/no-such-route' });
    assert.deepEqual([api.statusCode, api.json().code], [404, 'ROUTE_NOT_FOUND']);
    assert.equal(api.headers['x-content-type-options'], 'nosniff', 'the API too');
    const outside = await app.inject({ url: '/../../etc/passwd' });
    assert.doesNotMatch(outside.body, /root:/);
    const missingFile = await app.inject({ url: '/favicon.ico' });
    assert.deepEqual([missingFile.statusCode, missingFile.headers['content-type']], [404, 'text/plain; charset=utf-8'], 'a missing file is no page');
    const post = await app.inject({ method: 'POST', url: '/vms/new' });
    assert.equal(post.statusCode, 404);
  });

  it('says how to build the console when it is not built', async () => {
    const page = await missingApp.inject({ url: '/' });
    assert.equal(page.statusCode, 503);
    assert.match(page.body, /npm run build:web/);
  });
});

describe('web console session over HTTPS', () => {
  let cluster: FakeCluster;
  let app: FastifyInstance;
  let origin: string;
  let dispatcher: Agent;

  before(async () => {
    cluster = await fakeCluster([]);
    await cluster.services.access.users.create('alice', 'alice-password-1');
    const tls = await prepareApiTls(cluster.dir, { selfSigned: true }, '127.0.0.1');
    app = await buildApp(cluster.services, { https: tls.https });
    await app.listen({ host: '127.0.0.1', port: 0 });
    origin = `https://127.0.0.1:${(app.server.address() as AddressInfo).port}`;
    dispatcher = new Agent({ connect: { ca: readFileSync(tls.caPath!) } });
  });
  after(async () => {
    await dispatcher.close();
    await app.close();
    await cluster.close();
  });

  it('sets a Secure __Host- cookie, and takes only that name back over TLS', async () => {
    const signIn = await fetch(`${origin}/v1/auth/session`, {
      dispatcher,
      method: 'POST',
      headers: { origin, 'content-type': 'application/json' },
      body: JSON.stringify({ user: 'alice', password: 'alice-password-1' }),
    });
    assert.equal(signIn.status, 200);
    const setCookie = signIn.headers.get('set-cookie') ?? '';
    assert.match(setCookie, /^__Host-nubis_session=nubis_tok_[^;]+;/);
    for (const flag of ['; Secure', '; HttpOnly', '; SameSite=Strict', '; Path=/']) assert.ok(setCookie.includes(flag), `${flag} in ${setCookie}`);
    assert.doesNotMatch(setCookie, /Domain=/i, '__Host- cookies have no Domain');
    const secret = /^__Host-nubis_session=([^;]+)/.exec(setCookie)![1];
    const whoami = await fetch(`${origin}/v1/auth/whoami`, { dispatcher, headers: { cookie: `__Host-nubis_session=${secret}` } });
    assert.equal(whoami.status, 200);
    const plainName = await fetch(`${origin}/v1/auth/whoami`, { dispatcher, headers: { cookie: `nubis_session=${secret}` } });
    assert.equal(plainName.status, 401, 'over TLS only the __Host- cookie counts');
    const page = await fetch(`${origin}/vms/new`, { dispatcher });
    assert.match(page.headers.get('content-security-policy') ?? '', /connect-src 'self' wss:\/\/127\.0\.0\.1:\d+/);
  });
});
