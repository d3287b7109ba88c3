// A listener with an allow list (NbdExportAccess) on a real NBD server over a unix socket: only
// listed exports open, a refusal reads the same whether the export exists or not, a list that
// shrinks cuts exactly the connections on what it lost, and a listener closes alone, its file
// with it. Socket files get their mode before they appear under their name.
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readdir, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { NbdClient } from './nbd-client.ts';
import { NbdExportAccess } from './nbd-export-access.ts';
import { mapCatalog, NbdError, type NbdExport } from './nbd-export.ts';
import { NbdServer } from './nbd-server.ts';

class MemoryExport implements NbdExport {
  readonly data = Buffer.alloc(64 * 1024);
  get sizeBytes(): number {
    return this.data.length;
  }
  async read(buffer: Buffer, position: number): Promise<void> {
    this.data.copy(buffer, 0, position, position + buffer.length);
  }
  async write(data: Buffer, position: number): Promise<void> {
    data.copy(this.data, position);
  }
  async flush(): Promise<void> {}
}

describe('NbdExportAccess', () => {
  let dir: string;
  let server: NbdServer;
  const exports = new Map([
    ['p/a', new MemoryExport()],
    ['p/b', new MemoryExport()],
  ]);
  const clients: NbdClient[] = [];

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'nubis-nbd-access-'));
    server = new NbdServer({ catalog: mapCatalog(exports) });
  });
  after(async () => {
    for (const client of clients) client.destroy();
    await server.close(500);
    await rm(dir, { recursive: true, force: true });
  });

  async function connect(path: string, exportName: string): Promise<NbdClient> {
    const client = await NbdClient.connect({ path, exportName });
    clients.push(client);
    return client;
  }

  const refused = (name: string) => (error: unknown) =>
    error instanceof NbdError &&
    error.code === 'NBD_EXPORT_UNKNOWN' &&
    error.message.includes(`Export "${name}" is not available on this socket: it serves the disks of VM A only`);

  it('opens only the exports on the list; a refusal does not tell whether the export exists', async () => {
    const path = join(dir, 'a.sock');
    await server.listen({ path, access: new NbdExportAccess('VM A', ['p/a']) });
    const a = await connect(path, 'p/a');
    await a.write(0, Buffer.alloc(512, 0x11));
    assert.deepEqual(exports.get('p/a')!.data.subarray(0, 512), Buffer.alloc(512, 0x11));
    await assert.rejects(connect(path, 'p/b'), refused('p/b'));
    await assert.rejects(connect(path, 'p/nothing'), refused('p/nothing'));
    // A listener without a list serves every export, as before.
    const open = join(dir, 'open.sock');
    await server.listen({ path: open });
    const b = await connect(open, 'p/b');
    assert.equal((await b.read(0, 16)).length, 16);
    await b.close();
    await a.close();
  });

  it('a list that shrinks cuts the connections on what it lost, and only those', async () => {
    const access = new NbdExportAccess('VM A', ['p/a', 'p/b']);
    const path = join(dir, 'shrink.sock');
    await server.listen({ path, access });
    const onA = await connect(path, 'p/a');
    const onB = await connect(path, 'p/b');
    await onB.write(4096, Buffer.alloc(512, 0x22));
    assert.equal(access.connectionCount, 2);
    await access.replace(['p/a']);
    await assert.rejects(onB.write(4096, Buffer.alloc(512, 0x33)), (error: unknown) => error instanceof NbdError && error.code === 'NBD_DISCONNECTED');
    assert.deepEqual(exports.get('p/b')!.data.subarray(4096, 4608), Buffer.alloc(512, 0x22), 'nothing written after the cut');
    await onA.write(8192, Buffer.alloc(512, 0x44));
    await assert.rejects(connect(path, 'p/b'), refused('p/b'));
    assert.deepEqual(access.allowed, ['p/a']);
    await access.replace(['p/b', 'p/a']);
    const again = await connect(path, 'p/b');
    await again.close();
    await onA.close();
  });

  it('closes one listener: its file goes, its connections are cut, the others keep serving', async () => {
    const one = join(dir, 'one.sock');
    const two = join(dir, 'two.sock');
    await server.listen({ path: one, access: new NbdExportAccess('VM A', ['p/a']) });
    await server.listen({ path: two, access: new NbdExportAccess('VM A', ['p/a']) });
    const onOne = await connect(one, 'p/a');
    const onTwo = await connect(two, 'p/a');
    await server.closeListener(one);
    await assert.rejects(stat(one), /ENOENT/);
    await assert.rejects(onOne.read(0, 512), (error: unknown) => error instanceof NbdError && error.code === 'NBD_DISCONNECTED');
    assert.equal((await onTwo.read(0, 512)).length, 512);
    await assert.rejects(connect(one, 'p/a'), /ENOENT|Cannot connect/);
    // The same path can be served again.
    await server.listen({ path: one, access: new NbdExportAccess('VM A', ['p/a']) });
    await (await connect(one, 'p/a')).close();
    await server.closeListener(one);
    await onTwo.close();
  });

  it('gives a socket file its mode before it appears under its name', async () => {
    const staging = join(dir, 'staging');
    await mkdir(staging, { mode: 0o700 });
    const path = join(dir, 'moded.sock');
    await server.listen({ path, access: new NbdExportAccess('VM A', ['p/a']), file: { mode: 0o600, bindPath: join(staging, 'x1') } });
    const info = await stat(path);
    assert.ok(info.isSocket());
    assert.equal(info.mode & 0o777, 0o600);
    assert.deepEqual(await readdir(staging), [], 'renamed away from where it was bound');
    await (await connect(path, 'p/a')).close();
    await assert.rejects(server.listen({ path }), /listens on .* already/);
    await server.closeListener(path);
  });

  it('refuses a list of more names than it holds', () => {
    assert.throws(
      () =>
        new NbdExportAccess(
          'VM A',
          Array.from({ length: 257 }, (_, i) => `p/v${i}`),
        ),
      /at most 256/,
    );
  });
});
