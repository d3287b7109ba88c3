// Encrypted volumes through the real storage node: created over its management socket (as the
// control plane does), written and read through its NBD socket by our NBD client and by QEMU's
// (qemu-io). The member device files never hold the plaintext (grepped for a marker, with a plain
// volume as the control); snapshots and clones stay encrypted; the key file is 0600 in a 0700
// folder; a rotation rewraps every key and destroys the old KEK; and after a delete, nothing left
// on the node decrypts the volume's blocks, which are still on the members: every wrapped key
// found in any file, tried under every KEK in the key file, by an independent decryption with
// node:crypto (the same search finds the plaintext before the delete, so it can fail).
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createDecipheriv } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm, stat, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { OperationContext } from '../../src/control/operations.ts';
import type { StorageCatalogue } from '../../src/control/storage.ts';
import { dataPaths } from '../../src/core/paths.ts';
import { NbdClient } from '../../src/storage/nbd/nbd-client.ts';
import { decodeLabel } from '../../src/storage/pool/metadata-format.ts';
import { startStorageNodeIn, type StorageNode, storageNodeCatalogue } from '../helpers/storage-node.ts';

const MiB = 1024 * 1024;
const SECTOR = 4096;

interface VolumeView {
  name: string;
  kind: string;
  encrypted: boolean;
}

/** qemu-io over NBD: its exit code and what it printed. */
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

/** Every regular file under `root`. */
async function filesUnder(root: string): Promise<string[]> {
  const files: string[] = [];
  for (const entry of await readdir(root, { withFileTypes: true })) {
    const path = join(root, entry.name);
    if (entry.isDirectory()) files.push(...(await filesUnder(path)));
    else if (entry.isFile()) files.push(path);
  }
  return files;
}

/**
 * Every data key that anything on the node yields: each wrapped key in any file, unwrapped with
 * each KEK of the key file for each volume id the pool may have used (AES-256-GCM, the format
 * file-key-provider.ts documents), by node:crypto alone.
 */
async function dataKeysOnNode(root: string, keyFile: string, poolUuid: string): Promise<Buffer[]> {
  const keks = (JSON.parse(await readFile(keyFile, 'utf8')) as { keks: Array<{ id: string; key: string }> }).keks;
  const wrappedKeys = new Set<string>();
  for (const file of await filesUnder(root)) {
    for (const match of (await readFile(file)).toString('latin1').matchAll(/"wrappedKey":"([A-Za-z0-9+/=]+)"/g)) wrappedKeys.add(match[1]!);
  }
  const found: Buffer[] = [];
  for (const wrapped of wrappedKeys) {
    const sealed = Buffer.from(wrapped, 'base64');
    for (const kek of keks) {
      for (let volumeId = 1; volumeId <= 40; volumeId++) {
        try {
          const decipher = createDecipheriv('aes-256-gcm', Buffer.from(kek.key, 'base64'), sealed.subarray(0, 12));
          decipher.setAAD(Buffer.from(`nubis/volume-data-key/v1\0${kek.id}\0${poolUuid}/${volumeId}`));
          decipher.setAuthTag(sealed.subarray(sealed.length - 16));
          found.push(Buffer.concat([decipher.update(sealed.subarray(12, sealed.length - 16)), decipher.final()]));
        } catch {
          // Not this KEK or volume.
        }
      }
    }
  }
  return found;
}

/** The non-zero 4 KiB blocks of the data areas of `members` (after their metadata). */
async function dataBlocks(members: string[]): Promise<Buffer[]> {
  const blocks: Buffer[] = [];
  for (const member of members) {
    const bytes = await readFile(member);
    const start = decodeLabel(bytes)!.dataStartBytes;
    for (let at = start; at < bytes.length; at += SECTOR) {
      const block = bytes.subarray(at, at + SECTOR);
      if (block.some((b) => b !== 0)) blocks.push(block);
    }
  }
  return blocks;
}

/** Whether any `key` decrypts any block, as sector 0 of a volume, to something starting with `marker`. */
function anyDecryptsTo(blocks: Buffer[], keys: Buffer[], marker: Buffer): boolean {
  const tweak = Buffer.alloc(16);
  for (const key of keys) {
    for (const block of blocks) {
      const decipher = createDecipheriv('aes-256-xts', key, tweak);
      if (decipher.update(block).subarray(0, marker.length).equals(marker)) return true;
    }
  }
  return false;
}

async function membersHold(members: string[], needle: string): Promise<boolean> {
  for (const member of members) if ((await readFile(member)).includes(Buffer.from(needle))) return true;
  return false;
}

describe('encrypted volumes on the storage node', () => {
  let dir: string;
  let paths: ReturnType<typeof dataPaths>;
  let node: StorageNode;
  let catalogue: StorageCatalogue;
  const clients: NbdClient[] = [];

  async function member(name: string, sizeMiB: number): Promise<string> {
    const path = join(dir, name);
    await writeFile(path, '');
    await truncate(path, sizeMiB * MiB);
    return path;
  }

  async function connect(exportName: string): Promise<NbdClient> {
    const client = await NbdClient.connect({ path: paths.storageNbdSocket, exportName });
    clients.push(client);
    return client;
  }

  const volumes = (pool: string): string => `/storage/pools/${pool}/volumes`;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), `nubis-crypt-${process.pid}-`));
    paths = dataPaths(dir);
    node = await startStorageNodeIn(paths);
    catalogue = storageNodeCatalogue(paths);
  });
  after(async () => {
    for (const client of clients) client.destroy();
    await node?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  it('keeps the plaintext written through NBD off the member devices; QEMU reads and writes it all the same', async () => {
    const members = [await member('a0.img', 64), await member('a1.img', 64)];
    await node.service.createPool({ name: 'p1', layout: 'raid1', devices: members, allocationUnit: '256K' });
    const secret = await catalogue.call<VolumeView>({ method: 'POST', path: volumes('p1'), body: { name: 'secret', size: '16M', encrypted: true } });
    const open = await catalogue.call<VolumeView>({ method: 'POST', path: volumes('p1'), body: { name: 'open', size: '16M' } });
    assert.equal(secret.encrypted, true);
    assert.equal(open.encrypted, false);
    assert.equal((await catalogue.call<VolumeView>({ method: 'GET', path: `${volumes('p1')}/secret` })).encrypted, true);
    const bad = await catalogue.call({ method: 'POST', path: volumes('p1'), body: { name: 'x', size: '1M', encrypted: 'yes' } }).catch((e: Error) => e);
    assert.match(String(bad), /encrypted is true or false/);

    assert.equal((await stat(paths.storageKeys)).mode & 0o777, 0o700, 'the key folder is closed');
    assert.equal((await stat(join(paths.storageKeys, 'kek.json'))).mode & 0o777, 0o600, 'the key file is its owner’s alone');

    const marker = Buffer.from('NUBIS-CRYPT-MARKER-5e1f '.repeat(300));
    const secretClient = await connect('p1/secret');
    for (const offset of [0, 8191, 5 * MiB + 17]) await secretClient.write(offset, marker);
    await secretClient.write(9 * MiB + 4000, marker.subarray(0, 100), { fua: true });
    await secretClient.flush();
    assert.ok((await secretClient.read(8191, marker.length)).equals(marker), 'reads back through NBD');
    const openClient = await connect('p1/open');
    await openClient.write(0, Buffer.from('NUBIS-PLAIN-CONTROL-5e1f '.repeat(300)), { fua: true });

    const uri = `nbd+unix:///p1/secret?socket=${paths.storageNbdSocket}`;
    const wrote = await qemuIo(uri, ['write -P 0x5a 12M 1M', 'flush']);
    assert.equal(wrote.code, 0, wrote.output);
    const read = await qemuIo(uri, ['read -P 0x5a 12M 1M', 'read -P 0x5a 12M 4096']);
    assert.equal(read.code, 0, read.output);
    assert.doesNotMatch(read.output, /Pattern verification failed/);

    assert.ok(await membersHold(members, 'NUBIS-PLAIN-CONTROL'), 'the grep finds plaintext where there is some');
    assert.ok(!(await membersHold(members, 'NUBIS-CRYPT-MARKER')), 'the encrypted volume left no plaintext on the members');
    assert.ok(!(await membersHold(members, Buffer.alloc(4096, 0x5a).toString('latin1'))), "nor QEMU's pattern");
  });

  it('keeps snapshots and clones encrypted, sharing the data', async () => {
    const snapshot = await catalogue.call<VolumeView>({ method: 'POST', path: `${volumes('p1')}/secret/snapshot`, body: { name: 'secret-snap' } });
    const clone = await catalogue.call<VolumeView>({ method: 'POST', path: `${volumes('p1')}/secret-snap/clone`, body: { name: 'secret-copy' } });
    assert.equal(snapshot.encrypted, true);
    assert.equal(clone.encrypted, true);
    const origin = await connect('p1/secret');
    await origin.write(0, Buffer.alloc(SECTOR, 1), { fua: true });
    const copy = await connect('p1/secret-copy');
    assert.ok((await copy.read(8191, 24)).equals(Buffer.from('NUBIS-CRYPT-MARKER-5e1f ')), 'the clone reads the shared blocks');
    await copy.write(3 * MiB + 1, Buffer.from('NUBIS-CLONE-MARKER'), { fua: true });
    assert.equal((await copy.read(3 * MiB + 1, 18)).toString(), 'NUBIS-CLONE-MARKER');
    assert.equal((await (await connect('p1/secret-snap')).read(0, 24)).toString(), 'NUBIS-CRYPT-MARKER-5e1f ', 'the snapshot kept its moment');
    const members = ['a0.img', 'a1.img'].map((m) => join(dir, m));
    assert.ok(!(await membersHold(members, 'NUBIS-CLONE-MARKER')));
  });

  it('rotates the KEK: every key rewrapped with progress, the old KEK destroyed, the data readable', async () => {
    const before = await catalogue.call<{ currentKekId: string; encryptedVolumes: number }>({ method: 'GET', path: '/storage/keys' });
    assert.equal(before.encryptedVolumes, 3);
    const reports: string[] = [];
    const op: OperationContext = { id: 'op-test', signal: new AbortController().signal, report: async (_stage, message) => void reports.push(message) };
    const result = (await catalogue.followJob(await catalogue.startJob('/storage/keys/rotate', {}), op, 'rewrapping')) as {
      kekId: string;
      rewrappedKeys: number;
      destroyedKekIds: string[];
    };
    assert.equal(result.rewrappedKeys, 3);
    assert.match(reports.at(-1) ?? '', /^3 of 3 volume keys rewrapped \(last: p1\//, 'the operation hears how far it got');
    assert.deepEqual(result.destroyedKekIds, [before.currentKekId]);
    const after = await catalogue.call<{ currentKekId: string; retiredKekIds: string[]; kekIdsInUse: string[] }>({ method: 'GET', path: '/storage/keys' });
    assert.deepEqual(after.kekIdsInUse, [result.kekId]);
    assert.deepEqual(after.retiredKekIds, []);
    const keyFile = await readFile(join(paths.storageKeys, 'kek.json'), 'utf8');
    assert.ok(!keyFile.includes(before.currentKekId), 'the old KEK is gone from the key file');
    // The pool reopens with the new KEK alone. (NbdServer.close waits for connected clients
    // before it shuts them down, so ours go first.)
    for (const client of clients.splice(0)) client.destroy();
    await node.stop();
    node = await startStorageNodeIn(paths);
    assert.equal((await (await connect('p1/secret')).read(8191, 24)).toString(), 'NUBIS-CRYPT-MARKER-5e1f ');
    assert.equal((await (await connect('p1/secret-copy')).read(3 * MiB + 1, 18)).toString(), 'NUBIS-CLONE-MARKER');
  });

  it('shreds a deleted volume: its blocks stay on the members, but nothing left on the node decrypts them', async () => {
    const members = [await member('s0.img', 32), await member('s1.img', 32)];
    const pool = await node.service.createPool({ name: 'p2', layout: 'raid1', devices: members, allocationUnit: '256K' });
    await catalogue.call({ method: 'POST', path: volumes('p2'), body: { name: 'kept', size: '4M', encrypted: true } });
    await catalogue.call({ method: 'POST', path: volumes('p2'), body: { name: 'doomed', size: '4M', encrypted: true } });
    const marker = Buffer.from('NUBIS-SHRED-MARKER-a41c');
    const doomed = await connect('p2/doomed');
    await doomed.write(0, Buffer.concat([marker, Buffer.alloc(SECTOR - marker.length, 0x33)]), { fua: true });
    await (await connect('p2/kept')).write(0, Buffer.concat([Buffer.from('NUBIS-KEPT'), Buffer.alloc(SECTOR - 10, 0x44)]), { fua: true });
    doomed.destroy();

    const blocksBefore = await dataBlocks(members);
    const keyFile = join(paths.storageKeys, 'kek.json');
    assert.ok(anyDecryptsTo(blocksBefore, await dataKeysOnNode(dir, keyFile, pool.uuid), marker), 'before the delete, what is on the node decrypts the volume');

    await catalogue.call({ method: 'DELETE', path: `${volumes('p2')}/doomed` });
    const blocksAfter = await dataBlocks(members);
    const stillThere = blocksBefore.filter((block) => blocksAfter.some((b) => b.equals(block)));
    assert.equal(stillThere.length, blocksBefore.length, "the deleted volume's ciphertext is still on the members (space not overwritten)");
    const keysLeft = await dataKeysOnNode(dir, keyFile, pool.uuid);
    assert.equal(keysLeft.length, 1, 'only the kept volume’s key can still be unwrapped');
    assert.ok(!anyDecryptsTo(blocksAfter, keysLeft, marker), 'no key left on the node decrypts the deleted volume');
    assert.ok(anyDecryptsTo(blocksAfter, keysLeft, Buffer.from('NUBIS-KEPT')), 'while the kept volume stays readable the same way');
  });
});
