/**
 * Signing in through OpenID Connect, through the whole platform: a real provider
 * (test/helpers/oidc-provider.ts) is the issuer of a fake cluster; alice approves a device login
 * on the provider's pages, trades the ID token for a Nubis session, and acts with the roles her
 * groups hold, which the admin granted to the groups through the API. Revoking a group's binding
 * takes effect at once; tokens for another client, tampered tokens and takeovers of local users
 * are refused without leaving a user behind; and the real CLI signs in, keeps its credentials
 * 0600, and signs out.
 */
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import type { FastifyInstance } from 'fastify';
import { type FakeCluster, fakeCluster } from '../helpers/fake-cluster.ts';
import { startOidcProvider, type TestOidcProvider } from '../helpers/oidc-provider.ts';

const repoRoot = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const CLIENT_ID = 'nubis-cli';

type Answer = { status: number; body: Record<string, unknown> & { code?: string; message?: string } };

/** One request to `app` by `inject()`, with a bearer token when given. */
async function call(app: FastifyInstance, method: string, url: string, token: string | undefined, body?: unknown): Promise<Answer> {
  const response = await app.inject({
    method: method as 'GET',
    url,
    headers: { ...(token ? { authorization: `Bearer ${token}` } : {}), ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
    ...(body === undefined ? {} : { payload: JSON.stringify(body) }),
  });
  return { status: response.statusCode, body: response.body ? (response.json() as Answer['body']) : {} };
}

describe('signing in through OpenID Connect, through the whole platform', () => {
  let provider: TestOidcProvider | undefined;
  let cluster: FakeCluster | undefined;
  let app: FastifyInstance;
  /** Temp folders and CLI processes of the tests, removed and ended in `after` also when a test failed. */
  const folders: string[] = [];
  const children = new Set<ChildProcess>();

  const api = (method: string, url: string, token: string | undefined, body?: unknown) => call(app, method, url, token, body);
  const admin = () => cluster!.token;

  before(async () => {
    provider = await startOidcProvider({ clients: [CLIENT_ID, 'other-app'], groups: { alice: ['ops', 'web-devs'], carol: ['web-devs'] } });
    cluster = await fakeCluster(['h1'], { oidc: { issuer: provider.issuer, clientId: CLIENT_ID } });
    app = await cluster.app();
    for (const name of ['web', 'ops-tools']) assert.equal((await api('POST', '/v1/projects', admin(), { name })).status, 201);
    for (const grant of [
      { group: 'web-devs', role: 'member', project: 'web' },
      { group: 'ops', role: 'reader', project: 'ops-tools' },
    ]) {
      const granted = await api('POST', '/v1/access/grants', admin(), grant);
      assert.equal(granted.status, 204, JSON.stringify(granted.body));
    }
    assert.equal((await api('POST', '/v1/users', admin(), { name: 'bob', password: 'bob-password-1' })).status, 201);
  });

  after(async () => {
    for (const child of children) child.kill('SIGKILL');
    try {
      await cluster?.close();
    } finally {
      await provider?.close();
      for (const folder of folders) rmSync(folder, { recursive: true, force: true });
    }
  });

  /** A device login of `account` approved on the provider's pages, traded for an answer of POST /v1/auth/oidc. */
  async function signIn(account: string, clientId = CLIENT_ID): Promise<Answer> {
    const { idToken } = await provider!.login(account, clientId);
    return api('POST', '/v1/auth/oidc', undefined, { idToken });
  }

  /** The users of the platform by name, with their source. */
  async function users(): Promise<Record<string, unknown>> {
    const listed = await api('GET', '/v1/users', admin());
    assert.equal(listed.status, 200);
    return Object.fromEntries((listed.body as unknown as Array<{ name: string; source: string }>).map((user) => [user.name, user.source]));
  }

  const sessionCount = async () => (await cluster!.db.selectFrom('tokens').select('id').execute()).length;

  it("signs alice in with the provider's ID token, with the roles her groups hold", async () => {
    const { idToken } = await provider!.login('alice');
    const signedIn = await api('POST', '/v1/auth/oidc', undefined, { idToken });
    assert.equal(signedIn.status, 200, JSON.stringify(signedIn.body));
    const session = signedIn.body.secret as string;
    assert.deepEqual([(signedIn.body.token as { user: string }).user, (signedIn.body.token as { kind: string }).kind], ['alice', 'session']);

    const whoami = await api('GET', '/v1/auth/whoami', session);
    assert.equal(whoami.status, 200, JSON.stringify(whoami.body));
    assert.deepEqual([whoami.body.user, whoami.body.tokenKind], ['alice', 'session']);
    // The session ends no later than the ID token it was made from.
    const { exp } = JSON.parse(Buffer.from(idToken.split('.')[1], 'base64url').toString()) as { exp: number };
    const sessionEnds = Date.parse(whoami.body.expiresAt as string);
    assert.ok(
      sessionEnds > Date.now() && sessionEnds <= exp * 1000,
      `session until ${whoami.body.expiresAt}, ID token until ${new Date(exp * 1000).toISOString()}`,
    );
    const roles = [...(whoami.body.roles as Array<{ project: string }>)].sort((a, b) => a.project.localeCompare(b.project));
    assert.deepEqual(roles, [
      { role: 'reader', project: 'ops-tools', via: 'group:ops' },
      { role: 'member', project: 'web', via: 'group:web-devs' },
    ]);

    const inWeb = await api('POST', '/v1/networks', session, { name: 'alice-net', subnet: '10.71.0.0/24', project: 'web' });
    assert.equal(inWeb.status, 201, JSON.stringify(inWeb.body));
    const inOps = await api('POST', '/v1/networks', session, { name: 'alice-net', subnet: '10.72.0.0/24', project: 'ops-tools' });
    assert.deepEqual([inOps.status, inOps.body.code], [403, 'ACCESS_DENIED']);
    assert.match(inOps.body.message as string, /alice lacks permission network\.create on project ops-tools \(roles held there: reader\)/);

    assert.equal((await users()).alice, 'oidc');

    // A token alice makes carries her groups' roles, and ends no later than her session.
    const made = await api('POST', '/v1/tokens', session, { name: 'ci', project: 'web', role: 'member', expiresInSeconds: 30 * 86400 });
    assert.equal(made.status, 201, JSON.stringify(made.body));
    assert.ok(Date.parse((made.body.token as { expiresAt: string }).expiresAt) <= sessionEnds, 'not beyond the session');
    const byToken = await api('POST', '/v1/networks', made.body.secret as string, { name: 'ci-net', subnet: '10.75.0.0/24', project: 'web' });
    assert.equal(byToken.status, 201, JSON.stringify(byToken.body));
  });

  it("takes a revoked group binding away from alice's open session at once", async () => {
    const signedIn = await signIn('alice');
    assert.equal(signedIn.status, 200, JSON.stringify(signedIn.body));
    const session = signedIn.body.secret as string;
    assert.equal((await api('POST', '/v1/networks', session, { name: 'before-revoke', subnet: '10.73.0.0/24', project: 'web' })).status, 201);

    const revoked = await api('DELETE', '/v1/access/grants?group=web-devs&role=member&project=web', admin());
    assert.equal(revoked.status, 204, JSON.stringify(revoked.body));
    const denied = await api('POST', '/v1/networks', session, { name: 'after-revoke', subnet: '10.74.0.0/24', project: 'web' });
    assert.deepEqual([denied.status, denied.body.code], [403, 'ACCESS_DENIED']);
    assert.match(denied.body.message as string, /alice lacks permission network\.create on project web \(no role held there\)/);
    const whoami = await api('GET', '/v1/auth/whoami', session);
    assert.deepEqual(whoami.body.roles, [{ role: 'reader', project: 'ops-tools', via: 'group:ops' }]);
    // A second sign-in of the same identity is the same user, not a new one.
    assert.deepEqual(
      Object.keys(await users()).filter((name) => name === 'alice'),
      ['alice'],
    );
  });

  it('refuses an ID token for another client and a tampered one, and makes no user of them', async () => {
    const sessionsBefore = await sessionCount();
    const foreign = await signIn('carol', 'other-app');
    assert.deepEqual([foreign.status, foreign.body.code], [401, 'AUTH_OIDC_INVALID']);
    assert.match(foreign.body.message as string, /audience "other-app", not nubis-cli/);

    // What an attacker would change: a group the admin bound a role to, under the provider's signature.
    const { idToken } = await provider!.login('carol');
    const [header, payload, signature] = idToken.split('.');
    const claims = JSON.parse(Buffer.from(payload, 'base64url').toString()) as { groups: string[] };
    assert.deepEqual(claims.groups, ['web-devs']);
    const forged = Buffer.from(JSON.stringify({ ...claims, groups: ['ops'] })).toString('base64url');
    const tampered = await api('POST', '/v1/auth/oidc', undefined, { idToken: `${header}.${forged}.${signature}` });
    assert.deepEqual([tampered.status, tampered.body.code], [401, 'AUTH_OIDC_INVALID']);
    assert.match(tampered.body.message as string, /bad signature/);

    assert.equal((await users()).carol, undefined, 'no user carol');
    assert.equal(await sessionCount(), sessionsBefore, 'no session either');
    // The same token untampered is good: the signature alone made the difference.
    assert.equal((await api('POST', '/v1/auth/oidc', undefined, { idToken })).status, 200);
  });

  it('answers 422 AUTH_OIDC_NOT_CONFIGURED on a platform without OpenID Connect', async () => {
    const { idToken } = await provider!.login('alice');
    const plain = await fakeCluster();
    try {
      const answer = await call(await plain.app(), 'POST', '/v1/auth/oidc', undefined, { idToken });
      assert.deepEqual([answer.status, answer.body.code], [422, 'AUTH_OIDC_NOT_CONFIGURED']);
      assert.match(answer.body.message as string, /--oidc-issuer/);
      assert.deepEqual(
        (await plain.db.selectFrom('users').select('name').execute()).map((user) => user.name),
        ['admin'],
      );
    } finally {
      await plain.close();
    }
  });

  it('never lets an OpenID identity take over the local user bob, whatever the case of its name', async () => {
    const sessionsBefore = await sessionCount();
    for (const account of ['bob', 'BOB']) {
      const takeover = await signIn(account);
      assert.deepEqual([takeover.status, takeover.body.code], [401, 'AUTH_OIDC_INVALID'], account);
      assert.match(takeover.body.message as string, /A local user named bob exists; an OpenID Connect identity cannot take it over/);
    }
    assert.equal((await users()).bob, 'local');
    assert.equal(await sessionCount(), sessionsBefore, 'no session for the identity');
    assert.equal((await api('POST', '/v1/auth/login', undefined, { user: 'bob', password: 'bob-password-1' })).status, 200, 'bob still signs in');
  });

  it('signs in with the real CLI (device flow), keeps the session 0600, and signs out', { timeout: 60_000 }, async () => {
    const folder = mkdtempSync(join(tmpdir(), `nubis-oidc-cli-${process.pid}-`));
    folders.push(folder);
    const config = join(folder, 'config');
    // An empty data folder: without credentials the CLI finds no API, never one of this machine.
    const data = join(folder, 'data');
    mkdirSync(data);
    const url = await app.listen({ host: '127.0.0.1', port: 0 });
    const nubis = (args: string[], onStderr?: (text: string, child: ChildProcess) => void) =>
      runCli(args, { NUBIS_CONFIG: config, NUBIS_DATA: data }, children, onStderr);

    // What a person does: reads the prompt, opens the page and types the code. A failed approval
    // ends the CLI at once, which would otherwise poll until the code expires.
    let approval: Promise<unknown> | undefined;
    const login = await nubis(['--url', url, 'login', '--oidc-issuer', provider!.issuer, '--oidc-client-id', CLIENT_ID], (stderr, child) => {
      const prompt = /Open (\S+) and enter the code (\S+)/.exec(stderr);
      if (prompt && !approval)
        approval = provider!.approveDeviceCode({ verificationUri: prompt[1], userCode: prompt[2] }, 'alice').then(
          () => undefined,
          (error: unknown) => {
            child.kill();
            return error;
          },
        );
    });
    assert.ok(approval, `no prompt on stderr: ${login.stderr}`);
    const approvalError = await approval;
    if (approvalError) throw approvalError;
    assert.equal(login.code, 0, login.stderr);
    assert.match(login.stdout, /Signed in as alice until /);
    const credentials = join(config, 'credentials.json');
    assert.equal(statSync(credentials).mode & 0o777, 0o600);
    assert.equal(statSync(config).mode & 0o777, 0o700);
    const { token } = JSON.parse(readFileSync(credentials, 'utf8')) as { token: string };

    const whoami = await nubis(['whoami', '--json']);
    assert.equal(whoami.code, 0, whoami.stderr);
    assert.deepEqual([JSON.parse(whoami.stdout).user, JSON.parse(whoami.stdout).tokenKind], ['alice', 'session']);

    const logout = await nubis(['logout']);
    assert.equal(logout.code, 0, logout.stderr);
    assert.ok(!existsSync(credentials), 'the credentials file is gone');
    const signedOut = await nubis(['whoami', '--json']);
    assert.notEqual(signedOut.code, 0, signedOut.stdout);
    assert.equal(JSON.parse(signedOut.stderr).code, 'CLI_NOT_CONFIGURED');
    // The session itself was revoked at the control plane, not only forgotten by the CLI.
    const stale = await nubis(['--url', url, '--token', token, 'whoami', '--json']);
    assert.notEqual(stale.code, 0, stale.stdout);
    assert.equal(JSON.parse(stale.stderr).code, 'AUTH_TOKEN_REVOKED');
  });
});

/**
 * Runs `node bin/nubis.mjs ARGS` with `env` and none of the caller's Nubis settings; `onStderr`
 * sees stderr so far (and the process) each time more arrives. The process is in `children` while it runs.
 */
function runCli(
  args: string[],
  env: Record<string, string>,
  children: Set<ChildProcess>,
  onStderr?: (text: string, child: ChildProcess) => void,
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const inherited = { ...process.env };
  for (const name of ['NUBIS_URL', 'NUBIS_TOKEN', 'NUBIS_CA', 'NODE_TEST_CONTEXT']) delete inherited[name];
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [join(repoRoot, 'bin/nubis.mjs'), ...args], { env: { ...inherited, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    children.add(child);
    let stdout = '';
    let stderr = '';
    child.stdout!.on('data', (chunk) => (stdout += chunk));
    child.stderr!.on('data', (chunk) => {
      stderr += chunk;
      onStderr?.(stderr, child);
    });
    child.on('error', reject);
    child.on('close', (code) => {
      children.delete(child);
      resolve({ code, stdout, stderr });
    });
  });
}
