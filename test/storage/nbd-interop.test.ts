// Interoperability of our NBD server with real peers: qemu-img, qemu-io, nbdinfo, nbdcopy.
// The server runs in this process on a raw file; the peers are child processes (run
// asynchronously, or the server could not answer them).
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import { FileExport } from '../../src/storage/nbd/file-export.ts';
import { mapCatalog } from '../../src/storage/nbd/nbd-export.ts';
import { NbdServer } from '../../src/storage/nbd/nbd-server.ts';

const run = promisify(execFile);
const SIZE = 16 * 1024 * 1024;

describe('NBD server with real peers', () => {
  let dir: string;
  let server: NbdServer;
  let disk: FileExport;
  let uri: string;
  let tcpUri: string;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'nubis-nbd-interop-'));
    const path = join(dir, 'disk.raw');
    await writeFile(path, '');
    await truncate(path, SIZE);
    disk = await FileExport.open(path);
    server = new NbdServer({ catalog: mapCatalog(new Map([['disk', disk]]), 'disk') });
    const socket = join(dir, 'nbd.sock');
    await server.listen({ path: socket });
    const tcp = (await server.listen({ host: '127.0.0.1', port: 0 })) as { port: number };
    uri = `nbd+unix:///disk?socket=${socket}`;
    tcpUri = `nbd://127.0.0.1:${tcp.port}/disk`;
  });

  after(async () => {
    await server?.close(1000);
    await disk?.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('qemu-img info sees the size', async () => {
    const { stdout } = await run('qemu-img', ['info', '--output=json', uri]);
    assert.equal(JSON.parse(stdout)['virtual-size'], SIZE);
  });

  it('qemu-io writes and reads back patterns, zeroes and discards over unix and TCP', async () => {
    const { stdout } = await run('qemu-io', [
      '-f',
      'raw',
      uri,
      '-c',
      'write -P 0xab 0 1M',
      '-c',
      'read -P 0xab 0 1M',
      '-c',
      'write -f -P 0xcd 1M 64k',
      '-c',
      'read -P 0xcd 1M 64k',
      '-c',
      'write -z 2M 1M',
      '-c',
      'read -P 0 2M 1M',
      '-c',
      'discard 4M 1M',
      '-c',
      'flush',
      '-c',
      'aio_write -P 0x11 8M 64k',
      '-c',
      'aio_write -P 0x22 9M 64k',
      '-c',
      'aio_flush',
      '-c',
      'read -P 0x11 8M 64k',
      '-c',
      'read -P 0x22 9M 64k',
    ]);
    assert.doesNotMatch(stdout, /Pattern verification failed|error/i);
    const { stdout: overTcp } = await run('qemu-io', ['-f', 'raw', tcpUri, '-c', 'read -P 0xab 0 1M']);
    assert.doesNotMatch(overTcp, /Pattern verification failed|error/i);
  });

  it('nbdinfo --json shows the export and base:allocation', async () => {
    const { stdout } = await run('nbdinfo', ['--json', uri]);
    const info = JSON.parse(stdout);
    const exp = info.exports[0];
    assert.equal(info.protocol, 'newstyle-fixed');
    assert.equal(exp['export-size'], SIZE);
    assert.ok(exp.contexts.includes('base:allocation'));
    assert.equal(exp.can_flush, true);
    assert.equal(exp.can_fua, true);
    assert.equal(exp.can_trim, true);
    assert.equal(exp.can_zero, true);
  });

  it('nbdcopy and qemu-img convert copy whole images both ways', async () => {
    const source = join(dir, 'source.raw');
    const content = randomBytes(SIZE);
    await writeFile(source, content);
    await run('nbdcopy', [source, uri]);
    const back = join(dir, 'back.raw');
    await run('nbdcopy', [uri, back]);
    assert.ok((await readFile(back)).equals(content), 'nbdcopy round trip');
    const converted = join(dir, 'converted.qcow2');
    await run('qemu-img', ['convert', '-O', 'qcow2', uri, converted]);
    const { stdout } = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'qcow2', source, converted]);
    assert.match(stdout, /identical/);
  });
});
