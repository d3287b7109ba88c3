/**
 * A desktop's consoles for its user: over the real API (listening, so that WebSockets upgrade),
 * fake agents whose streams echo and a real storage node for the clones. A user granted a pool
 * opens their own desktop's screen and serial console without `vm.console`, and nothing else; a
 * ticket issued before their desktop was left or their grant revoked opens nothing; opening and
 * closing the console moves the time the grace period counts from; the user follows their desktop
 * on the event stream; deleting a user takes their desktop back and their grants away.
 */
import assert from 'node:assert/strict';
import { mkdirSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { FastifyInstance } from 'fastify';
import WebSocket from 'ws';
import type { Principal } from '../../src/access/authorize.ts';
import { dataPaths } from '../../src/core/paths.ts';
import type { ChangeEvent } from '../../src/events/change-feed.ts';
import { startStorageNode } from '../../src/storage/storage-node.ts';
import type { DesktopAssignment, DesktopPool } from '../../src/wire/desktop-schemas.ts';
import type { Operation } from '../../src/wire/schemas.ts';
import { type FakeCluster, fakeCluster } from '../helpers/fake-cluster.ts';
import { settle as settleCluster } from '../helpers/settle.ts';
import { openStream } from '../helpers/sse-stream.ts';

const MINUTE = 60_000;

type Opened = { socket: WebSocket } | { status: number; body: { code: string; message: string } };

/** Opens a WebSocket; resolves with it, or with the HTTP refusal of the upgrade. */
function open(url: string): Promise<Opened> {
  return new Promise((resolve, reject) => {
    const socket = new WebSocket(url);
    socket.on('open', () => resolve({ socket }));
    socket.on('unexpected-response', (_request, response) => {
      let text = '';
      response.on('data', (chunk: Buffer) => (text += chunk.toString()));
      response.on('end', () => resolve({ status: response.statusCode ?? 0, body: JSON.parse(text) }));
    });
    socket.on('error', reject);
  });
}

function closed(socket: WebSocket): Promise<[number, string]> {
  return new Promise((resolve) => socket.on('close', (code, reason) => resolve([code, reason.toString()])));
}

describe('desktop consoles for their users', () => {
  let cluster: FakeCluster;
  let app: FastifyInstance;
  let base: string;
  let node: Awaited<ReturnType<typeof startStorageNode>>;
  let clock = Date.parse('2026-11-30T08:00:00.000Z');
  const tokens = new Map<string, string>();
  const userIds = new Map<string, string>();

  before(async () => {
    cluster = await fakeCluster(['h1'], { desktopClock: () => clock });
    app = await cluster.app();
    const paths = dataPaths(cluster.dir);
    mkdirSync(join(cluster.dir, 'storage'), { recursive: true, mode: 0o700 });
    node = await startStorageNode({ poolsDir: join(cluster.dir, 'pools'), nbdSocket: paths.storageNbdSocket, manageSocket: paths.storageManageSocket });
    const device = join(cluster.dir, 'member.img');
    writeFileSync(device, '');
    truncateSync(device, 256 * 2 ** 20);
    await as('admin', 'POST', '/v1/pools', { name: 'p1', layout: 'raid0', devices: [device] }, 201);
    await as('admin', 'POST', '/v1/pools/p1/volumes', { name: 'base', size: '16M' }, 201);
    const plain = await as<{ operation: Operation }>(
      'admin',
      'POST',
      '/v1/vms',
      { name: 'plain', image: 'tiny', cpus: 1, memoryMb: 128, waitReady: false },
      202,
    );
    await waitOk(plain.operation);
    for (const name of ['alice', 'bob']) await addUser(name);
    const { operation } = await as<{ operation: Operation }>(
      'admin',
      'POST',
      '/v1/desktop-pools',
      { name: 'office', image: 'tiny', base: 'p1/base', size: 3, spare: 0, mode: 'floating' },
      202,
    );
    await waitOk(operation);
    for (const user of ['alice', 'bob']) await as('admin', 'POST', '/v1/desktop-pools/office/grants', { user }, 200);
    base = (await app.listen({ host: '127.0.0.1', port: 0 })).replace('http', 'ws');
  });
  after(async () => {
    await settle();
    await cluster.close();
    await node.stop();
  });

  async function addUser(name: string): Promise<void> {
    const user = await cluster.services.access.users.create(name, 'desktop-password-1');
    const id = (await cluster.services.access.users.row(user.name)).id;
    userIds.set(name, id);
    const owner: Principal = { userId: id, userName: name, tokenId: '', tokenName: '', grants: [], tokenProjectId: null, tokenRole: null };
    tokens.set(name, (await cluster.services.access.tokens.create(owner, { name: `t-${name}`, kind: 'session' })).secret);
  }

  /** A request as `who` (admin or a user), checking the status when one is given. */
  async function as<T>(who: string, method: string, url: string, body?: unknown, status?: number): Promise<T> {
    const token = who === 'admin' ? cluster.token : tokens.get(who)!;
    const response = await app.inject({
      method: method as 'GET',
      url,
      headers: { authorization: `Bearer ${token}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
      ...(body === undefined ? {} : { payload: JSON.stringify(body) }),
    });
    if (status !== undefined) assert.equal(response.statusCode, status, `${method} ${url}: ${response.body}`);
    return (response.body ? response.json() : undefined) as T;
  }

  const settle = () => settleCluster(cluster);

  async function waitOk(operation: Operation): Promise<Operation> {
    const final = await cluster.services.operations.wait(operation.id);
    assert.equal(final.status, 'succeeded', JSON.stringify(final.error));
    return final;
  }

  /** `who` gets their desktop of office, booted. */
  async function connect(who: string): Promise<DesktopAssignment> {
    const assignment = await as<DesktopAssignment>(who, 'POST', '/v1/desktop-pools/office/connect', undefined, 200);
    if (assignment.operation) await waitOk(assignment.operation);
    await settle();
    return assignment;
  }

  const ticket = (who: string, vm: string, kind: 'vnc' | 'serial') =>
    app.inject({
      method: 'POST',
      url: `/v1/vms/${vm}/console-ticket`,
      headers: { authorization: `Bearer ${who === 'admin' ? cluster.token : tokens.get(who)!}`, 'content-type': 'application/json' },
      payload: JSON.stringify({ kind }),
    });
  const desktopOf = async (vm: string) =>
    (await as<DesktopPool>('admin', 'GET', '/v1/desktop-pools/office', undefined, 200)).desktops.find((d) => d.vm === vm)!;
  const audit = async () =>
    (await cluster.db.selectFrom('audit_entries').select('data').execute()).map(
      (row) => JSON.parse(row.data) as { action: string; user?: string; resource?: Record<string, string> },
    );

  it("gives a user tickets for their own desktop's screen and serial console, and for no other VM", async () => {
    const alices = await connect('alice');
    const bobs = await connect('bob');
    assert.notEqual(alices.desktop.vm, bobs.desktop.vm);
    const vnc = await ticket('alice', alices.desktop.vm, 'vnc');
    assert.equal(vnc.statusCode, 201, vnc.body);
    assert.match(vnc.json().password, /^[A-Za-z0-9]{8}$/);
    const serial = await ticket('alice', alices.desktop.vm, 'serial');
    assert.equal(serial.statusCode, 201, serial.body);
    const opened = await open(`${base}${serial.json().path}`);
    assert.ok('socket' in opened, JSON.stringify(opened));
    const echoed = new Promise<string>((resolve) => opened.socket.once('message', (data: Buffer) => resolve(data.toString())));
    opened.socket.send(Buffer.from('echo hi\n'));
    assert.equal(await echoed, 'echo hi\n', 'her keystrokes reach the desktop');
    const ended = closed(opened.socket);
    opened.socket.close();
    await ended;
    for (const other of [bobs.desktop.vm, 'plain', 'no-such-vm']) {
      const refused = await ticket('alice', other, 'serial');
      assert.equal(refused.statusCode, 403, `${other}: ${refused.body}`);
      assert.equal(refused.json().code, 'ACCESS_DENIED');
      assert.match(refused.json().message, /vm\.console/, 'the refusal names the permission, not whether the VM exists');
    }
    const elsewhere = await app.inject({
      method: 'POST',
      url: `/v1/vms/${alices.desktop.vm}/console-ticket?project=nope`,
      headers: { authorization: `Bearer ${tokens.get('alice')}`, 'content-type': 'application/json' },
      payload: JSON.stringify({ kind: 'serial' }),
    });
    assert.equal(elsewhere.statusCode, 403);
  });

  it('refuses a ticket whose desktop was left, or whose grant was revoked, between issue and use', async () => {
    const alices = (await desktopOf((await connect('alice')).desktop.vm)).vm;
    const issued = await ticket('alice', alices, 'serial');
    assert.equal(issued.statusCode, 201, issued.body);
    const left = await as<{ operation?: Operation }>('alice', 'POST', '/v1/desktop-pools/office/leave', undefined, 200);
    const refused = await open(`${base}${issued.json().path}`);
    assert.ok('status' in refused, 'the console of a desktop left must not open');
    assert.deepEqual([refused.status, refused.body.code], [403, 'ACCESS_DENIED']);
    if (left.operation) await waitOk(left.operation);
    await settle();

    const bobs = (await connect('bob')).desktop.vm;
    const bobsTicket = await ticket('bob', bobs, 'vnc');
    assert.equal(bobsTicket.statusCode, 201, bobsTicket.body);
    const serial = await ticket('bob', bobs, 'serial');
    const console = await open(`${base}${serial.json().path}`);
    assert.ok('socket' in console);
    const closing = closed(console.socket);
    await as('admin', 'DELETE', '/v1/desktop-pools/office/grants?user=bob', undefined, 200);
    const [code, reason] = await closing;
    assert.equal(code, 4401, 'an open console of a desktop taken back closes');
    assert.match(reason, /taken back \(access revoked\)/);
    const late = await open(`${base}${bobsTicket.json().path}`);
    assert.ok('status' in late);
    assert.deepEqual([late.status, late.body.code], [403, 'ACCESS_DENIED']);
    await settle();
    await as('admin', 'POST', '/v1/desktop-pools/office/grants', { user: 'bob' }, 200);
  });

  it('counts the grace time from the moment the last console closed', async () => {
    const vm = (await connect('alice')).desktop.vm;
    const connectedAt = new Date(clock).toISOString();
    assert.equal((await desktopOf(vm)).disconnectedAt, connectedAt, 'connected without a console: the grace time runs');
    clock += MINUTE;
    const issued = await ticket('alice', vm, 'vnc');
    const screen = await open(`${base}${issued.json().path}`);
    assert.ok('socket' in screen);
    const open1 = new Date(clock).toISOString();
    await waitFor(async () => (await desktopOf(vm)).connectedAt === open1);
    assert.equal((await desktopOf(vm)).disconnectedAt, undefined, 'an open screen stops the grace time');
    clock += 60 * MINUTE;
    assert.deepEqual(await cluster.services.desktopBroker.sweepGrace(), [], 'an hour on an open screen is no absence');
    const ended = closed(screen.socket);
    screen.socket.close();
    await ended;
    const closedAt = new Date(clock).toISOString();
    await waitFor(async () => (await desktopOf(vm)).disconnectedAt === closedAt);
    clock += 4 * MINUTE;
    assert.deepEqual(await cluster.services.desktopBroker.sweepGrace(), [], 'within the 5 minutes after the close');
    clock += 2 * MINUTE;
    const reset = await cluster.services.desktopBroker.sweepGrace();
    assert.deepEqual(
      reset.map((op) => [op.kind, op.target.name]),
      [['desktop.reset', vm]],
    );
    await waitOk(reset[0]!);
    const entries = (await audit()).filter((e) => e.resource?.vm === vm && e.user === 'alice').map((e) => e.action);
    assert.ok(entries.includes('desktop.console-connect'), entries.join());
    assert.ok(entries.includes('desktop.console-disconnect'), entries.join());
    await settle();
  });

  it("lets a user follow their desktop on the event stream, and nobody else's", async () => {
    const http = base.replace('ws', 'http');
    const alices = await openStream(`${http}/v1/events`, tokens.get('alice')!);
    const bobs = await openStream(`${http}/v1/events?types=desktop`, tokens.get('bob')!);
    try {
      const vm = (await connect('alice')).desktop.vm;
      const seen = await alices.next((m) => {
        const change = m.data as ChangeEvent;
        return change.type === 'desktop' && change.name === vm && (change.resource as { assignedTo?: string })?.assignedTo === 'alice';
      });
      assert.equal((seen.data as ChangeEvent).project, 'default');
      await as('alice', 'POST', '/v1/desktop-pools/office/leave', undefined, 200);
      await alices.next((m) => {
        const change = m.data as ChangeEvent;
        return change.type === 'desktop' && change.name === vm && (change.resource as { assignedTo?: string })?.assignedTo === undefined;
      });
      await settle();
      await cluster.services.changes.settled();
      assert.ok(
        alices.messages.every((m) => ['desktop'].includes((m.data as ChangeEvent).type)),
        'a user without roles sees only her desktop',
      );
      assert.deepEqual(
        bobs.messages.filter((m) => (m.data as ChangeEvent).name === vm),
        [],
        "bob sees nothing of alice's desktop",
      );
    } finally {
      alices.close();
      bobs.close();
    }
  });

  it("takes a deleted user's desktop back and forgets their grants", async () => {
    await addUser('dave');
    await as('admin', 'POST', '/v1/desktop-pools/office/grants', { user: 'dave' }, 200);
    const vm = (await connect('dave')).desktop.vm;
    await as('admin', 'DELETE', '/v1/users/dave', undefined, 204);
    await settle();
    const pool = await as<DesktopPool>('admin', 'GET', '/v1/desktop-pools/office', undefined, 200);
    assert.deepEqual(pool.entitled, ['alice', 'bob']);
    assert.equal(pool.desktops.find((d) => d.vm === vm)?.assignedTo, undefined, 'the desktop is free again, reset');
    const userId = userIds.get('dave')!;
    assert.equal((await cluster.db.selectFrom('desktop_entitlements').select('subject').where('subject', '=', userId).execute()).length, 0);
    assert.ok((await audit()).some((e) => e.action === 'desktop.release' && e.resource?.vm === vm));
    await addUser('dave');
    assert.equal(
      (await as<{ code: string }>('dave', 'POST', '/v1/desktop-pools/office/connect', undefined, 403)).code,
      'ACCESS_DENIED',
      'a new dave inherits nothing',
    );
  });
});

/** Polls `check` until it holds (the broker hears of a console's end after the socket closed). */
async function waitFor(check: () => Promise<boolean>, timeoutMs = 5000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}
