// I/O fencing per host at the storage node, as the control plane drives it (StorageCatalogue
// over the management socket): every registered host has its own NBD socket; a fenced host's
// open connections are closed, what it sent after the fence never reaches the volume, its socket
// refuses new connections with the reason until it is unfenced, and all of it survives a restart
// of the node. Real qemu-io shows what a QEMU on a fenced host sees. Bad host names never reach
// the filesystem.
import assert from 'node:assert/strict';
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { mkdtemp, readdir, readFile, rm, stat, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { StorageCatalogue } from '../../src/control/storage.ts';
import { isNubisError, type NubisError } from '../../src/core/errors.ts';
import { requestJson } from '../../src/core/http-json.ts';
import { dataPaths, hostNbdSocket } from '../../src/core/paths.ts';
import { NbdClient } from '../../src/storage/nbd/nbd-client.ts';
import { NbdError } from '../../src/storage/nbd/nbd-export.ts';
import { startStorageNodeIn, type StorageNode, storageNodeCatalogue } from '../helpers/storage-node.ts';

const MiB = 1024 * 1024;
const EXPORT = 'p1/disk';

async function rejectsWith(promise: Promise<unknown>, code: string): Promise<void> {
  await assert.rejects(promise, (error: unknown) => error instanceof NbdError && error.code === code);
}

/** qemu-io reading commands from its stdin, so one QEMU NBD connection outlives a fence. */
class InteractiveQemuIo {
  readonly #child: ChildProcessWithoutNullStreams;
  #output = '';
  constructor(uri: string) {
    this.#child = spawn('qemu-io', ['-f', 'raw', uri]);
    this.#child.stdout.on('data', (chunk: Buffer) => (this.#output += chunk.toString()));
    this.#child.stderr.on('data', (chunk: Buffer) => (this.#output += chunk.toString()));
  }
  /** Runs one command; its output up to the next prompt. */
  async run(command: string, timeoutMs = 15_000): Promise<string> {
    this.#output = '';
    this.#child.stdin.write(`${command}\n`);
    const deadline = Date.now() + timeoutMs;
    while (!/(wrote|read|failed)[^\n]*\n/.test(this.#output)) {
      if (Date.now() > deadline) throw new Error(`qemu-io did not answer ${command}: ${this.#output}`);
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    return this.#output;
  }
  async quit(): Promise<void> {
    if (this.#child.exitCode !== null) return;
    const exited = new Promise((resolve) => this.#child.once('exit', resolve));
    this.#child.stdin.end('quit\n');
    const timer = setTimeout(() => this.#child.kill('SIGKILL'), 5000);
    await exited;
    clearTimeout(timer);
  }
}

/** Runs qemu-io with `commands`; its exit code and everything it printed. */
function qemuIo(uri: string, commands: string[]): Promise<{ code: number | null; output: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn('qemu-io', ['-f', 'raw', uri, ...commands.flatMap((c) => ['-c', c])]);
    let output = '';
    child.stdout.on('data', (chunk: Buffer) => (output += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (output += chunk.toString()));
    child.on('error', reject);
    child.on('exit', (code) => resolve({ code, output }));
  });
}

describe('storage node: a socket per host, and fencing', () => {
  let dir: string;
  let paths: ReturnType<typeof dataPaths>;
  let node: StorageNode;
  let catalogue: StorageCatalogue;
  const clients: NbdClient[] = [];

  async function start(): Promise<void> {
    node = await startStorageNodeIn(paths);
  }

  async function connect(host: string): Promise<NbdClient> {
    const client = await NbdClient.connect({ path: hostNbdSocket(dir, host), exportName: EXPORT });
    clients.push(client);
    return client;
  }

  /** The volume's bytes as any other host sees them. */
  async function readThrough(host: string, offset: number, length: number): Promise<Buffer> {
    const client = await connect(host);
    try {
      return await client.read(offset, length);
    } finally {
      await client.close();
    }
  }

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'nubis-fence-'));
    paths = dataPaths(dir);
    await start();
    const device = join(dir, 'member.img');
    await writeFile(device, '');
    await truncate(device, 64 * MiB);
    await node.service.createPool({ name: 'p1', layout: 'raid0', devices: [device] });
    await node.service.createVolume('p1', 'disk', '16M');
    catalogue = storageNodeCatalogue(paths);
  });
  after(async () => {
    for (const client of clients) client.destroy();
    await node?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  it('registers hosts idempotently, each on its own socket where the control plane looks for it', async () => {
    const first = await catalogue.registerHost('host-1');
    await catalogue.registerHost('host-2');
    assert.deepEqual(await catalogue.registerHost('host-1'), first);
    assert.deepEqual(first, { name: 'host-1', generation: 1, fenced: false, connections: 0, socket: join(dir, 'storage', 'hosts', 'host-1', 'nbd.sock') });
    assert.equal(catalogue.nbdSocketFor('host-1'), first.socket);
    assert.ok((await stat(first.socket)).isSocket());
    assert.deepEqual(
      (await catalogue.hostStates()).map((h) => h.name),
      ['host-1', 'host-2'],
    );
  });

  it('fences a host: its connection is cut, its later write never lands, its socket refuses new connections', async () => {
    const host1 = await connect('host-1');
    await host1.write(0, Buffer.alloc(64 * 1024, 0xaa));
    assert.equal((await catalogue.hostStates()).find((h) => h.name === 'host-1')?.connections, 1);

    const fenced = await catalogue.fenceHost('host-1');
    assert.deepEqual({ ...fenced, socket: undefined }, { name: 'host-1', generation: 2, fenced: true, connections: 0, socket: undefined });
    await rejectsWith(host1.write(0, Buffer.alloc(64 * 1024, 0xbb)), 'NBD_DISCONNECTED');
    assert.deepEqual(await readThrough('host-2', 0, 64 * 1024), Buffer.alloc(64 * 1024, 0xaa));
    await assert.rejects(connect('host-1'), /I\/O from host host-1 is fenced \(generation 2\)/);
    // The shared socket (older VM records, tools) is no host's and stays open.
    const shared = await NbdClient.connect({ path: paths.storageNbdSocket, exportName: EXPORT });
    assert.deepEqual(await shared.read(0, 16), Buffer.alloc(16, 0xaa));
    await shared.close();
  });

  it('unfences: a new connection works, the old one stays closed, the generation stays raised', async () => {
    const before = clients.length;
    const unfenced = await catalogue.unfenceHost('host-1');
    assert.equal(unfenced.generation, 2);
    assert.equal(unfenced.fenced, false);
    const again = await connect('host-1');
    await again.write(4096, Buffer.alloc(4096, 0xcc));
    assert.deepEqual(await readThrough('host-2', 4096, 4096), Buffer.alloc(4096, 0xcc));
    await rejectsWith(clients[before - 1]!.read(0, 512), 'NBD_DISCONNECTED');
    await again.close();
  });

  it('keeps a fenced host fenced, and every host listening, across a restart of the node', async () => {
    await catalogue.fenceHost('host-1');
    await node.stop();
    await start();
    const states = await catalogue.hostStates();
    assert.deepEqual(
      states.map(({ name, generation, fenced }) => ({ name, generation, fenced })),
      [
        { name: 'host-1', generation: 3, fenced: true },
        { name: 'host-2', generation: 1, fenced: false },
      ],
    );
    await assert.rejects(connect('host-1'), /host host-1 is fenced \(generation 3\)/);
    assert.deepEqual(await readThrough('host-2', 4096, 4096), Buffer.alloc(4096, 0xcc));
    const file = JSON.parse(await readFile(join(paths.storageHosts, 'fencing.json'), 'utf8'));
    assert.deepEqual(file.hosts[0], { name: 'host-1', generation: 3, fenced: true, vms: [] });
    await catalogue.unfenceHost('host-1');
  });

  it('qemu-io on a fenced host: the running one gets I/O errors, a new one is told why', async () => {
    const uri = `nbd+unix:///${EXPORT}?socket=${hostNbdSocket(dir, 'host-1')}`;
    const qemu = new InteractiveQemuIo(uri);
    try {
      assert.match(await qemu.run('write -P 0x5a 1M 64k'), /wrote 65536\/65536 bytes/);
      await catalogue.fenceHost('host-1');
      // QEMU's NBD driver loses its connection, tries to connect again, is refused: EIO.
      assert.match(await qemu.run('write -P 0x5b 1M 64k'), /write failed: Input\/output error/);
    } finally {
      await qemu.quit();
    }
    const fresh = await qemuIo(uri, ['read 0 4k']);
    assert.notEqual(fresh.code, 0);
    assert.match(fresh.output, /Denied by server for option 7 \(go\)/);
    assert.match(fresh.output, /server reported: I\/O from host host-1 is fenced \(generation 4\)/);
    const hostTwo = `nbd+unix:///${EXPORT}?socket=${hostNbdSocket(dir, 'host-2')}`;
    const check = await qemuIo(hostTwo, ['read -P 0x5a 1M 64k']);
    assert.equal(check.code, 0, check.output);
    assert.doesNotMatch(check.output, /failed/);
  });

  it('refuses host names that are no plain names with 400, creating nothing', async () => {
    const before = (await readdir(paths.storageHosts)).sort();
    const stateBefore = await readFile(join(paths.storageHosts, 'fencing.json'), 'utf8');
    // Over the real socket, as the control plane calls: raw paths, no URL normalisation on the way.
    const bad = ['..', '.', '%2E%2E', '..%2F..%2Fetc', 'a%2Fb', 'Host1', '-a', 'a-', 'a.b', 'a_b', 'a%00b', 'x'.repeat(64)];
    for (const name of bad) {
      for (const [method, suffix] of [
        ['PUT', ''],
        ['POST', '/fence'],
        ['POST', '/unfence'],
        ['GET', ''],
      ] as const) {
        const error = await requestJson(`unix:${paths.storageManageSocket}`, { method, path: `/storage/hosts/${name}${suffix}` }).then(
          () => assert.fail(`${method} ${name}${suffix} was accepted`),
          (error: unknown) => error as NubisError,
        );
        assert.equal(error.details?.httpStatus, 400, `${method} ${name}${suffix}: ${error.message}`);
        assert.equal(error.code, 'STORAGE_HOST_NAME_INVALID');
        assert.match(error.message, /^The host name .* is not valid: use 1 to 63 lowercase letters/);
      }
    }
    assert.deepEqual((await readdir(paths.storageHosts)).sort(), before);
    assert.equal(await readFile(join(paths.storageHosts, 'fencing.json'), 'utf8'), stateBefore);
    assert.throws(
      () => catalogue.nbdSocketFor('../host-1'),
      (error: unknown) => isNubisError(error, 'STORAGE_HOST_NAME_INVALID'),
    );
    await assert.rejects(catalogue.fenceHost('host-9'), (error: unknown) => isNubisError(error, 'STORAGE_HOST_NOT_FOUND'));
  });
});
