// Encrypted volumes in the pool engine, on sparse files with a real key file: unaligned and
// sub-sector writes (read-modify-write) against a model, snapshots and clones sharing the key,
// no plaintext on the members, missing or wrong keys refused, rewrapping, crypto shredding.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { isNubisError } from '../../core/errors.ts';
import { FileKeyProvider } from '../keys/file-key-provider.ts';
import { decodeLabel } from './metadata-format.ts';
import { StoragePool } from './storage-pool.ts';

const MiB = 1024 * 1024;
const VOLUME_BYTES = 4 * MiB;
let dir: string;
let counter = 0;

async function devices(count: number, sizeMiB = 40): Promise<string[]> {
  const paths: string[] = [];
  for (let i = 0; i < count; i++) {
    const path = join(dir, `dev-${counter++}.img`);
    await writeFile(path, '');
    await truncate(path, sizeMiB * MiB);
    paths.push(path);
  }
  return paths;
}

async function rejectsWith(promise: Promise<unknown>, code: string, message?: RegExp): Promise<void> {
  await assert.rejects(promise, (error: unknown) => {
    assert.ok(isNubisError(error, code), `expected ${code}, got ${(error as Error).message}`);
    if (message) assert.match((error as Error).message, message);
    return true;
  });
}

async function readAll(pool: StoragePool, volume: string): Promise<Buffer> {
  const device = pool.volumeDevice(volume);
  const buffer = Buffer.alloc(device.sizeBytes);
  await device.read(buffer, 0);
  return buffer;
}

/** Every wrapped key written anywhere on the members (metadata is JSON, so they show as text). */
async function wrappedKeysOn(paths: string[]): Promise<Set<string>> {
  const found = new Set<string>();
  for (const path of paths) {
    for (const match of (await readFile(path)).toString('latin1').matchAll(/"wrappedKey":"([A-Za-z0-9+/=]+)"/g)) found.add(match[1]!);
  }
  return found;
}

async function membersContain(paths: string[], needle: Buffer): Promise<boolean> {
  for (const path of paths) if ((await readFile(path)).includes(needle)) return true;
  return false;
}

/**
 * Random writes of 1 byte to 300 KiB at any offset (most not sector-aligned, some crossing
 * allocation units), a trim and write-zeroes now and then, each mirrored in `model`.
 */
async function scribble(pool: StoragePool, volume: string, model: Buffer, rounds: number): Promise<void> {
  const device = pool.volumeDevice(volume);
  for (let round = 0; round < rounds; round++) {
    const batch: Promise<void>[] = [];
    for (let i = 0; i < 8; i++) {
      const length = [1, 7, 100, 4095, 4097, 70_000, 300_000][Math.floor(Math.random() * 7)]!;
      const position = Math.floor(Math.random() * (model.length - length));
      const data = randomBytes(length);
      data.copy(model, position);
      batch.push(device.write(data, position, { fua: false }));
      // Writes to overlapping ranges in one batch would race: one at a time from here.
      await Promise.all(batch.splice(0));
    }
    if (round % 5 === 4) {
      const position = Math.floor(Math.random() * (model.length - 600_000));
      await device.writeZeroes(position, 600_000, { fua: false, noHole: round % 10 === 9 });
      model.fill(0, position, position + 600_000);
    }
  }
  await device.flush();
}

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'nubis-crypt-unit-'));
});

after(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('encrypted volumes in the pool engine', () => {
  it('reads back every unaligned and sub-sector write, through snapshots, clones and a reopen', async () => {
    const keysDir = join(dir, `keys-${counter++}`);
    const keys = new FileKeyProvider(keysDir);
    const paths = await devices(3);
    const pool = await StoragePool.create({ name: 'rmw', layout: 'raid5', devices: paths, allocationUnitBytes: 256 * 1024, keys });
    const info = await pool.createVolume('v', VOLUME_BYTES, { encrypted: true });
    assert.equal(info.encrypted, true);
    assert.equal((await pool.createVolume('plain', VOLUME_BYTES)).encrypted, false);
    const model = Buffer.alloc(VOLUME_BYTES);
    await scribble(pool, 'v', model, 20);
    assert.ok((await readAll(pool, 'v')).equals(model), 'the volume reads as the model');

    const snapshot = await pool.snapshot('v', 'snap');
    assert.equal(snapshot.encrypted, true, 'a snapshot of an encrypted volume is encrypted');
    const atSnapshot = Buffer.from(model);
    await scribble(pool, 'v', model, 10);
    const clone = await pool.clone('snap', 'copy');
    assert.equal(clone.encrypted, true);
    const cloneModel = Buffer.from(atSnapshot);
    await scribble(pool, 'copy', cloneModel, 10);
    assert.ok((await readAll(pool, 'v')).equals(model), 'the origin has its own later writes');
    assert.ok((await readAll(pool, 'snap')).equals(atSnapshot), 'the snapshot kept the data of its moment (copy-on-write of ciphertext)');
    assert.ok((await readAll(pool, 'copy')).equals(cloneModel), 'the clone has its own writes over shared blocks');
    const scrub = await pool.scrub();
    assert.equal(scrub.checksumErrors, 0, 'checksums are of the stored ciphertext');
    await pool.close();

    const reopened = await StoragePool.open({ devices: paths, keys: new FileKeyProvider(keysDir) });
    assert.ok((await readAll(reopened, 'v')).equals(model));
    assert.ok((await readAll(reopened, 'snap')).equals(atSnapshot));
    assert.ok((await readAll(reopened, 'copy')).equals(cloneModel));
    await reopened.close();
  });

  it('puts no plaintext on the members (a plain volume beside it does, as a control)', async () => {
    const keys = new FileKeyProvider(join(dir, `keys-${counter++}`));
    const paths = await devices(2);
    const pool = await StoragePool.create({ name: 'leak', layout: 'raid1', devices: paths, allocationUnitBytes: 256 * 1024, keys });
    await pool.createVolume('secret', VOLUME_BYTES, { encrypted: true });
    await pool.createVolume('open', VOLUME_BYTES);
    const secret = Buffer.from('NUBIS-SECRET-MARKER-7f3a9c '.repeat(400));
    const control = Buffer.from('NUBIS-PLAIN-MARKER-7f3a9c '.repeat(400));
    // Aligned, unaligned and sub-sector writes: every path of the write code.
    for (const position of [0, 123_457, 2 * MiB + 4093]) await pool.volumeDevice('secret').write(secret, position, { fua: true });
    await pool.volumeDevice('secret').write(secret.subarray(0, 40), 3 * MiB + 5, { fua: true });
    await pool.volumeDevice('open').write(control, 0, { fua: true });
    await pool.close();
    assert.ok(await membersContain(paths, Buffer.from('NUBIS-PLAIN-MARKER')), 'the search finds plaintext where there is some');
    assert.ok(!(await membersContain(paths, Buffer.from('NUBIS-SECRET-MARKER'))), 'no plaintext of the encrypted volume on any member');
  });

  it('refuses to read without the key or with a wrong one, and plain volumes carry on', async () => {
    const keysDir = join(dir, `keys-${counter++}`);
    const paths = await devices(1);
    const pool = await StoragePool.create({
      name: 'nokey',
      layout: 'raid0',
      devices: paths,
      allocationUnitBytes: 256 * 1024,
      keys: new FileKeyProvider(keysDir),
    });
    await pool.createVolume('enc', MiB, { encrypted: true });
    await pool.createVolume('plain', MiB);
    await pool.volumeDevice('enc').write(Buffer.alloc(4096, 1), 0, { fua: true });
    await pool.volumeDevice('plain').write(Buffer.alloc(4096, 2), 0, { fua: true });
    await pool.close();

    const keyless = await StoragePool.open({ devices: paths });
    await rejectsWith(keyless.volumeDevice('enc').read(Buffer.alloc(4096), 0), 'VOLUME_KEY_UNAVAILABLE', /Volume enc of pool nokey is encrypted/);
    await rejectsWith(keyless.volumeDevice('enc').write(Buffer.alloc(4096), 0, { fua: false }), 'VOLUME_KEY_UNAVAILABLE');
    await rejectsWith(keyless.createVolume('more', MiB, { encrypted: true }), 'ENCRYPTION_UNAVAILABLE');
    await rejectsWith(keyless.snapshot('enc', 's'), 'VOLUME_KEY_UNAVAILABLE');
    assert.equal((await readAll(keyless, 'plain'))[0], 2);
    await keyless.close();

    const wrong = await StoragePool.open({ devices: paths, keys: new FileKeyProvider(join(dir, `keys-${counter++}`)) });
    await rejectsWith(wrong.volumeDevice('enc').read(Buffer.alloc(4096), 0), 'VOLUME_KEY_UNAVAILABLE', /does not hold/);
    await wrong.close();
    const right = await StoragePool.open({ devices: paths, keys: new FileKeyProvider(keysDir) });
    assert.equal((await readAll(right, 'enc'))[0], 1);
    await right.close();
  });

  it('rewraps every key under a new KEK without touching data; the old KEK can then go', async () => {
    const keysDir = join(dir, `keys-${counter++}`);
    const keys = new FileKeyProvider(keysDir);
    const paths = await devices(2);
    const pool = await StoragePool.create({ name: 'rot', layout: 'raid1', devices: paths, allocationUnitBytes: 256 * 1024, keys });
    await pool.createVolume('a', MiB, { encrypted: true });
    await pool.createVolume('b', MiB, { encrypted: true });
    const data = randomBytes(MiB);
    await pool.volumeDevice('a').write(data, 0, { fua: true });
    await pool.snapshot('a', 'a-snap');
    const dataStart = decodeLabel(await readFile(paths[0]!))!.dataStartBytes;
    const dataBefore = (await readFile(paths[0]!)).subarray(dataStart);
    assert.ok(dataBefore.some((b) => b !== 0));
    const rotation = await keys.rotate();
    const rewrapped: string[] = [];
    assert.equal(await pool.rewrapKeys((volume) => void rewrapped.push(volume)), 3);
    assert.deepEqual(rewrapped.sort(), ['a', 'a-snap', 'b']);
    assert.deepEqual([...pool.kekIdsInUse()], [rotation.kekId]);
    await rotation.retire();
    await pool.close();
    assert.ok((await readFile(paths[0]!)).subarray(dataStart).equals(dataBefore), 'no data block changed');
    const reopened = await StoragePool.open({ devices: paths, keys: new FileKeyProvider(keysDir) });
    assert.ok((await readAll(reopened, 'a')).equals(data));
    assert.ok((await readAll(reopened, 'a-snap')).equals(data));
    await reopened.close();
  });

  it('shreds the key with the last volume that holds it: no wrapped copy is left in any metadata', async () => {
    const keys = new FileKeyProvider(join(dir, `keys-${counter++}`));
    const paths = await devices(2);
    const pool = await StoragePool.create({ name: 'shred', layout: 'raid1', devices: paths, allocationUnitBytes: 256 * 1024, keys });
    await pool.createVolume('keep', MiB, { encrypted: true });
    await pool.createVolume('gone', MiB, { encrypted: true });
    await pool.volumeDevice('gone').write(Buffer.alloc(MiB, 9), 0, { fua: true });
    await pool.snapshot('gone', 'gone-snap');
    // Enough journal records that older ones hold the keys too.
    for (let i = 0; i < 20; i++) await pool.volumeDevice('keep').write(randomBytes(4096), i * 4096, { fua: true });
    await pool.commit();
    const before = await wrappedKeysOn(paths);
    assert.ok(before.size >= 3, 'the metadata holds the wrapped keys of the three volumes');

    assert.deepEqual(await pool.deleteVolume('gone'), { keyDestroyed: false }, 'the snapshot still holds the key');
    assert.equal((await readAll(pool, 'gone-snap'))[0], 9);
    assert.deepEqual(await pool.deleteVolume('gone-snap'), { keyDestroyed: true });
    const left = await wrappedKeysOn(paths);
    assert.equal(left.size, 1, `only the kept volume's wrapped key is left on the members (found ${left.size})`);
    assert.ok(before.has([...left][0]!));
    await pool.close();
    const reopened = await StoragePool.open({ devices: paths, keys });
    assert.deepEqual(
      reopened.listVolumes().map((v) => v.name),
      ['keep'],
    );
    await reopened.close();
  });
});
