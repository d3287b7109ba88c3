// A socket per VM at the storage node, as the control plane drives it (StorageCatalogue over the
// management socket) and as an unprivileged QEMU meets it: each VM's socket is its uid's alone
// (the kernel refuses every other uid), serves only that VM's volumes (real NBD handshakes, our
// client, qemu-io and nbdinfo), follows attach and detach, obeys its host's fence, survives a
// restart of the node, and goes when released. Bad uids, exports and host names never reach the
// filesystem. Runs as root: processes are started as VM uids with spawn's uid/gid options.
import assert from 'node:assert/strict';
import { chmod, lstat, mkdtemp, readdir, readFile, rm, stat, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { DiskSpec } from '../../src/compute/vm-spec.ts';
import { VM_UID_FIRST } from '../../src/compute/vm-user.ts';
import type { StorageCatalogue } from '../../src/control/storage.ts';
import type { NubisError } from '../../src/core/errors.ts';
import { requestJson } from '../../src/core/http-json.ts';
import { dataPaths } from '../../src/core/paths.ts';
import { NbdClient } from '../../src/storage/nbd/nbd-client.ts';
import { NbdError } from '../../src/storage/nbd/nbd-export.ts';
import { startStorageNodeIn, type StorageNode, storageNodeCatalogue } from '../helpers/storage-node.ts';
import { runAs } from '../helpers/run-as.ts';

const MiB = 1024 * 1024;
// Two VMs' uids, as the control plane counts them (any in the range; files here are this run's).
const UID_A = VM_UID_FIRST + 0x0010_0000;
const UID_B = UID_A + 1;
/** The uid of no VM and no account with rights: `nobody`. */
const NOBODY = 65534;

type Spec = { id: string; unixUid: number; disks: DiskSpec[] };
const nbdDisk = (index: number, exportName: string): DiskSpec => ({ id: `disk${index}`, kind: 'nbd', socketPath: '/nowhere', exportName });
const specOf = (id: string, uid: number, exports: string[]): Spec => ({ id, unixUid: uid, disks: exports.map((name, index) => nbdDisk(index, name)) });

/** What a process of `uid` meets connecting to the unix socket `path`: `connected` or the errno code. */
async function connectAs(uid: number, path: string): Promise<string> {
  const script = `const s = require('node:net').connect(process.argv[1]);
s.on('connect', () => { process.stdout.write('connected'); s.destroy(); });
s.on('error', (e) => process.stdout.write(e.code));`;
  return (await runAs(uid, process.execPath, ['-e', script, path])).output.trim();
}

/** What a process of `uid` meets listing the folder `path`: `listed` or the errno code. */
async function listAs(uid: number, path: string): Promise<string> {
  const script = `try { require('node:fs').readdirSync(process.argv[1]); process.stdout.write('listed'); } catch (e) { process.stdout.write(e.code); }`;
  return (await runAs(uid, process.execPath, ['-e', script, path])).output.trim();
}

const refusedOnSocket = (name: string) => (error: unknown) =>
  error instanceof NbdError && error.code === 'NBD_EXPORT_UNKNOWN' && error.message.includes(`Export "${name}" is not available on this socket`);
const disconnected = (error: unknown) => error instanceof NbdError && error.code === 'NBD_DISCONNECTED';

describe('storage node: a socket per VM', { skip: process.getuid?.() !== 0 && 'needs root (sockets are given to VM uids)' }, () => {
  let dir: string;
  let paths: ReturnType<typeof dataPaths>;
  let node: StorageNode;
  let catalogue: StorageCatalogue;
  const clients: NbdClient[] = [];
  let socketA = '';
  let socketB = '';

  async function start(): Promise<void> {
    node = await startStorageNodeIn(paths);
  }

  async function connect(path: string, exportName: string): Promise<NbdClient> {
    const client = await NbdClient.connect({ path, exportName });
    clients.push(client);
    return client;
  }

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'nubis-vmsock-'));
    // As the control plane and agents leave the data folder (core/data-folder.ts).
    await chmod(dir, 0o711);
    paths = dataPaths(dir);
    await start();
    const device = join(dir, 'member.img');
    await writeFile(device, '');
    await truncate(device, 96 * MiB);
    await node.service.createPool({ name: 'p1', layout: 'raid0', devices: [device] });
    for (const volume of ['a', 'b', 'c']) await node.service.createVolume('p1', volume, '8M');
    catalogue = storageNodeCatalogue(paths);
  });
  after(async () => {
    for (const client of clients) client.destroy();
    await node?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  it("binds each VM's disks to a socket of its own, its uid's alone (0600), in folders others may pass but not list", async () => {
    const boundA = await catalogue.bindDisksToHost(specOf('vm-a', UID_A, ['p1/a']), 'host-1');
    const boundB = await catalogue.bindDisksToHost(specOf('vm-b', UID_B, ['p1/b']), 'host-1');
    socketA = (boundA.disks[0] as { socketPath: string }).socketPath;
    socketB = (boundB.disks[0] as { socketPath: string }).socketPath;
    assert.equal(socketA, join(paths.storageHosts, 'host-1', `vm-${UID_A}.sock`));
    assert.equal(socketB, catalogue.vmSocketFor('host-1', UID_B));
    for (const [socket, uid] of [
      [socketA, UID_A],
      [socketB, UID_B],
    ] as const) {
      const info = await lstat(socket);
      assert.ok(info.isSocket());
      assert.deepEqual({ uid: info.uid, gid: info.gid, mode: info.mode & 0o777 }, { uid, gid: uid, mode: 0o600 });
    }
    for (const passable of [join(dir, 'storage'), paths.storageHosts, join(paths.storageHosts, 'host-1')])
      assert.equal((await stat(passable)).mode & 0o007, 0o001, `${passable}: others pass, never list`);
    for (const closed of [paths.storagePools, paths.storageManageSocket, paths.storageNbdSocket, join(paths.storageHosts, 'fencing.json')])
      assert.equal((await stat(closed)).mode & 0o007, 0, `${closed}: closed to others`);
    const hostSocket = await stat(catalogue.nbdSocketFor('host-1'));
    assert.deepEqual({ uid: hostSocket.uid, mode: hostSocket.mode & 0o777 }, { uid: 0, mode: 0o600 }, "the host's own socket is root's");
    assert.deepEqual(
      (await catalogue.vmSockets('host-1')).map(({ uid, exports, socket }) => ({ uid, exports, socket })),
      [
        { uid: UID_A, exports: ['p1/a'], socket: socketA },
        { uid: UID_B, exports: ['p1/b'], socket: socketB },
      ],
    );
    const state = JSON.parse(await readFile(join(paths.storageHosts, 'fencing.json'), 'utf8'));
    assert.deepEqual(state.hosts[0].vms, [
      { uid: UID_A, exports: ['p1/a'] },
      { uid: UID_B, exports: ['p1/b'] },
    ]);
  });

  it("a connection to VM A's socket opens A's volume and never B's (real NBD handshakes)", async () => {
    const a = await connect(socketA, 'p1/a');
    await a.write(0, Buffer.alloc(4096, 0xa1));
    await a.close();
    await assert.rejects(connect(socketA, 'p1/b'), refusedOnSocket('p1/b'));
    // A name that exists nowhere gets the very same answer: the refusal tells nothing.
    await assert.rejects(connect(socketA, 'p1/none'), refusedOnSocket('p1/none'));
    // As QEMU meets it, running as VM A's uid: its own volume reads back, B's is refused with the reason.
    const own = await runAs(UID_A, 'qemu-io', ['-f', 'raw', `nbd+unix:///p1/a?socket=${socketA}`, '-c', 'read -P 0xa1 0 4k']);
    assert.equal(own.code, 0, own.output);
    assert.doesNotMatch(own.output, /fail|Pattern verification/);
    const other = await runAs(UID_A, 'qemu-io', ['-f', 'raw', `nbd+unix:///p1/b?socket=${socketA}`, '-c', 'read 0 4k']);
    assert.notEqual(other.code, 0);
    assert.match(other.output, /Requested export not available/);
    assert.match(other.output, /server reported: Export "p1\/b" is not available on this socket: it serves the disks of VM uid \d+ on host host-1 only/);
    // NBD_OPT_LIST shows A's volume only.
    const listed = await runAs(UID_A, 'nbdinfo', ['--list', `nbd+unix:///?socket=${socketA}`]);
    assert.equal(listed.code, 0, listed.output);
    assert.match(listed.output, /export="p1\/a"/);
    assert.doesNotMatch(listed.output, /p1\/b|p1\/c/);
  });

  it("only the VM's uid (and root) can connect: the kernel refuses another VM's uid and any other user", async () => {
    assert.equal(await connectAs(UID_A, socketA), 'connected');
    assert.equal(await connectAs(UID_B, socketB), 'connected');
    assert.equal(await connectAs(UID_B, socketA), 'EACCES');
    assert.equal(await connectAs(UID_A, socketB), 'EACCES');
    assert.equal(await connectAs(NOBODY, socketA), 'EACCES');
    // Nor can a VM reach what serves every volume, or the management API.
    for (const other of [catalogue.nbdSocketFor('host-1'), paths.storageNbdSocket, paths.storageManageSocket])
      assert.equal(await connectAs(UID_A, other), 'EACCES', other);
    // It finds its socket by name, and cannot list who else has one.
    for (const folder of [join(dir, 'storage'), paths.storageHosts, join(paths.storageHosts, 'host-1')])
      assert.equal(await listAs(UID_A, folder), 'EACCES', folder);
    assert.equal(await listAs(UID_A, paths.storagePools), 'EACCES');
  });

  it('grows with an attach and shrinks with a detach: a connection on the detached volume is cut', async () => {
    const before = specOf('vm-a', UID_A, ['p1/a']);
    const attached = await catalogue.bindDisksToHost(specOf('vm-a', UID_A, ['p1/a', 'p1/c']), 'host-1');
    assert.equal((attached.disks[1] as { socketPath: string }).socketPath, socketA);
    const onC = await connect(socketA, 'p1/c');
    const onA = await connect(socketA, 'p1/a');
    await onC.write(0, Buffer.alloc(4096, 0xc1));
    await catalogue.syncVmSocket(before, 'host-1', attached);
    await assert.rejects(onC.write(0, Buffer.alloc(4096, 0xc2)), disconnected);
    await assert.rejects(connect(socketA, 'p1/c'), refusedOnSocket('p1/c'));
    assert.deepEqual(await onA.read(0, 4096), Buffer.alloc(4096, 0xa1), 'the disk the VM keeps works on');
    const check = await connect(paths.storageNbdSocket, 'p1/c');
    assert.deepEqual(await check.read(0, 4096), Buffer.alloc(4096, 0xc1), 'no write after the detach reached the volume');
    await check.close();
    await onA.close();
  });

  it('fencing the host cuts and refuses its VM sockets; unfencing lets its VMs in again', async () => {
    const onA = await connect(socketA, 'p1/a');
    const onB = await connect(socketB, 'p1/b');
    assert.equal((await catalogue.hostStates()).find((h) => h.name === 'host-1')?.connections, 2, 'VM sockets count as the host');
    await catalogue.fenceHost('host-1');
    await assert.rejects(onA.write(0, Buffer.alloc(4096, 0xee)), disconnected);
    await assert.rejects(onB.read(0, 512), disconnected);
    await assert.rejects(connect(socketA, 'p1/a'), /I\/O from host host-1 is fenced \(generation 2\)/);
    const fenced = await runAs(UID_A, 'qemu-io', ['-f', 'raw', `nbd+unix:///p1/a?socket=${socketA}`, '-c', 'read 0 4k']);
    assert.notEqual(fenced.code, 0);
    assert.match(fenced.output, /server reported: I\/O from host host-1 is fenced/);
    // Another host's VM socket is not touched by host-1's fence.
    const onHost2 = await catalogue.bindDisksToHost(specOf('vm-a', UID_A, ['p1/a']), 'host-2');
    const elsewhere = await connect((onHost2.disks[0] as { socketPath: string }).socketPath, 'p1/a');
    assert.deepEqual(await elsewhere.read(0, 4096), Buffer.alloc(4096, 0xa1), 'the fenced write never landed');
    await elsewhere.close();
    await catalogue.releaseVmSocket(onHost2, 'host-2');
    await catalogue.unfenceHost('host-1');
    await (await connect(socketA, 'p1/a')).close();
  });

  it('a restarted storage node serves the same sockets, with the same lists and owners', async () => {
    await node.stop();
    await start();
    const info = await lstat(socketA);
    assert.deepEqual({ uid: info.uid, mode: info.mode & 0o777 }, { uid: UID_A, mode: 0o600 });
    assert.deepEqual(
      (await catalogue.vmSockets('host-1')).map(({ uid, exports }) => ({ uid, exports })),
      [
        { uid: UID_A, exports: ['p1/a'] },
        { uid: UID_B, exports: ['p1/b'] },
      ],
    );
    assert.deepEqual(await (await connect(socketA, 'p1/a')).read(0, 16), Buffer.alloc(16, 0xa1));
    await assert.rejects(connect(socketA, 'p1/b'), refusedOnSocket('p1/b'));
    assert.equal(await connectAs(UID_B, socketA), 'EACCES');
    assert.deepEqual(await readdir(join(paths.storageHosts, '.bind')), [], 'nothing left where sockets are bound');
  });

  it("releases a VM's socket: its connections cut, its file gone, for good; releasing again is fine", async () => {
    const onB = await connect(socketB, 'p1/b');
    await catalogue.releaseVmSocket(specOf('vm-b', UID_B, ['p1/b']), 'host-1');
    await assert.rejects(onB.read(0, 512), disconnected);
    await assert.rejects(lstat(socketB), /ENOENT/);
    await catalogue.releaseVmSocket(specOf('vm-b', UID_B, ['p1/b']), 'host-1');
    await catalogue.releaseVmSocket(specOf('vm-b', UID_B, ['p1/b']), 'host-9');
    await node.stop();
    await start();
    assert.deepEqual(
      (await catalogue.vmSockets('host-1')).map((vm) => vm.uid),
      [UID_A],
    );
    await assert.rejects(lstat(socketB), /ENOENT/);
  });

  it('refuses bad uids, exports, bodies and host names with 400, changing nothing', async () => {
    const stateBefore = await readFile(join(paths.storageHosts, 'fencing.json'), 'utf8');
    const hostsBefore = (await readdir(paths.storageHosts)).sort();
    const folderBefore = (await readdir(join(paths.storageHosts, 'host-1'))).sort();
    const call = (method: 'PUT' | 'DELETE' | 'GET', path: string, body?: unknown) =>
      requestJson(`unix:${paths.storageManageSocket}`, { method, path, ...(body === undefined ? {} : { body }) }).then(
        () => assert.fail(`${method} ${path} ${JSON.stringify(body)} was accepted`),
        (error: unknown) => error as NubisError,
      );
    const good = { exports: ['p1/a'] };
    const cases: Array<[string, unknown, string]> = [
      ...['0', '1000', '-1', 'abc', '1879048192.5', '0x70000000', '%2E%2E', '99999999999', '4294967295', '%201879048192', '1879048192%00'].map(
        (uid): [string, unknown, string] => [`/storage/hosts/host-1/vms/${uid}`, good, 'STORAGE_VM_UID_INVALID'],
      ),
      ...['..', '%2E%2E', 'Host1', 'a_b', 'x'.repeat(64)].map((host): [string, unknown, string] => [
        `/storage/hosts/${host}/vms/${UID_A}`,
        good,
        'STORAGE_HOST_NAME_INVALID',
      ]),
      ...[
        { exports: 'p1/a' },
        { exports: [] },
        { exports: ['p1'] },
        { exports: ['../etc/x'] },
        { exports: ['p1/a/b'] },
        { exports: ['p1/.a'] },
        { exports: ['p1/a', 'p1/a'] },
        { exports: [7] },
        { exports: Array.from({ length: 65 }, (_, i) => `p1/v${i}`) },
        { exports: ['p1/a'], uid: 0 },
        ['p1/a'],
        {},
      ].map((body): [string, unknown, string] => [`/storage/hosts/host-1/vms/${UID_A}`, body, 'STORAGE_EXPORT_INVALID']),
    ];
    for (const [path, body, code] of cases) {
      const error = await call('PUT', path, body);
      assert.equal(error.details?.httpStatus, 400, `${path} ${JSON.stringify(body)}: ${error.message}`);
      assert.equal(error.code, code, `${path} ${JSON.stringify(body)}: ${error.message}`);
    }
    for (const uid of ['0', 'abc', '%2E%2E']) assert.equal((await call('DELETE', `/storage/hosts/host-1/vms/${uid}`)).code, 'STORAGE_VM_UID_INVALID');
    assert.equal((await call('GET', `/storage/hosts/host-1/vms/${UID_B}`)).code, 'STORAGE_VM_SOCKET_NOT_FOUND');
    // A VM socket path over the unix limit (the host's own socket would fit) is refused before
    // the host is registered or a folder made.
    const long = 'h'.repeat(Math.min(63, 107 - Buffer.byteLength(`${paths.storageHosts}/`) - 'nbd.sock'.length - 1));
    assert.ok(Buffer.byteLength(catalogue.nbdSocketFor(long)) <= 107);
    const tooLong = await call('PUT', `/storage/hosts/${long}/vms/${UID_A}`, good);
    assert.equal(tooLong.code, 'STORAGE_SOCKET_PATH_TOO_LONG', tooLong.message);
    assert.match(tooLong.message, /over the 107 a unix socket takes/);
    assert.equal(await readFile(join(paths.storageHosts, 'fencing.json'), 'utf8'), stateBefore);
    assert.deepEqual((await readdir(paths.storageHosts)).sort(), hostsBefore);
    assert.deepEqual((await readdir(join(paths.storageHosts, 'host-1'))).sort(), folderBefore);
  });
});
