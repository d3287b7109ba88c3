import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { describe, it } from 'node:test';
import { CompactRange, consistencyProof, EMPTY_ROOT, inclusionProof, leafHash, merkleRoot, nodeHash, verifyConsistency, verifyInclusion } from './merkle.ts';

// An independent verifier, written again from the text of RFC 9162 on purpose: the proofs of
// merkle.ts must convince a verifier that shares no code with it. Its own hashing, BigInt
// arithmetic (LSB and right-shift exactly as the RFC says them), and the RFC's variable names.

function sha256(...parts: Uint8Array[]): Buffer {
  const hash = createHash('sha256');
  for (const part of parts) hash.update(part);
  return hash.digest();
}

/** HASH(0x01 || left || right), RFC 9162 2.1.1. */
function rfcNode(left: Uint8Array, right: Uint8Array): Buffer {
  return sha256(Uint8Array.of(1), left, right);
}

const LSB = (x: bigint): boolean => (x & 1n) === 1n;

/** RFC 9162 2.1.3.2, Verifying an Inclusion Proof, step by step. */
function rfcVerifyInclusion(hash: Buffer, leaf_index: number, tree_size: number, inclusion_path: readonly Buffer[], root_hash: Buffer): boolean {
  // 1. If leaf_index is greater than or equal to tree_size, fail.
  if (leaf_index >= tree_size) return false;
  // 2. Set fn to leaf_index and sn to tree_size - 1.
  let fn = BigInt(leaf_index);
  let sn = BigInt(tree_size) - 1n;
  // 3. Set r to hash.
  let r: Buffer = hash;
  // 4. For each value p in the inclusion_path array:
  for (const p of inclusion_path) {
    // a. If sn is 0, stop the iteration and fail.
    if (sn === 0n) return false;
    // b. If LSB(fn) is set, or if fn is equal to sn, then:
    if (LSB(fn) || fn === sn) {
      // i. Set r to HASH(0x01 || p || r).
      r = rfcNode(p, r);
      // ii. If LSB(fn) is not set, right-shift both fn and sn equally until either LSB(fn) is set or fn is 0.
      if (!LSB(fn)) {
        while (!LSB(fn) && fn !== 0n) {
          fn >>= 1n;
          sn >>= 1n;
        }
      }
    } else {
      // Otherwise: set r to HASH(0x01 || r || p).
      r = rfcNode(r, p);
    }
    // c. Finally, right-shift both fn and sn one time.
    fn >>= 1n;
    sn >>= 1n;
  }
  // 5. Success when sn is 0 and r equals root_hash.
  return sn === 0n && r.equals(root_hash);
}

/**
 * RFC 9162 2.1.4.2, Verifying Consistency between Two Tree Heads, for 0 < first < second. For
 * first == second, 2.1.4.1 defines the proof as empty (SUBPROOF(m, D[m], true) = {}), and the
 * two trees are the same tree, so their hashes must be equal.
 */
function rfcVerifyConsistency(first: number, second: number, first_hash: Buffer, second_hash: Buffer, proof: readonly Buffer[]): boolean {
  if (first === second) return proof.length === 0 && first_hash.equals(second_hash);
  if (!(first > 0 && first < second)) return false;
  const consistency_path = [...proof];
  // 1. If consistency_path is an empty array, stop and fail.
  if (consistency_path.length === 0) return false;
  // 2. If first is an exact power of 2, then prepend first_hash to the consistency_path array.
  if ((BigInt(first) & (BigInt(first) - 1n)) === 0n) consistency_path.unshift(first_hash);
  // 3. Set fn to first - 1 and sn to second - 1.
  let fn = BigInt(first) - 1n;
  let sn = BigInt(second) - 1n;
  // 4. If LSB(fn) is set, then right-shift both fn and sn equally until LSB(fn) is not set.
  while (LSB(fn)) {
    fn >>= 1n;
    sn >>= 1n;
  }
  // 5. Set both fr and sr to the first value in the consistency_path array.
  let fr = consistency_path[0];
  let sr = consistency_path[0];
  // 6. For each subsequent value c in the consistency_path array:
  for (const c of consistency_path.slice(1)) {
    // a. If sn is 0, then stop the iteration and fail.
    if (sn === 0n) return false;
    // b. If LSB(fn) is set, or if fn is equal to sn, then:
    if (LSB(fn) || fn === sn) {
      // i. Set fr to HASH(0x01 || c || fr). ii. Set sr to HASH(0x01 || c || sr).
      fr = rfcNode(c, fr);
      sr = rfcNode(c, sr);
      // iii. If LSB(fn) is not set, right-shift both fn and sn equally until either LSB(fn) is set or fn is 0.
      if (!LSB(fn)) {
        while (!LSB(fn) && fn !== 0n) {
          fn >>= 1n;
          sn >>= 1n;
        }
      }
    } else {
      // Otherwise: set sr to HASH(0x01 || sr || c).
      sr = rfcNode(sr, c);
    }
    // c. Finally, right-shift both fn and sn one time.
    fn >>= 1n;
    sn >>= 1n;
  }
  // 7. fr equals first_hash, sr equals second_hash, and sn is 0.
  return fr.equals(first_hash) && sr.equals(second_hash) && sn === 0n;
}

/** A copy of `proof` with one byte of element `element` flipped. */
function flipped(proof: readonly Buffer[], element: number, byte = 7): Buffer[] {
  return proof.map((hash, i) => {
    if (i !== element) return hash;
    const copy = Buffer.from(hash);
    copy[byte] ^= 0x01;
    return copy;
  });
}

function flippedHash(hash: Buffer): Buffer {
  return flipped([hash], 0)[0];
}

const hex = (buffer: Buffer): string => buffer.toString('hex');
const MAX_SIZE = 70;
const LEAVES = Array.from({ length: MAX_SIZE }, (_, i) => leafHash(`{"seq":${i + 1},"action":"test"}`));
const ROOTS = Array.from({ length: MAX_SIZE + 1 }, (_, size) => merkleRoot(LEAVES.slice(0, size)));

describe('leaf and node hashes (RFC 9162 2.1.1)', () => {
  it('prefix 0x00 for a leaf and 0x01 for a node, and hash a string as its UTF-8 bytes', () => {
    const data = Buffer.from('{"actor":"zoë"}', 'utf8');
    assert.deepEqual(leafHash(data), sha256(Uint8Array.of(0), data));
    assert.deepEqual(leafHash('{"actor":"zoë"}'), leafHash(data));
    const [a, b] = [leafHash('a'), leafHash('b')];
    assert.deepEqual(nodeHash(a, b), sha256(Uint8Array.of(1), a, b));
    assert.equal(hex(EMPTY_ROOT), 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855');
  });
});

describe('merkleRoot (RFC 9162 2.1.1)', () => {
  it('matches values computed by hand for 0, 1, 2 and 3 leaves', () => {
    const [d0, d1, d2] = ['zero', 'one', 'two'].map((text) => sha256(Uint8Array.of(0), Buffer.from(text)));
    assert.deepEqual(merkleRoot([]), sha256());
    assert.deepEqual(merkleRoot([d0]), d0);
    assert.deepEqual(merkleRoot([d0, d1]), sha256(Uint8Array.of(1), d0, d1));
    // n = 3: k = 2, so MTH = HASH(0x01 || MTH(d0, d1) || MTH(d2)), and MTH(d2) is the leaf hash.
    assert.deepEqual(merkleRoot([d0, d1, d2]), sha256(Uint8Array.of(1), sha256(Uint8Array.of(1), d0, d1), d2));
  });

  it('matches the Certificate Transparency reference roots for 0 to 8 leaves', () => {
    // The eight test inputs and tree heads published with the RFC 6962 reference implementation
    // (certificate-transparency, merkle_tree_test.cc); RFC 9162 hashes the tree the same way.
    const inputs = ['', '00', '10', '2021', '3031', '40414243', '5051525354555657', '606162636465666768696a6b6c6d6e6f'];
    const roots = [
      'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855',
      '6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d',
      'fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125',
      'aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77',
      'd37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7',
      '4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4',
      '76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef',
      'ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c',
      '5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328',
    ];
    const leaves = inputs.map((input) => leafHash(Buffer.from(input, 'hex')));
    for (let size = 0; size <= leaves.length; size += 1) assert.equal(hex(merkleRoot(leaves.slice(0, size))), roots[size], `size ${size}`);
  });

  it('returns a copy of the empty root, so a caller cannot change EMPTY_ROOT through it', () => {
    const root = merkleRoot([]);
    root[0] ^= 0xff;
    assert.equal(hex(EMPTY_ROOT), 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855');
  });
});

describe('inclusion proofs (RFC 9162 2.1.3)', () => {
  it('verify with the independent RFC verifier for every leaf of every tree of 1 to 70 leaves', () => {
    for (let size = 1; size <= MAX_SIZE; size += 1) {
      for (let index = 0; index < size; index += 1) {
        const proof = inclusionProof(LEAVES, index, size);
        const where = `leaf ${index} of ${size}`;
        assert.equal(rfcVerifyInclusion(LEAVES[index], index, size, proof, ROOTS[size]), true, where);
        assert.equal(verifyInclusion(LEAVES[index], index, size, proof, ROOTS[size]), true, where);
      }
    }
  });

  it('fail with a flipped byte in any element, a wrong index, a wrong size, a wrong root or a wrong leaf', () => {
    for (let size = 1; size <= MAX_SIZE; size += 1) {
      for (let index = 0; index < size; index += 1) {
        const proof = inclusionProof(LEAVES, index, size);
        const leaf = LEAVES[index];
        const where = `leaf ${index} of ${size}`;
        for (let element = 0; element < proof.length; element += 1) {
          const bad = flipped(proof, element);
          assert.equal(rfcVerifyInclusion(leaf, index, size, bad, ROOTS[size]), false, `${where}, element ${element} flipped`);
          assert.equal(verifyInclusion(leaf, index, size, bad, ROOTS[size]), false, `${where}, element ${element} flipped`);
        }
        for (let other = 0; other <= size; other += 1) {
          if (other === index) continue;
          assert.equal(rfcVerifyInclusion(leaf, other, size, proof, ROOTS[size]), false, `${where} checked as leaf ${other}`);
          assert.equal(verifyInclusion(leaf, other, size, proof, ROOTS[size]), false, `${where} checked as leaf ${other}`);
        }
        for (const otherSize of [size - 1, size + 1]) {
          if (otherSize < 1 || otherSize > MAX_SIZE) continue;
          assert.equal(rfcVerifyInclusion(leaf, index, otherSize, proof, ROOTS[otherSize]), false, `${where} checked in size ${otherSize}`);
          assert.equal(verifyInclusion(leaf, index, otherSize, proof, ROOTS[otherSize]), false, `${where} checked in size ${otherSize}`);
        }
        assert.equal(rfcVerifyInclusion(leaf, index, size, proof, flippedHash(ROOTS[size])), false, `${where}, wrong root`);
        assert.equal(verifyInclusion(leaf, index, size, proof, flippedHash(ROOTS[size])), false, `${where}, wrong root`);
        assert.equal(verifyInclusion(flippedHash(leaf), index, size, proof, ROOTS[size]), false, `${where}, wrong leaf`);
        assert.equal(verifyInclusion(leaf, index, size, [...proof, ROOTS[size]], ROOTS[size]), false, `${where}, one element too many`);
        if (proof.length > 0) assert.equal(verifyInclusion(leaf, index, size, proof.slice(1), ROOTS[size]), false, `${where}, one element short`);
      }
    }
  });

  it('is empty for a tree of one leaf and log2(n) long for a perfect tree', () => {
    assert.deepEqual(inclusionProof(LEAVES, 0, 1), []);
    assert.equal(inclusionProof(LEAVES, 5, 64).length, 6);
  });

  it('rejects an index at or past the tree size, or a size past the leaves, naming the value', () => {
    assert.throws(() => inclusionProof(LEAVES, 5, 5), { name: 'RangeError', message: /Leaf index 5 .*tree size 5/ });
    assert.throws(() => inclusionProof(LEAVES, 0, 71), { name: 'RangeError', message: /Tree size 71 .*70 leaves/ });
    assert.throws(() => inclusionProof(LEAVES, -1, 3), { name: 'RangeError', message: /Leaf index -1/ });
    assert.throws(() => inclusionProof(LEAVES, 0, 0), { name: 'RangeError', message: /Leaf index 0/ });
    assert.equal(verifyInclusion(LEAVES[0], 1, 1, [], ROOTS[1]), false);
  });
});

describe('consistency proofs (RFC 9162 2.1.4)', () => {
  it('verify with the independent RFC verifier for every pair of sizes 1 <= m <= n <= 70', () => {
    for (let newSize = 1; newSize <= MAX_SIZE; newSize += 1) {
      for (let oldSize = 1; oldSize <= newSize; oldSize += 1) {
        const proof = consistencyProof(LEAVES, oldSize, newSize);
        const where = `${oldSize} -> ${newSize}`;
        assert.equal(rfcVerifyConsistency(oldSize, newSize, ROOTS[oldSize], ROOTS[newSize], proof), true, where);
        assert.equal(verifyConsistency(oldSize, newSize, ROOTS[oldSize], ROOTS[newSize], proof), true, where);
      }
    }
  });

  it('fail with a flipped byte in any element, a wrong old or new root, or wrong sizes', () => {
    for (let newSize = 1; newSize <= MAX_SIZE; newSize += 1) {
      for (let oldSize = 1; oldSize <= newSize; oldSize += 1) {
        const proof = consistencyProof(LEAVES, oldSize, newSize);
        const [oldRoot, newRoot] = [ROOTS[oldSize], ROOTS[newSize]];
        const where = `${oldSize} -> ${newSize}`;
        for (let element = 0; element < proof.length; element += 1) {
          const bad = flipped(proof, element);
          assert.equal(rfcVerifyConsistency(oldSize, newSize, oldRoot, newRoot, bad), false, `${where}, element ${element} flipped`);
          assert.equal(verifyConsistency(oldSize, newSize, oldRoot, newRoot, bad), false, `${where}, element ${element} flipped`);
        }
        for (const [badOld, badNew, what] of [
          [flippedHash(oldRoot), newRoot, 'wrong old root'],
          [oldRoot, flippedHash(newRoot), 'wrong new root'],
        ] as const) {
          assert.equal(rfcVerifyConsistency(oldSize, newSize, badOld, badNew, proof), false, `${where}, ${what}`);
          assert.equal(verifyConsistency(oldSize, newSize, badOld, badNew, proof), false, `${where}, ${what}`);
        }
        if (oldSize > 1) {
          const smaller = oldSize - 1;
          assert.equal(rfcVerifyConsistency(smaller, newSize, ROOTS[smaller], newRoot, proof), false, `${where} checked from ${smaller}`);
          assert.equal(verifyConsistency(smaller, newSize, ROOTS[smaller], newRoot, proof), false, `${where} checked from ${smaller}`);
        }
        if (newSize < MAX_SIZE) {
          const larger = newSize + 1;
          assert.equal(rfcVerifyConsistency(oldSize, larger, oldRoot, ROOTS[larger], proof), false, `${where} checked to ${larger}`);
          assert.equal(verifyConsistency(oldSize, larger, oldRoot, ROOTS[larger], proof), false, `${where} checked to ${larger}`);
        }
      }
    }
  });

  it('does not prove a prefix that was rewritten', () => {
    const rewritten = [...LEAVES];
    rewritten[3] = leafHash('{"seq":4,"action":"forged"}');
    for (const [oldSize, newSize] of [
      [5, 9],
      [8, 70],
      [4, 4],
    ]) {
      const proof = consistencyProof(rewritten, oldSize, newSize);
      assert.equal(verifyConsistency(oldSize, newSize, ROOTS[oldSize], merkleRoot(rewritten.slice(0, newSize)), proof), false);
      assert.equal(rfcVerifyConsistency(oldSize, newSize, ROOTS[oldSize], merkleRoot(rewritten.slice(0, newSize)), proof), false);
    }
  });

  it('is empty from the empty tree, which is consistent with every tree', () => {
    assert.deepEqual(consistencyProof(LEAVES, 0, 9), []);
    assert.equal(verifyConsistency(0, 9, EMPTY_ROOT, ROOTS[9], []), true);
    assert.equal(verifyConsistency(0, 9, ROOTS[1], ROOTS[9], []), false);
    assert.equal(verifyConsistency(0, 9, EMPTY_ROOT, ROOTS[9], [ROOTS[1]]), false);
  });

  it('rejects an old size past the new one, or a new size past the leaves, naming the value', () => {
    assert.throws(() => consistencyProof(LEAVES, 9, 8), { name: 'RangeError', message: /Old size 9 .*new size 8/ });
    assert.throws(() => consistencyProof(LEAVES, 1, 71), { name: 'RangeError', message: /New size 71 .*70 leaves/ });
    assert.throws(() => consistencyProof(LEAVES, 1.5, 8), { name: 'RangeError', message: /Old size 1.5/ });
    assert.equal(verifyConsistency(9, 8, ROOTS[9], ROOTS[8], consistencyProof(LEAVES, 8, 9)), false);
  });
});

describe('CompactRange', () => {
  it('has the root of merkleRoot after every append, for 0 to 300 leaves', () => {
    const leaves = Array.from({ length: 300 }, (_, i) => leafHash(`entry ${i}`));
    const range = new CompactRange();
    assert.deepEqual(range.root(), EMPTY_ROOT);
    for (let size = 1; size <= leaves.length; size += 1) {
      range.append(leaves[size - 1]);
      assert.equal(range.size, size);
      assert.equal(hex(range.root()), hex(merkleRoot(leaves.slice(0, size))), `size ${size}`);
    }
  });

  it('agrees with merkleRoot on 100 000 leaves, whose proofs still verify', () => {
    const leaves = Array.from({ length: 100_000 }, (_, i) => leafHash(`entry ${i}`));
    const range = new CompactRange();
    for (const leaf of leaves) range.append(leaf);
    const root = merkleRoot(leaves);
    assert.deepEqual(range.root(), root);
    for (const index of [65_536, 99_999]) {
      assert.equal(rfcVerifyInclusion(leaves[index], index, leaves.length, inclusionProof(leaves, index, leaves.length), root), true, `leaf ${index}`);
    }
    const proof = consistencyProof(leaves, 65_537, 100_000);
    assert.equal(rfcVerifyConsistency(65_537, 100_000, merkleRoot(leaves.slice(0, 65_537)), root, proof), true);
  });
});
