import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { gfInv, gfMul, gfPow2, mulXorInto, xorInto } from './gf256.ts';

describe('GF(2^8) for RAID 6', () => {
  it('every non-zero element has an inverse and 2 generates the field', () => {
    const seen = new Set<number>();
    for (let i = 0; i < 255; i++) seen.add(gfPow2(i));
    assert.equal(seen.size, 255);
    for (let a = 1; a < 256; a++) assert.equal(gfMul(a, gfInv(a)), 1);
  });

  it('solves two lost data blocks from P and Q', () => {
    const data = [Buffer.from([1, 2, 3, 250]), Buffer.from([9, 8, 7, 6]), Buffer.from([0, 255, 128, 64])];
    const p = Buffer.alloc(4);
    const q = Buffer.alloc(4);
    data.forEach((d, i) => {
      xorInto(p, d);
      mulXorInto(q, d, gfPow2(i));
    });
    // Lose data 0 and 2: Pxy = D0 ^ D2, Qxy = g^0 D0 ^ g^2 D2.
    const pxy = Buffer.from(p);
    const qxy = Buffer.from(q);
    xorInto(pxy, data[1]!);
    mulXorInto(qxy, data[1]!, gfPow2(1));
    const d0 = Buffer.alloc(4);
    for (let k = 0; k < 4; k++) d0[k] = gfMul(qxy[k]! ^ gfMul(gfPow2(2), pxy[k]!), gfInv(gfPow2(0) ^ gfPow2(2)));
    assert.deepEqual(d0, data[0]);
  });
});
