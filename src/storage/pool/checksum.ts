/**
 * Data block checksums: a Fletcher-style sum over 32-bit words with four running accumulators
 * (the shape of ZFS's fletcher4, kept modulo 2^32 so it runs on JS integers), folded to 32 bits.
 * Not cryptographic: it detects silent corruption (bit rot, torn or misdirected writes) at several
 * GB/s in plain JS, which a per-block SHA-256 could not do on the read path.
 */

/** Bytes covered by one checksum. */
export const CHECKSUM_BLOCK_BYTES = 4096;

/** Checksum of `length` bytes (a multiple of 4) of `buffer` from `offset`. */
export function blockChecksum(buffer: Buffer, offset = 0, length = CHECKSUM_BLOCK_BYTES): number {
  let a = 0;
  let b = 0;
  let c = 0;
  let d = 0;
  const absolute = buffer.byteOffset + offset;
  if (absolute % 4 === 0) {
    const words = new Uint32Array(buffer.buffer, absolute, length >>> 2);
    for (let i = 0; i < words.length; i++) {
      a = (a + words[i]!) | 0;
      b = (b + a) | 0;
      c = (c + b) | 0;
      d = (d + c) | 0;
    }
  } else {
    for (let i = 0; i < length; i += 4) {
      a = (a + buffer.readUInt32LE(offset + i)) | 0;
      b = (b + a) | 0;
      c = (c + b) | 0;
      d = (d + c) | 0;
    }
  }
  // Fold the accumulators so that a change in any of them changes the result.
  return (a ^ Math.imul(b, 0x9e3779b1) ^ Math.imul(c, 0x85ebca6b) ^ Math.imul(d, 0xc2b2ae35) ^ length) >>> 0;
}

/** Checksum of a block of zeroes (what a fresh allocation unit holds). */
export const ZERO_BLOCK_CHECKSUM = blockChecksum(Buffer.alloc(CHECKSUM_BLOCK_BYTES));
