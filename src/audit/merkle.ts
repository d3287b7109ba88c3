// The Merkle tree of the audit log, after RFC 9162 (Certificate Transparency v2) section 2.1:
// leaf and node hashes, the tree hash, inclusion and consistency proofs and their verification,
// and an incremental root for the signer. Pure functions over SHA-256; it imports nothing from
// Nubis, so a verifier can be built from it alone.
//
// Sizes and indices are JavaScript numbers (safe integers); the tree arithmetic halves them with
// Math.floor instead of `>>`, which would wrap above 2^31 leaves.
import { createHash } from 'node:crypto';

const LEAF_PREFIX = Buffer.of(0x00);
const NODE_PREFIX = Buffer.of(0x01);

/**
 * The hash of one log entry: SHA-256(0x00 || data), RFC 9162 2.1.1. A string is hashed as its
 * UTF-8 bytes. The 0x00 prefix keeps a leaf from ever being taken for an interior node
 * (second-preimage resistance, RFC 9162 2.1.1 and 12.1).
 */
export function leafHash(data: Uint8Array | string): Buffer {
  const hash = createHash('sha256').update(LEAF_PREFIX);
  return (typeof data === 'string' ? hash.update(data, 'utf8') : hash.update(data)).digest();
}

/** The hash of an interior node: SHA-256(0x01 || left || right), RFC 9162 2.1.1. */
export function nodeHash(left: Buffer, right: Buffer): Buffer {
  return createHash('sha256').update(NODE_PREFIX).update(left).update(right).digest();
}

/**
 * The tree hash of the empty log, SHA-256 of the empty string (RFC 9162 2.1.1: MTH({}) =
 * HASH()). Do not modify it: functions here return copies of it, never this Buffer itself.
 */
export const EMPTY_ROOT: Buffer = createHash('sha256').digest();

/**
 * The Merkle tree hash MTH of the given leaf hashes, RFC 9162 2.1.1: the empty string's hash for
 * no leaves, the leaf hash itself for one, and otherwise the node hash of the trees of the first
 * k and the remaining leaves, k being the largest power of two smaller than n. The recursion
 * halves the range, so its depth is about log2(n) (17 for 100 000 leaves) and each leaf is hashed
 * once.
 */
export function merkleRoot(leafHashes: readonly Buffer[]): Buffer {
  if (leafHashes.length === 0) return Buffer.from(EMPTY_ROOT);
  return subtreeHash(leafHashes, 0, leafHashes.length);
}

/**
 * The inclusion proof PATH(m, D[n]) of RFC 9162 2.1.3.1 for the leaf at `index` in the tree of
 * the first `treeSize` leaves: the sibling subtree hashes from the leaf up to the root. Throws a
 * RangeError when `index` is not below `treeSize` or `treeSize` exceeds the leaves given.
 */
export function inclusionProof(leafHashes: readonly Buffer[], index: number, treeSize: number): Buffer[] {
  checkSize('Tree size', treeSize, leafHashes.length);
  checkCount('Leaf index', index);
  if (index >= treeSize) throw new RangeError(`Leaf index ${index} is not below the tree size ${treeSize}`);
  const proof: Buffer[] = [];
  appendPath(leafHashes, index, 0, treeSize, proof);
  return proof;
}

/**
 * The consistency proof PROOF(m, D[n]) of RFC 9162 2.1.4.1 that the tree of the first `oldSize`
 * leaves is a prefix of the tree of the first `newSize`. It is empty when the sizes are equal
 * (SUBPROOF(m, D[m], true) = {}) and when `oldSize` is 0, a case the RFC leaves out because the
 * empty tree is a prefix of every tree. Throws a RangeError when `oldSize` exceeds `newSize` or
 * `newSize` exceeds the leaves given.
 */
export function consistencyProof(leafHashes: readonly Buffer[], oldSize: number, newSize: number): Buffer[] {
  checkSize('New size', newSize, leafHashes.length);
  checkCount('Old size', oldSize);
  if (oldSize > newSize) throw new RangeError(`Old size ${oldSize} is larger than the new size ${newSize}`);
  const proof: Buffer[] = [];
  if (oldSize > 0) appendSubproof(leafHashes, oldSize, 0, newSize, true, proof);
  return proof;
}

/**
 * Checks an inclusion proof with the algorithm of RFC 9162 2.1.3.2: `leaf` is the leaf hash
 * (leafHash of the entry, not the entry), `proof` the PATH from {@link inclusionProof}. True only
 * when the proof leads from the leaf to `root` and is exactly as long as a tree of `treeSize`
 * needs; any bad input, an index out of range included, gives false, never an exception, since
 * proofs come from elsewhere.
 */
export function verifyInclusion(leaf: Buffer, index: number, treeSize: number, proof: readonly Buffer[], root: Buffer): boolean {
  // Step 1: leaf_index must be below tree_size.
  if (!isCount(index) || !isCount(treeSize) || index >= treeSize) return false;
  // Steps 2 and 3.
  let fn = index;
  let sn = treeSize - 1;
  let r = leaf;
  // Step 4.
  for (const p of proof) {
    if (sn === 0) return false;
    if (isOdd(fn) || fn === sn) {
      r = nodeHash(p, r);
      while (!isOdd(fn) && fn !== 0) {
        fn = half(fn);
        sn = half(sn);
      }
    } else {
      r = nodeHash(r, p);
    }
    fn = half(fn);
    sn = half(sn);
  }
  // Step 5: the whole path was needed (sn reached 0) and it ends at the root.
  return sn === 0 && r.equals(root);
}

/**
 * Checks a consistency proof with the algorithm of RFC 9162 2.1.4.2: true only when `proof` shows
 * that the tree of size `oldSize` with root `oldRoot` is a prefix of the tree of size `newSize`
 * with root `newRoot`. The RFC covers 0 < oldSize < newSize; equal sizes need an empty proof and
 * equal roots, and size 0 an empty proof and the empty tree's root. Bad input gives false.
 */
export function verifyConsistency(oldSize: number, newSize: number, oldRoot: Buffer, newRoot: Buffer, proof: readonly Buffer[]): boolean {
  if (!isCount(oldSize) || !isCount(newSize) || oldSize > newSize) return false;
  if (oldSize === newSize) return proof.length === 0 && oldRoot.equals(newRoot);
  if (oldSize === 0) return proof.length === 0 && oldRoot.equals(EMPTY_ROOT);
  // Step 1.
  if (proof.length === 0) return false;
  // Step 2: an old tree that is a whole subtree of the new one is not repeated in the proof.
  const path = isPowerOfTwo(oldSize) ? [oldRoot, ...proof] : proof;
  // Steps 3 and 4.
  let fn = oldSize - 1;
  let sn = newSize - 1;
  while (isOdd(fn)) {
    fn = half(fn);
    sn = half(sn);
  }
  // Step 5.
  let fr = path[0];
  let sr = path[0];
  // Step 6.
  for (const c of path.slice(1)) {
    if (sn === 0) return false;
    if (isOdd(fn) || fn === sn) {
      fr = nodeHash(c, fr);
      sr = nodeHash(c, sr);
      while (!isOdd(fn) && fn !== 0) {
        fn = half(fn);
        sn = half(sn);
      }
    } else {
      sr = nodeHash(sr, c);
    }
    fn = half(fn);
    sn = half(sn);
  }
  // Step 7.
  return fr.equals(oldRoot) && sr.equals(newRoot) && sn === 0;
}

/**
 * The root of a growing log without keeping its leaves: the hashes of the perfect subtrees on
 * the tree's right frontier, one for each bit set in the size, largest (leftmost) first, so
 * memory is O(log n). {@link CompactRange.root} folds them from the right, which is what the
 * RFC 9162 2.1.1 split (largest power of two first) gives, so it equals {@link merkleRoot} of
 * every leaf appended.
 */
export class CompactRange {
  #subtrees: Buffer[] = [];
  #size = 0;

  /** Adds the next leaf hash, merging the perfect subtrees it completes (like a binary carry). */
  append(leafHash: Buffer): void {
    let node = leafHash;
    for (let size = this.#size; isOdd(size); size = half(size)) node = nodeHash(this.#subtrees.pop()!, node);
    this.#subtrees.push(node);
    this.#size += 1;
  }

  /** How many leaves have been appended. */
  get size(): number {
    return this.#size;
  }

  /** The Merkle tree hash of all leaves appended so far (the empty tree's hash when none). */
  root(): Buffer {
    if (this.#subtrees.length === 0) return Buffer.from(EMPTY_ROOT);
    let root = this.#subtrees[this.#subtrees.length - 1];
    for (let i = this.#subtrees.length - 2; i >= 0; i -= 1) root = nodeHash(this.#subtrees[i], root);
    return root;
  }
}

/** MTH(D[start:end]) for a non-empty range, RFC 9162 2.1.1. */
function subtreeHash(leafHashes: readonly Buffer[], start: number, end: number): Buffer {
  if (end - start === 1) return leafHashes[start];
  const k = largestPowerOfTwoBelow(end - start);
  return nodeHash(subtreeHash(leafHashes, start, start + k), subtreeHash(leafHashes, start + k, end));
}

/** Appends PATH(m, D[start:end]) to `proof`, RFC 9162 2.1.3.1 (m counts from `start`). */
function appendPath(leafHashes: readonly Buffer[], m: number, start: number, end: number, proof: Buffer[]): void {
  if (end - start === 1) return;
  const k = largestPowerOfTwoBelow(end - start);
  if (m < k) {
    appendPath(leafHashes, m, start, start + k, proof);
    proof.push(subtreeHash(leafHashes, start + k, end));
  } else {
    appendPath(leafHashes, m - k, start + k, end, proof);
    proof.push(subtreeHash(leafHashes, start, start + k));
  }
}

/**
 * Appends SUBPROOF(m, D[start:end], b) to `proof`, RFC 9162 2.1.4.1: `b` is true while the old
 * tree may still be a whole subtree that the verifier already knows (its root), so it is left out.
 */
function appendSubproof(leafHashes: readonly Buffer[], m: number, start: number, end: number, b: boolean, proof: Buffer[]): void {
  const n = end - start;
  if (m === n) {
    if (!b) proof.push(subtreeHash(leafHashes, start, end));
    return;
  }
  const k = largestPowerOfTwoBelow(n);
  if (m <= k) {
    appendSubproof(leafHashes, m, start, start + k, b, proof);
    proof.push(subtreeHash(leafHashes, start + k, end));
  } else {
    appendSubproof(leafHashes, m - k, start + k, end, false, proof);
    proof.push(subtreeHash(leafHashes, start, start + k));
  }
}

/** The largest power of two smaller than n (n > 1): the split point k of RFC 9162 2.1.1. */
function largestPowerOfTwoBelow(n: number): number {
  let k = 1;
  while (k * 2 < n) k *= 2;
  return k;
}

function isCount(value: number): boolean {
  return Number.isSafeInteger(value) && value >= 0;
}

function isOdd(value: number): boolean {
  return value % 2 === 1;
}

function half(value: number): number {
  return Math.floor(value / 2);
}

function isPowerOfTwo(value: number): boolean {
  let power = 1;
  while (power < value) power *= 2;
  return power === value;
}

function checkCount(name: string, value: number): void {
  if (!isCount(value)) throw new RangeError(`${name} ${value} is not a whole number of 0 or more`);
}

function checkSize(name: string, size: number, leafCount: number): void {
  checkCount(name, size);
  if (size > leafCount) throw new RangeError(`${name} ${size} is larger than the ${leafCount} leaves given`);
}
