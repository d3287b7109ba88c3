/**
 * Desktop pools through the API over fake agents and a real storage node in this process (the
 * clones are the point: a reset must leave a desktop's disk as the base was, whatever its user
 * wrote). Refusals, entitlements, both modes, a full pool, resets on leaving and after the grace
 * time (a clock of the test's own), spares, and deletion.
 */
import assert from 'node:assert/strict';
import { mkdirSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { FastifyInstance } from 'fastify';
import type { Principal } from '../../src/access/authorize.ts';
import { dataPaths } from '../../src/core/paths.ts';
import { NbdClient } from '../../src/storage/nbd/nbd-client.ts';
import { startStorageNode } from '../../src/storage/storage-node.ts';
import type { DesktopAssignment, DesktopPool, MyDesktop } from '../../src/wire/desktop-schemas.ts';
import type { Operation } from '../../src/wire/schemas.ts';
import { type FakeCluster, fakeCluster } from '../helpers/fake-cluster.ts';
import { settle as settleCluster } from '../helpers/settle.ts';

const MINUTE = 60_000;

describe('desktop pools (API, fake agents, real storage node)', () => {
  let cluster: FakeCluster;
  let app: FastifyInstance;
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
    await writeVolume('p1/base', 'BASE-CONTENT');
    for (const name of ['alice', 'bob', 'carol']) {
      const user = await cluster.services.access.users.create(name, 'desktop-password-1');
      const id = (await cluster.services.access.users.row(user.name)).id;
      userIds.set(name, id);
      const owner: Principal = { userId: id, userName: name, tokenId: '', tokenName: '', grants: [], tokenProjectId: null, tokenRole: null };
      tokens.set(name, (await cluster.services.access.tokens.create(owner, { name: `t-${name}`, kind: 'session' })).secret);
    }
  });
  after(async () => {
    await settle();
    await cluster.close();
    await node.stop();
  });

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

  /** Waits until no operation runs any more (provisioning and resets started in the background). */
  const settle = () => settleCluster(cluster);

  async function waitOk(operation: Operation): Promise<Operation> {
    const final = await cluster.services.operations.wait(operation.id);
    assert.equal(final.status, 'succeeded', JSON.stringify(final.error));
    return final;
  }

  async function withVolume<T>(ref: string, use: (client: NbdClient) => Promise<T>): Promise<T> {
    const client = await NbdClient.connect({ path: dataPaths(cluster.dir).storageNbdSocket, exportName: ref });
    try {
      return await use(client);
    } finally {
      await client.close();
    }
  }

  async function writeVolume(ref: string, text: string): Promise<void> {
    await withVolume(ref, async (client) => {
      const block = Buffer.alloc(4096);
      block.write(text);
      await client.write(0, block, { fua: true });
    });
  }

  async function readVolume(ref: string): Promise<string> {
    return withVolume(ref, async (client) => (await client.read(0, 4096)).toString().replace(/\0+$/, ''));
  }

  async function createPool(body: Record<string, unknown>): Promise<DesktopPool> {
    const { operation } = await as<{ operation: Operation }>('admin', 'POST', '/v1/desktop-pools', { image: 'tiny', base: 'p1/base', ...body }, 202);
    return (await waitOk(operation)).result as DesktopPool;
  }

  const pool = (name: string) => as<DesktopPool>('admin', 'GET', `/v1/desktop-pools/${name}`, undefined, 200);
  const volumeNames = async () => (await as<Array<{ name: string }>>('admin', 'GET', '/v1/pools/p1/volumes', undefined, 200)).map((v) => v.name).sort();

  it('refuses a base that cannot be cloned, bad names and more spares than desktops, and makes nothing', async () => {
    await as('admin', 'POST', '/v1/pools', { name: 'd1', kind: 'dir', hosts: ['h1'] }, 201);
    await as('admin', 'POST', '/v1/pools/d1/volumes', { name: 'v1', size: '16M' }, 201);
    const dir = await as<{ code: string; message: string }>(
      'admin',
      'POST',
      '/v1/desktop-pools',
      { name: 'x', image: 'tiny', base: 'd1/v1', size: 1, mode: 'floating' },
      422,
    );
    assert.equal(dir.code, 'DESKTOP_BASE_UNCLONEABLE');
    assert.match(dir.message, /d1 is a dir pool/);
    const missing = await as<{ code: string; message: string }>(
      'admin',
      'POST',
      '/v1/desktop-pools',
      { name: 'x', image: 'tiny', base: 'p1/nope', size: 1, mode: 'floating' },
      422,
    );
    assert.equal(missing.code, 'DESKTOP_BASE_UNCLONEABLE');
    assert.match(missing.message, /p1\/nope cannot be cloned/);
    for (const name of ['Bad_Name', 'x'.repeat(41), '-x'])
      await as('admin', 'POST', '/v1/desktop-pools', { name, image: 'tiny', base: 'p1/base', size: 1, mode: 'floating' }, 400);
    const spares = await as<{ message: string }>(
      'admin',
      'POST',
      '/v1/desktop-pools',
      { name: 'x', image: 'tiny', base: 'p1/base', size: 2, spare: 3, mode: 'floating' },
      400,
    );
    assert.match(spares.message, /--spare 3 is more than the pool's --size 2/);
    await as('admin', 'POST', '/v1/desktop-pools', { name: 'x', image: 'tiny', base: 'p1/base', size: 1, mode: 'sometimes' }, 400);
    assert.deepEqual(await as('admin', 'GET', '/v1/desktop-pools', undefined, 200), []);
    assert.deepEqual(await volumeNames(), ['base'], 'no snapshot or clone was made');
  });

  it('refuses a user without access, names who grants it, and lets a granted one in', async () => {
    await createPool({ name: 'ded', size: 2, spare: 0, mode: 'dedicated' });
    const refused = await as<{ code: string; message: string }>('alice', 'POST', '/v1/desktop-pools/ded/connect', undefined, 403);
    assert.equal(refused.code, 'ACCESS_DENIED');
    assert.equal(refused.message, 'User alice has no access to desktop pool ded; an admin grants it with nubis desktop pool grant ded alice');
    // A pool that does not exist is refused the same way to someone who may not read the project's pools.
    const unknown = await as<{ message: string }>('alice', 'POST', '/v1/desktop-pools/nosuch/connect', undefined, 403);
    assert.match(unknown.message, /no access to desktop pool nosuch/);
    await as('admin', 'POST', '/v1/desktop-pools/nosuch/connect', undefined, 404);
    await as('alice', 'GET', '/v1/desktop-pools/ded', undefined, 403);
    await as('alice', 'POST', '/v1/desktop-pools/ded/grants', { user: 'alice' }, 403);
    const granted = await as<DesktopPool>('admin', 'POST', '/v1/desktop-pools/ded/grants', { user: 'alice' }, 200);
    assert.deepEqual(granted.entitled, ['alice']);
    await as('bob', 'POST', '/v1/desktop-pools/ded/connect', undefined, 403);
    assert.deepEqual(await as<MyDesktop[]>('bob', 'GET', '/v1/desktops', undefined, 200), []);
  });

  it('dedicated: the same desktop every time, kept when its user leaves; a full pool is refused', async () => {
    await as('admin', 'POST', '/v1/desktop-pools/ded/grants', { user: 'bob' }, 200);
    await as('admin', 'POST', '/v1/desktop-pools/ded/grants', { user: 'carol' }, 200);
    const first = await as<DesktopAssignment>('alice', 'POST', '/v1/desktop-pools/ded/connect', undefined, 200);
    if (first.operation) await waitOk(first.operation);
    await settle();
    await writeVolume(first.desktop.volume, 'ALICE-WAS-HERE');
    await as('alice', 'POST', '/v1/desktop-pools/ded/leave', undefined, 200);
    const again = await as<DesktopAssignment>('alice', 'POST', '/v1/desktop-pools/ded/connect', undefined, 200);
    assert.equal(again.desktop.vm, first.desktop.vm);
    assert.equal(again.desktop.state, 'running');
    assert.equal(await readVolume(first.desktop.volume), 'ALICE-WAS-HERE', 'a dedicated desktop is kept as its user left it');
    const bobs = await as<DesktopAssignment>('bob', 'POST', '/v1/desktop-pools/ded/connect', undefined, 200);
    if (bobs.operation) await waitOk(bobs.operation);
    assert.notEqual(bobs.desktop.vm, first.desktop.vm);
    const full = await as<{ code: string; message: string }>('carol', 'POST', '/v1/desktop-pools/ded/connect', undefined, 409);
    assert.equal(full.code, 'DESKTOP_POOL_FULL');
    assert.match(full.message, /^Desktop pool ded is full: all 2 desktops are in use/);
    const mine = await as<MyDesktop[]>('alice', 'GET', '/v1/desktops', undefined, 200);
    assert.deepEqual(
      mine.map((m) => [m.pool, m.mode, m.desktop?.vm]),
      [['ded', 'dedicated', first.desktop.vm]],
    );
    const broker = cluster.services.desktopBroker;
    const vmId = (await pool('ded')).desktops.find((d) => d.vm === first.desktop.vm)!.vmId!;
    assert.equal(await broker.assignedUserOf(vmId), userIds.get('alice'));
    assert.equal(await broker.mayOpen({ userId: userIds.get('alice')!, userName: 'alice' }, vmId), true);
    assert.equal(await broker.mayOpen({ userId: userIds.get('bob')!, userName: 'bob' }, vmId), false);
  });

  it('floating: two users get different desktops, spares are kept, a full pool is refused', async () => {
    const created = await createPool({ name: 'flo', size: 2, spare: 1, mode: 'floating' });
    assert.deepEqual(
      created.desktops.map((d) => [d.vm, d.state, d.assignedTo]),
      [['flo-1', 'running', undefined]],
      'one spare booted at create',
    );
    for (const user of ['alice', 'bob', 'carol']) await as('admin', 'POST', '/v1/desktop-pools/flo/grants', { user }, 200);
    const alices = await as<DesktopAssignment>('alice', 'POST', '/v1/desktop-pools/flo/connect', undefined, 200);
    assert.equal(alices.desktop.vm, 'flo-1', 'the booted spare, at once');
    assert.equal(alices.desktop.state, 'running');
    assert.equal(alices.operation, undefined, 'nothing to wait for');
    await settle();
    assert.deepEqual(
      (await pool('flo')).desktops.map((d) => [d.vm, d.state, d.assignedTo]),
      [
        ['flo-1', 'running', 'alice'],
        ['flo-2', 'running', undefined],
      ],
      'a new spare replaced the one taken',
    );
    const bobs = await as<DesktopAssignment>('bob', 'POST', '/v1/desktop-pools/flo/connect', undefined, 200);
    assert.equal(bobs.desktop.vm, 'flo-2');
    await settle();
    assert.equal((await pool('flo')).desktops.length, 2, 'never more desktops than the size');
    const full = await as<{ code: string; message: string }>('carol', 'POST', '/v1/desktop-pools/flo/connect', undefined, 409);
    assert.match(full.message, /^Desktop pool flo is full: all 2 desktops are in use/);
  });

  it('floating: leaving resets the desktop to a fresh clone of the base and restarts its VM', async () => {
    const before = (await pool('flo')).desktops.find((d) => d.assignedTo === 'alice')!;
    const volumeBefore = await as<{ createdAt: string }>('admin', 'GET', `/v1/pools/${before.volume.replace('/', '/volumes/')}`, undefined, 200);
    await writeVolume(before.volume, 'ALICE-SECRET');
    const agent = cluster.agent('h1');
    const stops = agent.callsOf('stopVm').length;
    const starts = agent.callsOf('startVm').length;
    const left = await as<{ desktop: string; operation: Operation }>('alice', 'POST', '/v1/desktop-pools/flo/leave', undefined, 200);
    assert.equal(left.desktop, before.vm);
    assert.equal(left.operation.kind, 'desktop.reset');
    await waitOk(left.operation);
    assert.equal(await readVolume(before.volume), 'BASE-CONTENT', "alice's write is gone: the disk is the base again");
    const volumeAfter = await as<{ createdAt: string; kind: string; originName: string }>(
      'admin',
      'GET',
      `/v1/pools/${before.volume.replace('/', '/volumes/')}`,
      undefined,
      200,
    );
    assert.notEqual(volumeAfter.createdAt, volumeBefore.createdAt, 'a new clone');
    assert.equal(volumeAfter.kind, 'clone');
    assert.equal(volumeAfter.originName, 'desktop-flo-base');
    assert.deepEqual(
      agent
        .callsOf('stopVm')
        .slice(stops)
        .map((args) => args[0]),
      [before.vmId],
    );
    assert.deepEqual(
      agent
        .callsOf('startVm')
        .slice(starts)
        .map((args) => args[0]),
      [before.vmId],
    );
    const after = (await pool('flo')).desktops.find((d) => d.vm === before.vm)!;
    assert.equal(after.state, 'running');
    assert.equal(after.assignedTo, undefined);
    // Carol, refused while the pool was full, now gets the clean desktop.
    const carols = await as<DesktopAssignment>('carol', 'POST', '/v1/desktop-pools/flo/connect', undefined, 200);
    assert.equal(carols.desktop.vm, before.vm);
    const audit = await cluster.db.selectFrom('audit_entries').select('data').execute();
    const actions = audit.map((row) => JSON.parse(row.data) as { action: string; user?: string; resource?: { vm: string } });
    for (const action of ['desktop.assign', 'desktop.connect', 'desktop.leave', 'desktop.reset'])
      assert.ok(
        actions.some((entry) => entry.action === action && entry.resource?.vm === before.vm),
        `${action} of ${before.vm} is in the audit log`,
      );
  });

  it('floating: a reset waits for a migration holding the VM, and nobody gets the desktop meanwhile', async () => {
    await settle();
    const carols = (await pool('flo')).desktops.find((d) => d.assignedTo === 'carol')!;
    const migration = cluster.services.owner.claim(carols.vmId!, 'migrate', carols.vm);
    const left = await as<{ desktop: string; operation?: Operation }>('carol', 'POST', '/v1/desktop-pools/flo/leave', undefined, 200);
    assert.equal(left.operation, undefined, 'no reset while the migration holds the VM');
    assert.equal((await pool('flo')).desktops.find((d) => d.vm === carols.vm)!.state, 'resetting');
    const full = await as<{ code: string }>('alice', 'POST', '/v1/desktop-pools/flo/connect', undefined, 409);
    assert.equal(full.code, 'DESKTOP_POOL_FULL', 'the desktop owed a reset is handed to nobody');
    const flo = await cluster.services.desktopPools.records.pool('flo', { id: 'prj-1', name: 'default' });
    assert.deepEqual(await cluster.services.desktopBroker.keepSpares(flo), [], 'still held: still owed');
    migration.release();
    const retried = await cluster.services.desktopBroker.keepSpares(flo);
    assert.deepEqual(
      retried.map((op) => [op.kind, op.target.name]),
      [['desktop.reset', carols.vm]],
    );
    await waitOk(retried[0]!);
    const carolsAgain = await as<DesktopAssignment>('carol', 'POST', '/v1/desktop-pools/flo/connect', undefined, 200);
    assert.equal(carolsAgain.desktop.vm, carols.vm);
  });

  it('floating: resets a desktop whose user stayed disconnected past the grace time, or never opened a console', async () => {
    const broker = cluster.services.desktopBroker;
    await settle();
    const desktops = (await pool('flo')).desktops;
    const carols = desktops.find((d) => d.assignedTo === 'carol')!;
    const bobs = desktops.find((d) => d.assignedTo === 'bob')!;
    await broker.consoleOpened(carols.vmId!, userIds.get('carol')!);
    clock += 60 * MINUTE;
    // Bob connected long ago and never opened a console; Carol has one open.
    const first = await broker.sweepGrace();
    assert.deepEqual(
      first.map((op) => [op.kind, op.target.name]),
      [['desktop.reset', bobs.vm]],
    );
    await waitOk(first[0]!);
    await broker.consoleClosed(carols.vmId!, userIds.get('carol')!);
    clock += 4 * MINUTE;
    assert.deepEqual(await broker.sweepGrace(), [], 'within the 5 minutes');
    clock += 2 * MINUTE;
    const reset = await broker.sweepGrace();
    assert.deepEqual(
      reset.map((op) => [op.kind, op.target.name]),
      [['desktop.reset', carols.vm]],
    );
    await waitOk(reset[0]!);
    assert.deepEqual(
      (await pool('flo')).desktops.map((d) => d.assignedTo),
      [undefined, undefined],
    );
    const audit = (await cluster.db.selectFrom('audit_entries').select('data').execute()).map(
      (row) => JSON.parse(row.data) as { action: string; params?: { reason?: string }; resource?: { vm: string } },
    );
    assert.ok(audit.some((e) => e.action === 'desktop.reset' && e.params?.reason === 'grace' && e.resource?.vm === carols.vm));
    await settle();
    assert.equal(await broker.mayOpen({ userId: userIds.get('carol')!, userName: 'carol' }, carols.vmId!), false);
  });

  it('keeps K spares booted, creating desktops up to the size and never beyond', async () => {
    const created = await createPool({ name: 'spr', size: 3, spare: 2, mode: 'floating' });
    assert.deepEqual(
      created.desktops.map((d) => [d.vm, d.state]),
      [
        ['spr-1', 'running'],
        ['spr-2', 'running'],
      ],
    );
    await as('admin', 'POST', '/v1/desktop-pools/spr/grants', { user: 'alice' }, 200);
    await as('admin', 'POST', '/v1/desktop-pools/spr/grants', { user: 'bob' }, 200);
    await as('alice', 'POST', '/v1/desktop-pools/spr/connect', undefined, 200);
    await settle();
    assert.equal((await pool('spr')).desktops.filter((d) => !d.assignedTo && d.state === 'running').length, 2, 'two spares again');
    await as('bob', 'POST', '/v1/desktop-pools/spr/connect', undefined, 200);
    await settle();
    await cluster.services.desktopBroker.keepSpares(await cluster.services.desktopPools.records.pool('spr', { id: 'prj-1', name: 'default' }));
    assert.equal((await pool('spr')).desktops.length, 3, 'the size caps the spares');
    // A stopped spare is booted rather than a new one made.
    const spare = (await pool('spr')).desktops.find((d) => !d.assignedTo)!;
    await waitOk(await cluster.services.vms.act(spare.vm, 'stop'));
    await cluster.services.desktopBroker.keepSpares(await cluster.services.desktopPools.records.pool('spr', { id: 'prj-1', name: 'default' }));
    await settle();
    assert.equal((await pool('spr')).desktops.find((d) => d.vm === spare.vm)!.state, 'running');
    const metrics = (await app.inject({ method: 'GET', url: '/metrics', headers: cluster.auth })).body;
    assert.match(metrics, /^nubis_desktops\{project="default",pool="spr",state="running"\} 3$/m);
    assert.match(metrics, /^nubis_desktops_assigned\{project="default",pool="spr"\} 2$/m);
  });

  it('update-base: a new snapshot of the base; free desktops are reset onto it, held ones keep their disk', async () => {
    await settle();
    await writeVolume('p1/base', 'NEW-BASE');
    const { operation } = await as<{ operation: Operation }>('admin', 'POST', '/v1/desktop-pools/spr/update-base', undefined, 202);
    await waitOk(operation);
    const desktops = (await pool('spr')).desktops;
    const free = desktops.find((d) => !d.assignedTo)!;
    const held = desktops.find((d) => d.assignedTo === 'alice')!;
    assert.equal(await readVolume(free.volume), 'NEW-BASE');
    assert.equal(await readVolume(held.volume), 'BASE-CONTENT', "alice's desktop is hers until she leaves");
    const left = await as<{ operation: Operation }>('alice', 'POST', '/v1/desktop-pools/spr/leave', undefined, 200);
    await waitOk(left.operation);
    assert.equal(await readVolume(held.volume), 'NEW-BASE', 'her next user gets the new base');
    await as('alice', 'POST', '/v1/desktop-pools/spr/connect', undefined, 200);
    await settle();
  });

  it('refuses to delete a pool with assigned desktops unless forced, then removes desktops, clones and snapshot', async () => {
    const refused = await as<{ code: string; message: string }>('admin', 'DELETE', '/v1/desktop-pools/spr', undefined, 409);
    assert.equal(refused.code, 'DESKTOP_POOL_IN_USE');
    assert.match(refused.message, /assigned \(to alice, bob\)/);
    const { operation } = await as<{ operation: Operation }>('admin', 'DELETE', '/v1/desktop-pools/spr?force=true', undefined, 202);
    await waitOk(operation);
    await as('admin', 'GET', '/v1/desktop-pools/spr', undefined, 404);
    const vms = (await cluster.services.vms.list()).vms.map((vm) => vm.name);
    assert.ok(!vms.some((name) => name.startsWith('spr-')), `no spr VM left: ${vms.join(', ')}`);
    assert.ok(!(await volumeNames()).some((name) => name.startsWith('desktop-spr-')), 'no clone or snapshot left');
    assert.deepEqual(
      (await as<MyDesktop[]>('alice', 'GET', '/v1/desktops', undefined, 200)).map((m) => m.pool),
      ['ded', 'flo'],
    );
  });
});
