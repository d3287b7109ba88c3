// Crashes in the key handling of encrypted volumes. A key rotation killed midway loses no
// volume: the storage node (`nubis daemon storage`, its own process) is stopped by a fault point
// at each step of a rotation (the new KEK durable; one volume key rewrapped, the others not; every
// key rewrapped, the old KEK not yet destroyed), killed with SIGKILL there, and restarted: every
// encrypted volume of two pools reads back what was written through NBD before. A last rotation
// that runs to its end then destroys the old KEKs. And a delete killed after it is durable but
// before the stale copies of the wrapped key are purged gets them purged when the pool reopens.
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { watch } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { after, before, describe, it } from 'node:test';
import type { FaultPoint } from '../../src/core/fault-points.ts';
import { requestJson } from '../../src/core/http-json.ts';
import { dataPaths } from '../../src/core/paths.ts';
import { NbdClient } from '../../src/storage/nbd/nbd-client.ts';
import { startStorageNodeIn } from '../helpers/storage-node.ts';
import { repoRoot } from '../helpers/nubis-instance.ts';

const MiB = 1024 * 1024;
const VOLUMES = [
  { pool: 'p1', volume: 'a', encrypted: true },
  { pool: 'p1', volume: 'b', encrypted: true },
  { pool: 'p1', volume: 'plain', encrypted: false },
  { pool: 'p2', volume: 'c', encrypted: true },
];

interface KeyStatus {
  currentKekId: string;
  retiredKekIds: string[];
  kekIdsInUse: string[];
}

/** Every wrapped key written on the members (metadata is JSON, so they show as text). */
async function wrappedKeysOn(paths: string[]): Promise<Set<string>> {
  const found = new Set<string>();
  for (const path of paths) {
    for (const match of (await readFile(path)).toString('latin1').matchAll(/"wrappedKey":"([A-Za-z0-9+/=]+)"/g)) found.add(match[1]!);
  }
  return found;
}

describe('key handling of encrypted volumes killed midway', () => {
  let dir: string;
  let paths: ReturnType<typeof dataPaths>;
  let daemon: ChildProcess | undefined;
  /** What each volume holds at 0 and at 5 MiB + 3 (written through NBD before any rotation). */
  const written = new Map<string, Buffer>();

  const manage = <T>(method: 'GET' | 'POST', path: string): Promise<T> =>
    requestJson<T>(`unix:${paths.storageManageSocket}`, { method, path, ...(method === 'POST' ? { body: {} } : {}) });

  /** Every volume reads back what was written, through the NBD socket. */
  async function verifyVolumes(): Promise<void> {
    for (const { pool, volume } of VOLUMES) {
      const client = await NbdClient.connect({ path: paths.storageNbdSocket, exportName: `${pool}/${volume}` });
      try {
        const data = written.get(volume)!;
        assert.ok((await client.read(0, data.length)).equals(data), `${pool}/${volume} at 0`);
        assert.ok((await client.read(5 * MiB + 3, data.length)).equals(data), `${pool}/${volume} unaligned`);
      } finally {
        client.destroy();
      }
    }
  }

  /** Starts `nubis daemon storage` with `point` armed; resolves once it serves. */
  async function startDaemon(point: FaultPoint): Promise<ChildProcess> {
    const child = spawn(process.execPath, [join(repoRoot, 'bin/nubis.mjs'), '--data', dir, 'daemon', 'storage'], {
      env: { ...process.env, NUBIS_FAULT_POINTS: point, NUBIS_FAULT_DIR: join(dir, 'faults') },
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    const lines = createInterface({ input: child.stdout! });
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('the storage node did not start')), 30_000);
      lines.on('line', (line) => {
        if (line.includes('storage node serving')) {
          clearTimeout(timer);
          resolve();
        }
      });
      child.once('exit', (code) => reject(new Error(`the storage node exited with ${code}`)));
    });
    return child;
  }

  /** Resolves when the process reaches fault point `point` (it writes a file named after it). */
  function faultReached(point: FaultPoint): { reached: Promise<void>; stop(): void } {
    const watcher = watch(join(dir, 'faults'));
    const reached = new Promise<void>((resolve) => {
      watcher.on('change', (_event, name) => {
        if (name === point) resolve();
      });
    });
    return { reached, stop: () => watcher.close() };
  }

  async function kill(child: ChildProcess): Promise<void> {
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    child.kill('SIGKILL');
    await exited;
  }

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), `nubis-rotate-crash-${process.pid}-`));
    paths = dataPaths(dir);
    await mkdir(join(dir, 'faults'));
    const node = await startStorageNodeIn(paths);
    for (const pool of ['p1', 'p2']) {
      const devices: string[] = [];
      for (let i = 0; i < 2; i++) {
        const path = join(dir, `${pool}-${i}.img`);
        await writeFile(path, '');
        await truncate(path, 32 * MiB);
        devices.push(path);
      }
      await node.service.createPool({ name: pool, layout: 'raid1', devices, allocationUnit: '256K' });
    }
    for (const { pool, volume, encrypted } of VOLUMES) {
      await node.service.createVolume(pool, volume, '8M', { encrypted });
      const data = randomBytes(70_000);
      written.set(volume, data);
      const client = await NbdClient.connect({ path: paths.storageNbdSocket, exportName: `${pool}/${volume}` });
      await client.write(0, data);
      await client.write(5 * MiB + 3, data, { fua: true });
      client.destroy();
    }
    await node.stop();
  });

  after(async () => {
    if (daemon && daemon.exitCode === null && daemon.signalCode === null) await kill(daemon);
    await rm(dir, { recursive: true, force: true });
  });

  const points: Array<{ point: FaultPoint; expect: (status: KeyStatus) => void }> = [
    {
      point: 'storage.key-rotate.after-new-kek',
      expect: (status) => assert.equal(status.kekIdsInUse.includes(status.currentKekId), false, 'no key rewrapped yet'),
    },
    {
      point: 'storage.key-rotate.after-first-rewrap',
      expect: (status) => {
        assert.ok(status.kekIdsInUse.includes(status.currentKekId), 'one key is under the new KEK');
        assert.ok(status.kekIdsInUse.length >= 2, 'and others under older ones: truly midway');
      },
    },
    {
      point: 'storage.key-rotate.before-destroy',
      expect: (status) => assert.deepEqual(status.kekIdsInUse, [status.currentKekId], 'every key rewrapped, old KEKs not yet destroyed'),
    },
  ];
  for (const { point, expect } of points) {
    it(`leaves every volume readable when killed at ${point}`, async () => {
      const keksBefore = (JSON.parse(await readFile(join(paths.storageKeys, 'kek.json'), 'utf8')) as { keks: unknown[] }).keks.length;
      daemon = await startDaemon(point);
      const fault = faultReached(point);
      try {
        const job = await manage<{ status: string }>('POST', '/storage/keys/rotate');
        assert.equal(job.status, 'running');
        await fault.reached;
      } finally {
        fault.stop();
      }
      await kill(daemon);

      const node = await startStorageNodeIn(paths);
      try {
        const status = await manage<KeyStatus>('GET', '/storage/keys');
        assert.equal(status.retiredKekIds.length, keksBefore, 'the key file kept every older KEK');
        expect(status);
        await verifyVolumes();
      } finally {
        await node.stop();
      }
    });
  }

  it('then completes a rotation: every older KEK destroyed, every volume readable', async () => {
    const node = await startStorageNodeIn(paths);
    try {
      const before = await manage<KeyStatus>('GET', '/storage/keys');
      assert.ok(before.retiredKekIds.length >= 3, 'the interrupted rotations left their KEKs');
      const report = await node.service.rotateKeys();
      assert.deepEqual([...report.destroyedKekIds].sort(), [...before.retiredKekIds, before.currentKekId].sort());
      const status = await manage<KeyStatus>('GET', '/storage/keys');
      assert.deepEqual(status.retiredKekIds, []);
      assert.deepEqual(status.kekIdsInUse, [report.kekId]);
      await verifyVolumes();
    } finally {
      await node.stop();
    }
    const node2 = await startStorageNodeIn(paths);
    try {
      await verifyVolumes();
    } finally {
      await node2.stop();
    }
  });

  it('purges the stale wrapped keys of a delete killed before its purge when the pool reopens', async () => {
    const members = [join(dir, 'p2-0.img'), join(dir, 'p2-1.img')];
    const node = await startStorageNodeIn(paths);
    const keysBefore = await wrappedKeysOn(members);
    await node.service.createVolume('p2', 'doomed', '4M', { encrypted: true });
    await node.stop();
    const doomedKeys = [...(await wrappedKeysOn(members))].filter((key) => !keysBefore.has(key));
    assert.equal(doomedKeys.length, 1, "the new volume's wrapped key is in the metadata");

    const point: FaultPoint = 'storage.volume-delete.before-purge';
    daemon = await startDaemon(point);
    const fault = faultReached(point);
    try {
      // The delete never answers: the node stops at the fault point inside it.
      const deleting = requestJson(`unix:${paths.storageManageSocket}`, { method: 'DELETE', path: '/storage/pools/p2/volumes/doomed' }).catch(() => undefined);
      await fault.reached;
      const atCrash = await wrappedKeysOn(members);
      assert.ok(atCrash.has(doomedKeys[0]!), 'at the crash, older metadata still holds the wrapped key');
      await kill(daemon);
      await deleting;
    } finally {
      fault.stop();
    }

    const reopened = await startStorageNodeIn(paths);
    try {
      assert.deepEqual(
        reopened.service.listVolumes('p2').map((v) => v.name),
        ['c'],
        'the delete was durable',
      );
      const left = await wrappedKeysOn(members);
      assert.ok(!left.has(doomedKeys[0]!), 'reopening purged every stale copy of the wrapped key');
      await verifyVolumes();
    } finally {
      await reopened.stop();
    }
  });
});
