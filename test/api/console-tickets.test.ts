/**
 * Console tickets over the real API (listening, so that WebSockets upgrade) and fake agents,
 * whose streams echo: a ticket opens one console once, for its VM, its token and its kind; every
 * other use is refused with the reason, before the upgrade; the display's one-time password goes
 * to the agent; an open console closes 4401 when its token is revoked and 4000 "moved" when its
 * VM migrates; neither tickets nor passwords reach the audit log.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { FastifyInstance } from 'fastify';
import WebSocket from 'ws';
import type { Principal } from '../../src/access/authorize.ts';
import { type FakeCluster, fakeCluster } from '../helpers/fake-cluster.ts';

type Opened = { socket: WebSocket } | { status: number; body: { code: string; message: string } };

/** Opens a WebSocket; resolves with it, or with the HTTP refusal of the upgrade. */
function open(url: string, headers: Record<string, string> = {}): Promise<Opened> {
  return new Promise((resolve, reject) => {
    const socket = new WebSocket(url, { headers });
    socket.on('open', () => resolve({ socket }));
    socket.on('unexpected-response', (_request, response) => {
      let text = '';
      response.on('data', (chunk: Buffer) => (text += chunk.toString()));
      response.on('end', () => resolve({ status: response.statusCode ?? 0, body: JSON.parse(text) }));
    });
    socket.on('error', reject);
  });
}

function refusal(opened: Opened): { status: number; code: string; message: string } {
  assert.ok('status' in opened, 'the upgrade should have been refused');
  return { status: opened.status, code: opened.body.code, message: opened.body.message };
}

function closed(socket: WebSocket): Promise<[number, string]> {
  return new Promise((resolve) => socket.on('close', (code, reason) => resolve([code, reason.toString()])));
}

/** Sends `text` and resolves with the first frame back (the fake agent echoes). */
function echo(socket: WebSocket, text: string): Promise<string> {
  return new Promise((resolve) => {
    socket.once('message', (data: Buffer) => resolve(data.toString()));
    socket.send(Buffer.from(text));
  });
}

describe('console tickets', () => {
  let cluster: FakeCluster;
  let app: FastifyInstance;
  let base: string;
  const users = new Map<string, string>();

  before(async () => {
    cluster = await fakeCluster(['h1', 'h2']);
    const { services } = cluster;
    await services.networks.create({ name: 'n1', subnet: '10.72.0.0/24', dhcp: false, nat: false });
    for (const name of ['vm1', 'vm2']) {
      const created = await services.vms.create({ name, image: 'tiny', cpus: 1, memoryMb: 128, host: 'h1', networks: [{ network: 'n1' }], waitReady: false });
      await services.operations.wait(created.id);
    }
    for (const [name, role] of [
      ['viewer', 'console'],
      ['other', 'console'],
      ['looker', 'reader'],
    ]) {
      const user = await services.access.users.create(name, 'console-password-1');
      users.set(name, (await services.access.users.row(user.name)).id);
      await services.access.roles.grant({ type: 'user', id: users.get(name)!, name }, role, 'prj-1');
    }
    app = await cluster.app();
    const address = await app.listen({ host: '127.0.0.1', port: 0 });
    base = address.replace('http', 'ws');
  });
  after(() => cluster.close());

  async function tokenOf(user: string): Promise<{ secret: string; id: string }> {
    const owner: Principal = { userId: users.get(user)!, userName: user, tokenId: '', tokenName: '', grants: [], tokenProjectId: null, tokenRole: null };
    const made = await cluster.services.access.tokens.create(owner, { name: `s-${Math.random().toString(36).slice(2)}`, kind: 'session' });
    return { secret: made.secret, id: made.token.id };
  }

  async function ticket(token: string, vm: string, kind: 'vnc' | 'serial') {
    const response = await app.inject({
      method: 'POST',
      url: `/v1/vms/${vm}/console-ticket`,
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
      payload: JSON.stringify({ kind }),
    });
    return { status: response.statusCode, body: response.json() as { ticket: string; expiresAt: string; path: string; password?: string; code?: string } };
  }

  it('opens the serial console once with a ticket, within 30 s, and refuses it the second time', async () => {
    const { secret } = await tokenOf('viewer');
    const issued = await ticket(secret, 'vm1', 'serial');
    assert.equal(issued.status, 201, JSON.stringify(issued.body));
    assert.match(issued.body.ticket, /^nubis_ctk_[A-Za-z0-9_-]{43}$/, '256 random bits');
    const lifetimeMs = new Date(issued.body.expiresAt).getTime() - Date.now();
    assert.ok(lifetimeMs > 0 && lifetimeMs <= 30_000, `valid at most 30 s (${lifetimeMs} ms)`);
    assert.equal(issued.body.password, undefined, 'no VNC password for the serial console');
    const first = await open(`${base}${issued.body.path}`);
    assert.ok('socket' in first);
    assert.equal(await echo(first.socket, 'echo hi\n'), 'echo hi\n', 'bytes reach the agent and come back');
    const again = refusal(await open(`${base}${issued.body.path}`));
    assert.deepEqual([again.status, again.code], [401, 'AUTH_TICKET_INVALID']);
    assert.match(again.message, /already used/);
    first.socket.close();
  });

  it('hands the one-time VNC password of a vnc ticket to the agent, and the screen needs a ticket', async () => {
    const { secret } = await tokenOf('viewer');
    const issued = await ticket(secret, 'vm1', 'vnc');
    assert.match(issued.body.password ?? '', /^[A-Za-z0-9]{8}$/);
    assert.match(issued.body.path, /^\/v1\/vms\/vm-[^/]+\/vnc\?ticket=/);
    const before = cluster.agent('h1').callsOf('openStream').length;
    const opened = await open(`${base}${issued.body.path}`, { origin: base.replace('ws', 'http') });
    assert.ok('socket' in opened, "a page of the API's own origin may open it");
    const [kind, , options] = cluster.agent('h1').callsOf('openStream')[before] as [string, string, { vncPassword?: string }];
    assert.deepEqual([kind, options.vncPassword], ['vnc', issued.body.password]);
    assert.equal(await echo(opened.socket, 'RFB 003.008\n'), 'RFB 003.008\n');
    opened.socket.close();
    const bearerOnly = refusal(await open(`${base}/v1/vms/vm1/vnc`, { authorization: `Bearer ${secret}` }));
    assert.deepEqual([bearerOnly.status, bearerOnly.code], [401, 'AUTH_REQUIRED']);
    assert.match(bearerOnly.message, /console ticket/);
    const serial = await ticket(secret, 'vm1', 'serial');
    const wrongKind = refusal(await open(`${base}/v1/vms/vm1/vnc?ticket=${serial.body.ticket}`));
    assert.deepEqual([wrongKind.status, wrongKind.code], [401, 'AUTH_TICKET_INVALID']);
    assert.match(wrongKind.message, /for the serial console, not the vnc console/);
  });

  it('refuses a ticket for another VM, with another token or user, of a revoked token, and a foreign origin', async () => {
    const viewer = await tokenOf('viewer');
    const forVm1 = await ticket(viewer.secret, 'vm1', 'serial');
    const otherVm = refusal(await open(`${base}/v1/vms/vm2/console?ticket=${forVm1.body.ticket}`));
    assert.deepEqual([otherVm.status, otherVm.code], [403, 'ACCESS_DENIED']);
    assert.match(otherVm.message, /another VM than vm2/);

    const secondToken = await tokenOf('viewer');
    const byToken = await ticket(viewer.secret, 'vm1', 'serial');
    const otherToken = refusal(await open(`${base}${byToken.body.path}`, { authorization: `Bearer ${secondToken.secret}` }));
    assert.deepEqual([otherToken.status, otherToken.code], [403, 'ACCESS_DENIED']);
    assert.match(otherToken.message, /issued to another token/);
    const byUser = await ticket(viewer.secret, 'vm1', 'serial');
    const otherUser = refusal(await open(`${base}${byUser.body.path}`, { authorization: `Bearer ${(await tokenOf('other')).secret}` }));
    assert.match(otherUser.message, /issued to another user/);

    const doomed = await tokenOf('viewer');
    const beforeRevoke = await ticket(doomed.secret, 'vm1', 'serial');
    await cluster.services.access.tokens.revoke([doomed.id]);
    const revoked = refusal(await open(`${base}${beforeRevoke.body.path}`));
    assert.deepEqual([revoked.status, revoked.code], [401, 'AUTH_TOKEN_REVOKED']);

    const foreign = await ticket(viewer.secret, 'vm1', 'vnc');
    const fromElsewhere = refusal(await open(`${base}${foreign.body.path}`, { origin: 'https://evil.example' }));
    assert.deepEqual([fromElsewhere.status, fromElsewhere.code], [403, 'AUTH_FORBIDDEN']);
    assert.match(fromElsewhere.message, /evil\.example/);

    const unknown = refusal(await open(`${base}/v1/vms/vm1/console?ticket=nubis_ctk_made-up`));
    assert.deepEqual([unknown.status, unknown.code], [401, 'AUTH_TICKET_INVALID']);
  });

  it('gives no ticket without vm.console, and a ticket stops working when vm.console is taken away', async () => {
    const looker = await tokenOf('looker');
    const denied = await ticket(looker.secret, 'vm1', 'vnc');
    assert.equal(denied.status, 403);
    assert.match(JSON.stringify(denied.body), /lacks permission vm\.console/);
    const other = await tokenOf('other');
    const issued = await ticket(other.secret, 'vm1', 'serial');
    await cluster.services.access.roles.revoke({ type: 'user', id: users.get('other')!, name: 'other' }, 'console', 'prj-1');
    const refused = refusal(await open(`${base}${issued.body.path}`));
    assert.deepEqual([refused.status, refused.code], [403, 'ACCESS_DENIED']);
    assert.match(refused.message, /other lacks permission vm\.console/);
  });

  it('closes an open console with 4401 when its token is revoked', async () => {
    const token = await tokenOf('viewer');
    const issued = await ticket(token.secret, 'vm1', 'vnc');
    const opened = await open(`${base}${issued.body.path}`);
    assert.ok('socket' in opened);
    const ending = closed(opened.socket);
    await cluster.services.access.tokens.revoke([token.id]);
    const [code, reason] = await ending;
    assert.equal(code, 4401);
    assert.match(reason, /revoked/);
  });

  it('closes the screen with 4000 "moved" when the VM migrates, and a new ticket opens it on the new host', async () => {
    const { secret } = await tokenOf('viewer');
    const issued = await ticket(secret, 'vm2', 'vnc');
    const opened = await open(`${base}${issued.body.path}`);
    assert.ok('socket' in opened);
    const ending = closed(opened.socket);
    const vm2 = await cluster.services.vms.get('vm2');
    const moved = await cluster.services.operations.wait((await cluster.services.migrations.migrate(vm2.id, { to: 'h2', strategy: 'precopy' })).id);
    assert.equal(moved.status, 'succeeded', JSON.stringify(moved.error));
    assert.deepEqual(await ending, [4000, 'moved']);
    const again = await ticket(secret, 'vm2', 'vnc');
    const reopened = await open(`${base}${again.body.path}`);
    assert.ok('socket' in reopened);
    const [kind, vmId] = cluster.agent('h2').callsOf('openStream').at(-1) as [string, string];
    assert.deepEqual([kind, vmId], ['vnc', vm2.id], 'the new stream goes to the new host');
    reopened.socket.close();
  });

  it('records the ticket issue and the console opening in the audit log, never the ticket or the password', async () => {
    const { secret } = await tokenOf('viewer');
    const issued = await ticket(secret, 'vm1', 'vnc');
    const opened = await open(`${base}${issued.body.path}`);
    assert.ok('socket' in opened);
    opened.socket.close();
    await new Promise((resolve) => setTimeout(resolve, 100));
    const rows = await cluster.db.selectFrom('audit_entries').select('data').execute();
    const everything = rows.map((row) => row.data).join('\n');
    assert.ok(!everything.includes(issued.body.ticket), 'no ticket in the audit log');
    assert.ok(!everything.includes(issued.body.password!), 'no VNC password in the audit log');
    const entries = rows.map((row) => JSON.parse(row.data) as { route?: string; user?: string; status?: number; params?: { query?: { ticket?: string } } });
    assert.ok(
      entries.some((e) => e.route === '/v1/vms/:vm/console-ticket' && e.user === 'viewer' && e.status === 201),
      'the issue is audited',
    );
    const opening = entries.filter((e) => e.route === '/v1/vms/:vm/vnc').at(-1);
    assert.equal(opening?.status, 101);
    assert.equal(opening?.params?.query?.ticket, '[redacted]');
  });
});

describe('console tickets expire', () => {
  it('refuses a ticket past its lifetime, saying when it expired', async () => {
    const cluster = await fakeCluster(['h1'], { consoleTicketTtlMs: 200 });
    try {
      const created = await cluster.services.vms.create({ name: 'vm1', image: 'tiny', cpus: 1, memoryMb: 128, waitReady: false });
      await cluster.services.operations.wait(created.id);
      const app = await cluster.app();
      const base = (await app.listen({ host: '127.0.0.1', port: 0 })).replace('http', 'ws');
      const response = await app.inject({
        method: 'POST',
        url: '/v1/vms/vm1/console-ticket',
        headers: { ...cluster.auth, 'content-type': 'application/json' },
        payload: '{"kind":"vnc"}',
      });
      const { path, expiresAt } = response.json() as { path: string; expiresAt: string };
      await new Promise((resolve) => setTimeout(resolve, 300));
      const refused = refusal(await open(`${base}${path}`));
      assert.deepEqual([refused.status, refused.code], [401, 'AUTH_TICKET_INVALID']);
      assert.match(refused.message, new RegExp(`expired at ${expiresAt.replace(/[.]/g, '\\.')}`));
    } finally {
      await cluster.close();
    }
  });
});
