import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  BLOCK_BYTES,
  blockCount,
  blockSectors,
  ELEMENT_BYTES,
  elementFromBytes,
  elementToBytes,
  FIELD_PRIME,
  modP,
  SECTOR_BYTES,
  SECTORS_PER_BLOCK,
} from './field.ts';

describe('the field and the block layout', () => {
  it('cuts a block into 133 sectors of 31 bytes, each below p, the last one zero-padded', () => {
    assert.equal(SECTORS_PER_BLOCK, 133);
    const ones = blockSectors(Buffer.alloc(BLOCK_BYTES, 0xff));
    assert.equal(ones.length, SECTORS_PER_BLOCK);
    const full = (1n << BigInt(SECTOR_BYTES * 8)) - 1n;
    for (const sector of ones.slice(0, -1)) assert.equal(sector, full);
    // 4096 = 132 x 31 + 4: the last sector holds 4 bytes, then 27 zero bytes.
    assert.equal(ones.at(-1), 0xffffffffn << 216n);
    assert.ok(full < FIELD_PRIME);
  });

  it('reads a short block as if zero-padded to 4096 bytes', () => {
    const block = Buffer.from('0102', 'hex');
    const sectors = blockSectors(block);
    assert.equal(sectors[0], 0x0102n << BigInt((SECTOR_BYTES - 2) * 8));
    assert.ok(sectors.slice(1).every((sector) => sector === 0n));
    assert.deepEqual(blockSectors(Buffer.alloc(0)), new Array(SECTORS_PER_BLOCK).fill(0n));
  });

  it('counts blocks with the last one partial', () => {
    assert.deepEqual([0, 1, 4096, 4097, 4 * 1024 * 1024].map(blockCount), [0, 1, 1, 2, 1024]);
  });

  it('writes elements as 32 big-endian bytes and reads back only values below p', () => {
    for (const x of [0n, 1n, FIELD_PRIME - 1n, 0x1234n << 200n]) assert.equal(elementFromBytes(elementToBytes(x)), x);
    assert.equal(elementFromBytes(Buffer.from(FIELD_PRIME.toString(16), 'hex')), undefined);
    assert.equal(elementFromBytes(Buffer.alloc(ELEMENT_BYTES, 0xff)), undefined);
    assert.equal(elementFromBytes(Buffer.alloc(31)), undefined);
    assert.throws(() => elementToBytes(FIELD_PRIME), RangeError);
    assert.equal(modP(-1n), FIELD_PRIME - 1n);
  });
});
