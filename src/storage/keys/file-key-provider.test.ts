// The key file provider: wrapped keys bound to their KEK and volume, the file's modes whatever
// the umask, rotation that keeps old KEKs until retired, and refusal of unsafe or broken files.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { chmod, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { isNubisError } from '../../core/errors.ts';
import { FileKeyProvider } from './file-key-provider.ts';

let root: string;
let counter = 0;

async function rejectsWith(promise: Promise<unknown>, code: string, message?: RegExp): Promise<void> {
  await assert.rejects(promise, (error: unknown) => {
    assert.ok(isNubisError(error, code), `expected ${code}, got ${(error as Error).message}`);
    if (message) assert.match((error as Error).message, message);
    return true;
  });
}

before(async () => {
  root = await mkdtemp(join(tmpdir(), 'nubis-keys-'));
});

after(async () => {
  await rm(root, { recursive: true, force: true });
});

describe('FileKeyProvider', () => {
  it('makes its key file 0600 in a 0700 folder whatever the umask, and unwraps what it wrapped', async () => {
    const dir = join(root, `k${counter++}`);
    const previous = process.umask(0);
    let provider: FileKeyProvider;
    try {
      provider = new FileKeyProvider(dir);
      assert.equal((await provider.status()).currentKekId, undefined, 'no key file before the first key');
      const dataKey = randomBytes(64);
      const wrapped = await provider.wrap(dataKey, 'pool-a/1');
      assert.equal((await stat(provider.path)).mode & 0o777, 0o600);
      assert.equal((await stat(dir)).mode & 0o777, 0o700);
      assert.ok((await provider.unwrap(wrapped, 'pool-a/1')).equals(dataKey));
      assert.ok(!Buffer.from(wrapped.wrapped, 'base64').includes(dataKey.subarray(0, 16)), 'the wrapped bytes do not hold the key');
      const reopened = new FileKeyProvider(dir);
      assert.ok((await reopened.unwrap(wrapped, 'pool-a/1')).equals(dataKey), 'the key file is what makes it unwrap');
    } finally {
      process.umask(previous);
    }
  });

  it('refuses a wrapped key for another volume, damaged, or under an unknown KEK', async () => {
    const provider = new FileKeyProvider(join(root, `k${counter++}`));
    const wrapped = await provider.wrap(randomBytes(64), 'pool-a/1');
    await rejectsWith(provider.unwrap(wrapped, 'pool-a/2'), 'VOLUME_KEY_UNAVAILABLE', /does not authenticate/);
    const bytes = Buffer.from(wrapped.wrapped, 'base64');
    bytes[20]! ^= 1;
    await rejectsWith(provider.unwrap({ ...wrapped, wrapped: bytes.toString('base64') }, 'pool-a/1'), 'VOLUME_KEY_UNAVAILABLE');
    await rejectsWith(provider.unwrap({ ...wrapped, kekId: 'kek-000000000000' }, 'pool-a/1'), 'VOLUME_KEY_UNAVAILABLE', /does not hold/);
    const other = new FileKeyProvider(join(root, `k${counter++}`));
    await other.wrap(randomBytes(64), 'x/1');
    await rejectsWith(other.unwrap(wrapped, 'pool-a/1'), 'VOLUME_KEY_UNAVAILABLE', /does not hold/);
  });

  it('rotates: new keys under the new KEK, old ones unwrap until retire destroys the old KEK', async () => {
    const dir = join(root, `k${counter++}`);
    const provider = new FileKeyProvider(dir);
    const dataKey = randomBytes(64);
    const old = await provider.wrap(dataKey, 'p/1');
    const oldFile = await readFile(provider.path, 'utf8');
    const oldKekKey = (JSON.parse(oldFile) as { keks: Array<{ key: string }> }).keks[0]!.key;
    const rotation = await provider.rotate();
    assert.notEqual(rotation.kekId, old.kekId);
    const status = await provider.status();
    assert.equal(status.currentKekId, rotation.kekId);
    assert.deepEqual(status.retiredKekIds, [old.kekId]);
    const fresh = await provider.wrap(dataKey, 'p/1');
    assert.equal(fresh.kekId, rotation.kekId);
    assert.ok((await new FileKeyProvider(dir).unwrap(old, 'p/1')).equals(dataKey), 'both KEKs are in the file until retire');
    assert.deepEqual(await rotation.retire(), { destroyedKekIds: [old.kekId] });
    await rejectsWith(provider.unwrap(old, 'p/1'), 'VOLUME_KEY_UNAVAILABLE');
    await rejectsWith(new FileKeyProvider(dir).unwrap(old, 'p/1'), 'VOLUME_KEY_UNAVAILABLE');
    assert.ok((await new FileKeyProvider(dir).unwrap(fresh, 'p/1')).equals(dataKey));
    assert.ok(!(await readFile(provider.path, 'utf8')).includes(oldKekKey), 'the old KEK is gone from the file');
    assert.deepEqual((await provider.status()).retiredKekIds, []);
    assert.equal((await stat(provider.path)).mode & 0o777, 0o600);
  });

  it('refuses a key file others may read, and a broken one, naming the file', async () => {
    const dir = join(root, `k${counter++}`);
    const provider = new FileKeyProvider(dir);
    const wrapped = await provider.wrap(randomBytes(64), 'p/1');
    await chmod(provider.path, 0o644);
    await rejectsWith(new FileKeyProvider(dir).unwrap(wrapped, 'p/1'), 'KEY_FILE_UNSAFE', /chmod 600/);
    await chmod(provider.path, 0o600);
    const text = await readFile(provider.path, 'utf8');
    await writeFile(provider.path, text.replace(/"key": "[^"]+"/, '"key": "c2hvcnQ="'));
    await rejectsWith(new FileKeyProvider(dir).unwrap(wrapped, 'p/1'), 'KEY_FILE_CORRUPT', new RegExp(provider.path));
    await writeFile(provider.path, 'not json');
    await rejectsWith(new FileKeyProvider(dir).status(), 'KEY_FILE_CORRUPT', /not JSON/);
  });
});
