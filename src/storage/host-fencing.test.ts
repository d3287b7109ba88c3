// HostFencing on its own, over an NBD server with an in-memory export: a fence that cannot
// confirm in time says so and leaves the host fenced, a second fence confirms; the state file is
// replaced whole; a damaged state file stops the node rather than forgetting a fence.
import assert from 'node:assert/strict';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { isNubisError } from '../core/errors.ts';
import { HostFencing } from './host-fencing.ts';
import { NbdClient } from './nbd/nbd-client.ts';
import { mapCatalog, type NbdExport } from './nbd/nbd-export.ts';
import { NbdServer } from './nbd/nbd-server.ts';

/** A 1 MiB export whose writes wait while `hold` is set. */
class HeldExport implements NbdExport {
  readonly data = Buffer.alloc(1024 * 1024);
  hold?: Promise<void>;
  writeStarted?: () => void;
  get sizeBytes(): number {
    return this.data.length;
  }
  async read(buffer: Buffer, position: number): Promise<void> {
    this.data.copy(buffer, 0, position, position + buffer.length);
  }
  async write(data: Buffer, position: number): Promise<void> {
    this.writeStarted?.();
    if (this.hold) await this.hold;
    data.copy(this.data, position);
  }
  async flush(): Promise<void> {}
}

describe('HostFencing', () => {
  let dir: string;
  let server: NbdServer;
  const disk = new HeldExport();

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'nubis-host-fencing-'));
    server = new NbdServer({ catalog: mapCatalog(new Map([['disk', disk]])) });
  });
  after(async () => {
    await server?.close(500);
    await rm(dir, { recursive: true, force: true });
  });

  const open = (hostsDir: string, fenceTimeoutMs = 30_000) =>
    HostFencing.open({
      hostsDir,
      fenceTimeoutMs,
      server: { listen: (path, options) => server.listen({ path, ...options }).then(() => undefined), closeListener: (path) => server.closeListener(path) },
    });

  it('a fence that cannot confirm in time fails with the host fenced; fencing again confirms', async () => {
    const hosts = await open(join(dir, 'a'), 100);
    const { socket } = await hosts.register('h1');
    const client = await NbdClient.connect({ path: socket, exportName: 'disk' });
    let release!: () => void;
    disk.hold = new Promise<void>((resolve) => (release = resolve));
    const started = new Promise<void>((resolve) => (disk.writeStarted = resolve));
    const write = client.write(0, Buffer.alloc(4096, 0x77)).catch((error: unknown) => error);
    await started;

    await assert.rejects(
      hosts.fence('h1'),
      (error: unknown) => isNubisError(error, 'STORAGE_FENCE_TIMEOUT') && /1 of its closed connection/.test(error.message),
    );
    assert.deepEqual({ ...hosts.get('h1'), socket: undefined }, { name: 'h1', generation: 2, fenced: true, connections: 0, socket: undefined });
    await assert.rejects(NbdClient.connect({ path: socket, exportName: 'disk' }), /fenced/);
    release();
    const again = await hosts.fence('h1');
    assert.equal(again.generation, 2, 'fencing a fenced host waits for it again without raising the generation');
    assert.deepEqual(disk.data.subarray(0, 4096), Buffer.alloc(4096, 0x77));
    assert.equal(((await write) as Error).message, 'Server closed the connection');
    disk.hold = undefined;
    disk.writeStarted = undefined;
  });

  it('writes the state whole (no temporary file left) and reads it back', async () => {
    const hostsDir = join(dir, 'b');
    const hosts = await open(hostsDir);
    await hosts.register('h1');
    await hosts.register('h2');
    await hosts.fence('h2');
    assert.deepEqual((await readdir(hostsDir)).sort(), ['.bind', 'fencing.json', 'h1', 'h2']);
    assert.deepEqual(await readdir(join(hostsDir, '.bind')), [], 'the staging folder keeps nothing');
    assert.deepEqual(JSON.parse(await readFile(join(hostsDir, 'fencing.json'), 'utf8')), {
      version: 2,
      hosts: [
        { name: 'h1', generation: 1, fenced: false, vms: [] },
        { name: 'h2', generation: 2, fenced: true, vms: [] },
      ],
    });
  });

  it('refuses to start on a damaged state file, naming it', async () => {
    for (const content of [
      '{',
      '{"version":3,"hosts":[]}',
      '{"version":2,"hosts":[{"name":"h1","generation":1,"fenced":false}]}',
      '{"version":2,"hosts":[{"name":"h1","generation":1,"fenced":false,"vms":[{"uid":0,"exports":["p/v"]}]}]}',
      '{"version":2,"hosts":[{"name":"h1","generation":1,"fenced":false,"vms":[{"uid":1879048192,"exports":["../x"]}]}]}',
      '{"version":2,"hosts":[{"name":"h1","generation":1,"fenced":false,"vms":[{"uid":1879048192,"exports":["p/v"]},{"uid":1879048192,"exports":["p/w"]}]}]}',
      '{"version":1,"hosts":[{"name":"../x","generation":1,"fenced":false}]}',
      '{"version":1,"hosts":[{"name":"h1","generation":0,"fenced":false}]}',
    ]) {
      const hostsDir = await mkdtemp(join(dir, 'damaged-'));
      await writeFile(join(hostsDir, 'fencing.json'), content);
      await assert.rejects(open(hostsDir), (error: unknown) => isNubisError(error, 'STORAGE_HOSTS_FILE_DAMAGED') && error.message.includes(hostsDir));
    }
  });
});
