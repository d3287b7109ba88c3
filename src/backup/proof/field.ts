/**
 * The prime field Z_p of the proof of retrievability (por.ts) and how a chunk's bytes become
 * elements of it: p = 2^255 - 19, a block is 4096 bytes split into 133 sectors of 31 bytes, and
 * a sector read as a big-endian integer is below 2^248 < p, so every sector is an element as it
 * is, with no reduction that would make two sectors equal. Plain BigInt, which is not
 * constant-time: the secret is used only on the client, where the store cannot time it.
 */

/** p = 2^255 - 19 (the prime of Curve25519): 255 bits, so an element fits in 32 bytes. */
export const FIELD_PRIME = (1n << 255n) - 19n;
/** Bytes of one field element on the wire and in tag files (big-endian, fixed size). */
export const ELEMENT_BYTES = 32;
/** Bytes of a proof block: a chunk is tagged and challenged in blocks of this size. */
export const BLOCK_BYTES = 4096;
/** Bytes of a sector: 31 bytes are below 2^248, so every sector is below p. */
export const SECTOR_BYTES = 31;
/** Sectors of a block, s = ceil(4096 / 31); the last one holds 4 bytes and 27 zero bytes. */
export const SECTORS_PER_BLOCK = Math.ceil(BLOCK_BYTES / SECTOR_BYTES);

const SECTOR_HEX_DIGITS = SECTOR_BYTES * 2;
const BLOCK_HEX_DIGITS = SECTORS_PER_BLOCK * SECTOR_HEX_DIGITS;

/** The number of proof blocks of a chunk of `byteLength` bytes (its last block is zero-padded). */
export function blockCount(byteLength: number): number {
  return Math.ceil(byteLength / BLOCK_BYTES);
}

/**
 * The s sectors of one block as field elements, written into `out` (reused across blocks: a 4 MiB
 * chunk has 136,192 sectors). `block` holds at most 4096 bytes; missing bytes read as zeros,
 * which is the padding of a chunk's last block. Parsing 62 hex digits per sector measured faster
 * than assembling each sector from Buffer.readBigUInt64BE pieces (one BigInt parse against four
 * reads, three shifts and three ors).
 */
export function blockSectors(block: Buffer, out: bigint[] = new Array(SECTORS_PER_BLOCK)): bigint[] {
  const hex = block.toString('hex').padEnd(BLOCK_HEX_DIGITS, '0');
  for (let j = 0; j < SECTORS_PER_BLOCK; j++) out[j] = BigInt(`0x${hex.substring(j * SECTOR_HEX_DIGITS, (j + 1) * SECTOR_HEX_DIGITS)}`);
  return out;
}

/** `x mod p` in [0, p), also for a negative `x`. */
export function modP(x: bigint): bigint {
  const r = x % FIELD_PRIME;
  return r < 0n ? r + FIELD_PRIME : r;
}

/** An unsigned big-endian integer of any length. */
export function bigIntFromBytes(bytes: Uint8Array): bigint {
  return bytes.length === 0 ? 0n : BigInt(`0x${Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('hex')}`);
}

/** An element of Z_p as its 32 big-endian bytes, written at `offset` of `into` when given. */
export function elementToBytes(x: bigint, into: Buffer = Buffer.alloc(ELEMENT_BYTES), offset = 0): Buffer {
  // A value outside [0, p) here is a bug in this module, never input: writing it would truncate it.
  if (x < 0n || x >= FIELD_PRIME) throw new RangeError(`Not an element of Z_p: ${x}`);
  into.write(x.toString(16).padStart(ELEMENT_BYTES * 2, '0'), offset, ELEMENT_BYTES, 'hex');
  return into;
}

/** The element that `bytes` (exactly 32 big-endian bytes) encode, or undefined when the value is not below p. */
export function elementFromBytes(bytes: Uint8Array): bigint | undefined {
  if (bytes.length !== ELEMENT_BYTES) return undefined;
  const x = bigIntFromBytes(bytes);
  return x < FIELD_PRIME ? x : undefined;
}
