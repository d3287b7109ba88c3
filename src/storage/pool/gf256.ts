/**
 * Arithmetic in GF(2^8) with the polynomial 0x11d and generator 2: the field of RAID 6's Q
 * syndrome (H. Peter Anvin, "The mathematics of RAID-6"). P is the XOR of the data blocks and
 * Q = sum of g^i * D_i; any two lost blocks of a stripe can be solved from the others.
 */
const EXP = new Uint8Array(512);
const LOG = new Uint8Array(256);
{
  let x = 1;
  for (let i = 0; i < 255; i++) {
    EXP[i] = x;
    LOG[x] = i;
    x <<= 1;
    if (x & 0x100) x ^= 0x11d;
  }
  for (let i = 255; i < 512; i++) EXP[i] = EXP[i - 255]!;
}

export function gfMul(a: number, b: number): number {
  return a === 0 || b === 0 ? 0 : EXP[LOG[a]! + LOG[b]!]!;
}

export function gfInv(a: number): number {
  if (a === 0) throw new RangeError('Zero has no inverse in GF(2^8)');
  return EXP[255 - LOG[a]!]!;
}

/** g^n for the generator g = 2. */
export function gfPow2(n: number): number {
  return EXP[((n % 255) + 255) % 255]!;
}

const tables = new Map<number, Uint8Array>();

/** A 256-entry table of x -> c * x, for multiplying a whole buffer by the constant c. */
export function gfMulTable(c: number): Uint8Array {
  let table = tables.get(c);
  if (!table) {
    table = new Uint8Array(256);
    for (let x = 0; x < 256; x++) table[x] = gfMul(c, x);
    tables.set(c, table);
  }
  return table;
}

/** target ^= source (same length). */
export function xorInto(target: Uint8Array, source: Uint8Array): void {
  const n = target.length;
  if (n % 4 === 0 && target.byteOffset % 4 === 0 && source.byteOffset % 4 === 0) {
    const t = new Uint32Array(target.buffer, target.byteOffset, n >>> 2);
    const s = new Uint32Array(source.buffer, source.byteOffset, n >>> 2);
    for (let i = 0; i < t.length; i++) t[i]! ^= s[i]!;
    return;
  }
  for (let i = 0; i < n; i++) target[i]! ^= source[i]!;
}

/** target ^= c * source (same length). */
export function mulXorInto(target: Uint8Array, source: Uint8Array, c: number): void {
  if (c === 1) {
    xorInto(target, source);
    return;
  }
  const table = gfMulTable(c);
  for (let i = 0; i < target.length; i++) target[i]! ^= table[source[i]!]!;
}

/** target = c * target. */
export function mulInPlace(target: Uint8Array, c: number): void {
  if (c === 1) return;
  const table = gfMulTable(c);
  for (let i = 0; i < target.length; i++) target[i] = table[target[i]!]!;
}
