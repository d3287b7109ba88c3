import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { describe, it } from 'node:test';
import { isNubisError } from '../core/errors.ts';
import { backupKeysOf, chunkIdOf, openChunk, openManifest, sealChunk, sealManifest } from './chunk-crypto.ts';

describe('backup chunk sealing', () => {
  const keys = backupKeysOf(randomBytes(32));
  const data = Buffer.from('the quick brown fox '.repeat(1000));

  it('opens what it sealed, and equal chunks of one tenant share an id while another tenant gets another', () => {
    const id = chunkIdOf(keys, data);
    assert.equal(id, chunkIdOf(keys, Buffer.from(data)));
    assert.notEqual(id, chunkIdOf(backupKeysOf(randomBytes(32)), data));
    const sealed = sealChunk(keys, id, data);
    assert.ok(!sealed.includes(Buffer.from('quick brown fox')), 'no plaintext in the sealed bytes');
    assert.deepEqual(openChunk(keys, id, sealed), data);
    assert.deepEqual(sealChunk(keys, id, data), sealed, 'a chunk always seals to the same bytes (one content per id for the proofs)');
  });

  it('refuses an altered, truncated, swapped or wrongly keyed chunk instead of returning wrong data', () => {
    const id = chunkIdOf(keys, data);
    const sealed = sealChunk(keys, id, data);
    const flipped = Buffer.from(sealed);
    flipped[100] ^= 1;
    const otherData = Buffer.from('another chunk');
    const otherId = chunkIdOf(keys, otherData);
    const cases: Array<[string, () => unknown]> = [
      ['altered', () => openChunk(keys, id, flipped)],
      ['truncated', () => openChunk(keys, id, sealed.subarray(0, sealed.length - 1))],
      ['swapped', () => openChunk(keys, id, sealChunk(keys, otherId, otherData))],
      ['wrong key', () => openChunk(backupKeysOf(randomBytes(32)), id, sealed)],
      ['empty', () => openChunk(keys, id, Buffer.alloc(0))],
    ];
    for (const [what, open] of cases) assert.throws(open, (error) => isNubisError(error, 'BACKUP_CHUNK_CORRUPT'), what);
  });

  it('binds a manifest to its backup id and key', () => {
    const sealed = sealManifest(keys, 'bak-000000000001', { disks: ['secret-name'] });
    assert.ok(!sealed.includes(Buffer.from('secret-name')));
    assert.deepEqual(openManifest(keys, 'bak-000000000001', sealed), { disks: ['secret-name'] });
    assert.throws(
      () => openManifest(keys, 'bak-000000000002', sealed),
      (error) => isNubisError(error, 'BACKUP_KEY_INVALID'),
    );
    assert.throws(
      () => openManifest(backupKeysOf(randomBytes(32)), 'bak-000000000001', sealed),
      (error) => isNubisError(error, 'BACKUP_KEY_INVALID'),
    );
    assert.throws(
      () => backupKeysOf(randomBytes(16)),
      (error) => isNubisError(error, 'BACKUP_KEY_INVALID'),
    );
  });
});
