/**
 * Live restore's export, read by QEMU's own block layer (qemu-img, qemu-io) through a qcow2 file
 * whose backing file it is: the bytes of the backup point, the volume's own writes on top, holes
 * for zero chunks, and an I/O error (never wrong bytes) for a damaged chunk. The store is a map
 * here; test/storage/backups.test.ts restores a VM live from a real store.
 */
import assert from 'node:assert/strict';
import { execFile, execFileSync } from 'node:child_process';
import { promisify } from 'node:util';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { backupKeysOf, CHUNK_BYTES, chunkIdOf, sealChunk, sealManifest } from '../backup/chunk-crypto.ts';
import type { BackupManifest } from '../backup/manifest.ts';
import type { BackupStoreClient } from '../backup/store-client.ts';
import { liveRestoreSocketOf } from './dir-pools.ts';
import { BackupDiskExport, LiveRestores } from './live-restore.ts';

const BACKUP = 'bak-0123456789ab';
/** QEMU's tools run beside this process, which serves the export they read: never synchronously. */
const run = promisify(execFile);

describe('live restore: a backup as the backing file of a new volume', () => {
  const key = randomBytes(32);
  const keys = backupKeysOf(key);
  // Chunk 0 data, chunk 1 all zero (not stored), chunk 2 a partial last chunk of 1 MiB.
  const first = randomBytes(CHUNK_BYTES);
  const last = randomBytes(1024 * 1024);
  const sizeBytes = 2 * CHUNK_BYTES + last.length;
  const expected = Buffer.concat([first, Buffer.alloc(CHUNK_BYTES), last]);
  const ids = [chunkIdOf(keys, first), chunkIdOf(keys, last)];
  const stored = new Map([
    [ids[0], sealChunk(keys, ids[0], first)],
    [ids[1], sealChunk(keys, ids[1], last)],
  ]);
  const manifest: BackupManifest = {
    format: 'nubis-backup/1',
    backupId: BACKUP,
    createdAt: new Date().toISOString(),
    chunkBytes: CHUNK_BYTES,
    vm: {},
    disks: [{ id: 'vdb', source: 'local/data', sizeBytes, chunks: [ids[0], null, ids[1]] }],
  };
  const fetched: string[] = [];
  const store = {
    backup: async () => ({ id: BACKUP, createdAt: manifest.createdAt, chunks: ids, storedBytes: 0, manifest: sealManifest(keys, BACKUP, manifest) }),
    getChunk: async (id: string) => {
      fetched.push(id);
      const chunk = stored.get(id);
      if (!chunk) throw new Error(`no chunk ${id}`);
      return chunk;
    },
  } as unknown as BackupStoreClient;
  let dir = '';
  const restores = new LiveRestores(store);

  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'nubis-live-restore-'));
  });
  after(async () => {
    await restores.close();
    rmSync(dir, { recursive: true, force: true });
  });

  /** The volume's contents as QEMU reads them, through its backing file. */
  async function readVolume(path: string): Promise<Buffer> {
    const out = `${path}.read.raw`;
    await run('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', path, out]);
    try {
      return readFileSync(out);
    } finally {
      rmSync(out, { force: true });
    }
  }

  it('serves the backup point through the volume, the volume keeping its own writes', async () => {
    const path = join(dir, 'restored.qcow2');
    await restores.start(path, { backupId: BACKUP, diskId: 'vdb', key });
    assert.ok(restores.has(path));
    const socket = liveRestoreSocketOf(path);
    assert.ok(existsSync(socket));
    assert.equal(execFileSync('stat', ['-c', '%a %U', socket], { encoding: 'utf8' }).trim(), '600 root', 'the socket is root alone until a VM is given it');
    assert.ok((await readVolume(path)).equals(expected), 'QEMU reads the backup point through the volume');
    await run('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x5a 4096 4096', path]);
    const written = await readVolume(path);
    assert.ok(written.subarray(4096, 8192).equals(Buffer.alloc(4096, 0x5a)), 'the write is the volume own');
    assert.ok(written.subarray(0, 4096).equals(expected.subarray(0, 4096)) && written.subarray(8192).equals(expected.subarray(8192)));
    assert.ok(!fetched.includes('null'), 'the zero chunk is never asked of the store');
    await restores.end(path);
    assert.ok(!existsSync(socket) && !restores.has(path), 'ending the export removes its socket');
  });

  it('answers holes for zero chunks, so that a pull skips them', async () => {
    const exported = new BackupDiskExport(store, keys, manifest.disks[0], CHUNK_BYTES);
    assert.deepEqual(await exported.blockStatus(0, sizeBytes), [
      { lengthBytes: CHUNK_BYTES, hole: false, zero: false },
      { lengthBytes: CHUNK_BYTES, hole: true, zero: true },
      { lengthBytes: last.length, hole: false, zero: false },
    ]);
    await assert.rejects(exported.write(), /read-only/);
  });

  it('fails the read of a damaged chunk with an I/O error, never with wrong bytes', async () => {
    const path = join(dir, 'damaged.qcow2');
    await restores.start(path, { backupId: BACKUP, diskId: 'vdb', key });
    const damaged = Buffer.from(stored.get(ids[1])!);
    damaged[100] ^= 0x01;
    stored.set(ids[1], damaged);
    try {
      await assert.rejects(run('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', path, `${path}.raw`]), (error: { stderr: string }) => {
        assert.match(error.stderr, /Input\/output error/);
        return true;
      });
    } finally {
      stored.set(ids[1], sealChunk(keys, ids[1], last));
      rmSync(`${path}.raw`, { force: true });
      await restores.end(path);
    }
  });

  it('refuses an unknown disk and leaves no file', async () => {
    const path = join(dir, 'nodisk.qcow2');
    await assert.rejects(restores.start(path, { backupId: BACKUP, diskId: 'vdz', key }), /has no disk vdz/);
    assert.ok(!existsSync(path) && !existsSync(liveRestoreSocketOf(path)));
  });
});
