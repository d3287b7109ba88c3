/**
 * The data path of volumes: read, write, trim, write-zeroes and block status by volume id.
 *
 * A write lands by the rules of storage-pool.ts: a first write or a write to a shared AU goes to
 * a fresh AU (copy-on-write) that the volume maps only once the data is on the members; a write
 * to an AU the volume alone owns happens in place, after a durable write intent for that AU.
 * Locks: a per-volume gate (shared by I/O, exclusive for snapshot, resize and delete), a lock per
 * volume AU (range) and a lock per physical AU (shared with repair, scrub and rebuild).
 *
 * Encrypted volumes are encrypted here and nowhere else: a write is widened to whole 4 KiB
 * sectors (reading, decrypting and overlaying partial edge sectors under the AU's range lock),
 * encrypted with the volume's key and the sectors' offsets in the volume (volume-cipher.ts), and
 * from then on the ciphertext takes the same way as any data (copy-on-write, write intents,
 * checksums, RAID); a read decrypts what the checked read returns. So everything above (the NBD
 * server, snapshots, clones, migration) and below (scrub, repair, rebuild) works unchanged.
 */
import { NubisError } from '../../core/errors.ts';
import { blockChecksum, CHECKSUM_BLOCK_BYTES, ZERO_BLOCK_CHECKSUM } from './checksum.ts';
import { KeyedLocks } from './locks.ts';
import type { MetadataStore, VolumeEntry } from './metadata-store.ts';
import { splitAtAllocationUnits } from './pool-geometry.ts';
import type { RaidArray } from './raid-array.ts';
import type { SelfHealingReader } from './self-healing-reader.ts';
import { CRYPT_SECTOR_BYTES, type VolumeCipher } from './volume-cipher.ts';
import type { VolumeKeys } from './volume-keys.ts';

/** What a volume's block status reports: runs of mapped data and of holes that read as zeroes. */
type BlockStatusExtent = { lengthBytes: number; hole: boolean; zero: boolean };

/** Reads and writes of a pool's volumes. */
export class VolumeIo {
  readonly #allocationUnitBytes: number;
  readonly #blocksPerAu: number;
  readonly #raid: RaidArray;
  readonly #store: MetadataStore;
  readonly #reader: SelfHealingReader;
  readonly #gates: KeyedLocks;
  readonly #auLocks: KeyedLocks;
  readonly #rangeLocks = new KeyedLocks();
  readonly #keys: VolumeKeys;

  constructor(args: {
    allocationUnitBytes: number;
    raid: RaidArray;
    store: MetadataStore;
    reader: SelfHealingReader;
    gates: KeyedLocks;
    auLocks: KeyedLocks;
    keys: VolumeKeys;
  }) {
    this.#allocationUnitBytes = args.allocationUnitBytes;
    this.#blocksPerAu = args.allocationUnitBytes / CHECKSUM_BLOCK_BYTES;
    this.#raid = args.raid;
    this.#store = args.store;
    this.#reader = args.reader;
    this.#gates = args.gates;
    this.#auLocks = args.auLocks;
    this.#keys = args.keys;
  }

  #rangeKey(volumeId: number, vAu: number): number {
    return volumeId * 0x1_0000_0000 + vAu;
  }

  #checkBounds(entry: VolumeEntry, position: number, length: number): void {
    if (position < 0 || position + length > entry.record.sizeBytes) {
      throw new NubisError('VOLUME_IO_RANGE', `Range ${position}+${length} lies outside volume ${entry.record.name} (${entry.record.sizeBytes} bytes)`);
    }
  }

  #requireWritableVolume(entry: VolumeEntry): void {
    if (entry.record.readOnly)
      throw new NubisError('VOLUME_READ_ONLY', `Volume ${entry.record.name} is a read-only snapshot`, { details: { volume: entry.record.name } });
  }

  // ---------------------------------------------------------------- read

  /** Reads `buffer.length` bytes of volume `id` at `position`. */
  async read(id: number, buffer: Buffer, position: number): Promise<void> {
    this.#store.requireOpen();
    const gate = this.#gates.acquire(id, false);
    if (gate) await gate;
    try {
      const entry = this.#store.volumeById(id);
      this.#checkBounds(entry, position, buffer.length);
      const cipher = this.#keys.cipherOf(entry.record);
      const jobs = splitAtAllocationUnits(position, buffer.length, this.#allocationUnitBytes).map(({ vAu, inAu, offset, length }) =>
        this.#readSegment(entry, cipher, vAu, inAu, buffer, offset, length),
      );
      await Promise.all(jobs);
    } finally {
      this.#gates.release(id, false);
    }
  }

  async #readSegment(
    entry: VolumeEntry,
    cipher: VolumeCipher | undefined,
    vAu: number,
    inAu: number,
    target: Buffer,
    offset: number,
    length: number,
  ): Promise<void> {
    const key = this.#rangeKey(entry.record.id, vAu);
    const wait = this.#rangeLocks.acquire(key, false);
    if (wait) await wait;
    try {
      const p = entry.map[vAu]! - 1;
      if (p < 0) target.fill(0, offset, offset + length);
      else if (cipher) await this.#readDecrypted(cipher, p, vAu, inAu, target, offset, length);
      else await this.#reader.readVerified(p, inAu, length, target, offset);
    } finally {
      this.#rangeLocks.release(key, false);
    }
  }

  /** Reads the whole sectors around a range of AU `p` (mapped at `vAu`), decrypts them and copies the range out. */
  async #readDecrypted(cipher: VolumeCipher, p: number, vAu: number, inAu: number, target: Buffer, offset: number, length: number): Promise<void> {
    const S = CRYPT_SECTOR_BYTES;
    const first = Math.floor(inAu / S);
    const end = Math.ceil((inAu + length) / S);
    const aligned = inAu % S === 0 && length % S === 0;
    const sectors = aligned ? target.subarray(offset, offset + length) : Buffer.allocUnsafe((end - first) * S);
    await this.#reader.readVerified(p, first * S, sectors.length, sectors, 0);
    cipher.decryptInPlace(sectors, vAu * this.#allocationUnitBytes + first * S);
    if (!aligned) sectors.copy(target, offset, inAu - first * S, inAu - first * S + length);
  }

  // ---------------------------------------------------------------- write

  /** Writes `data` to volume `id` at `position`; with `fua` it is durable on return. */
  async write(id: number, data: Buffer, position: number, fua: boolean): Promise<void> {
    this.#store.requireWritable();
    const gate = this.#gates.acquire(id, false);
    if (gate) await gate;
    try {
      const entry = this.#store.volumeById(id);
      this.#requireWritableVolume(entry);
      this.#checkBounds(entry, position, data.length);
      const cipher = this.#keys.cipherOf(entry.record);
      const jobs = splitAtAllocationUnits(position, data.length, this.#allocationUnitBytes).map(({ vAu, inAu, offset, length }) =>
        this.#writeSegment(entry, cipher, vAu, inAu, data.subarray(offset, offset + length)),
      );
      const results = await Promise.allSettled(jobs);
      const failed = results.find((r) => r.status === 'rejected');
      if (failed) throw (failed as PromiseRejectedResult).reason;
    } finally {
      this.#gates.release(id, false);
    }
    // NBD proto.md: a FUA write must be on stable storage before its reply.
    if (fua) await this.#store.commit();
  }

  async #writeSegment(entry: VolumeEntry, cipher: VolumeCipher | undefined, vAu: number, plainInAu: number, plain: Buffer): Promise<void> {
    const key = this.#rangeKey(entry.record.id, vAu);
    const wait = this.#rangeLocks.acquire(key, true);
    if (wait) await wait;
    try {
      const p = entry.map[vAu]! - 1;
      // From here on an encrypted write is whole sectors of ciphertext, like any aligned write.
      const { inAu, chunk } = cipher ? await this.#sealed(cipher, p, vAu, plainInAu, plain) : { inAu: plainInAu, chunk: plain };
      if (p < 0) await this.#writeFresh(entry, vAu, inAu, chunk, undefined);
      else if (this.#store.allocation.mustCopyOnWrite(p)) await this.#writeFresh(entry, vAu, inAu, chunk, p);
      else await this.#auLocks.with(p, true, () => this.#writeInPlace(p, inAu, chunk));
    } finally {
      this.#rangeLocks.release(key, true);
    }
  }

  /**
   * The ciphertext of a write of `plain` at `inAu` of AU `p` (mapped at `vAu`; -1 for a hole),
   * widened to whole sectors: partial edge sectors are read, decrypted and overlaid first
   * (read-modify-write; the caller holds the AU's range lock, so no write comes between).
   */
  async #sealed(cipher: VolumeCipher, p: number, vAu: number, inAu: number, plain: Buffer): Promise<{ inAu: number; chunk: Buffer }> {
    const S = CRYPT_SECTOR_BYTES;
    const first = Math.floor(inAu / S);
    const end = Math.ceil((inAu + plain.length) / S);
    const auStart = vAu * this.#allocationUnitBytes;
    let sectors = plain;
    if (inAu % S !== 0 || plain.length % S !== 0) {
      sectors = Buffer.allocUnsafe((end - first) * S);
      if (inAu % S !== 0 || end - first === 1) await this.#readPlainSector(cipher, p, auStart, first, sectors, 0);
      if ((inAu + plain.length) % S !== 0 && end - first > 1) await this.#readPlainSector(cipher, p, auStart, end - 1, sectors, (end - first - 1) * S);
      plain.copy(sectors, inAu - first * S);
    }
    return { inAu: first * S, chunk: cipher.encrypt(sectors, auStart + first * S) };
  }

  /** Sector `sector` of AU `p` (-1: a hole, zeroes) decrypted into `target` at `at`. */
  async #readPlainSector(cipher: VolumeCipher, p: number, auStart: number, sector: number, target: Buffer, at: number): Promise<void> {
    const S = CRYPT_SECTOR_BYTES;
    if (p < 0) {
      target.fill(0, at, at + S);
      return;
    }
    const one = target.subarray(at, at + S);
    await this.#reader.readVerified(p, sector * S, S, one, 0);
    cipher.decryptInPlace(one, auStart + sector * S);
  }

  /** First write to an AU, or copy-on-write of shared AU `source`: the data goes to a new AU. */
  async #writeFresh(entry: VolumeEntry, vAu: number, inAu: number, chunk: Buffer, source: number | undefined): Promise<void> {
    const au = this.#allocationUnitBytes;
    const { p, zeroed } = await this.#store.allocate();
    try {
      await this.#auLocks.with(p, true, async () => {
        const { image, imageStart } = source !== undefined ? await this.#copiedImage(source, inAu, chunk) : freshImage(chunk, inAu, au, zeroed);
        await this.#raid.write(image, 0, image.length, p * au + imageStart);
        const checksums = this.#store.state.checksums;
        const base = p * this.#blocksPerAu;
        const B = CHECKSUM_BLOCK_BYTES;
        const firstWritten = imageStart / B;
        const endWritten = firstWritten + image.length / B;
        for (let b = 0; b < this.#blocksPerAu; b++) {
          checksums[base + b] = b >= firstWritten && b < endWritten ? blockChecksum(image, (b - firstWritten) * B) : ZERO_BLOCK_CHECKSUM;
        }
      });
    } catch (error) {
      this.#store.allocation.abandon(p);
      throw error;
    }
    // Map only once the data is written: a commit never points a volume at unwritten data.
    entry.map[vAu] = p + 1;
    this.#store.allocation.own(p);
    this.#store.recordMap(entry.record.id, vAu, p + 1);
    this.#store.markDirty(p);
    if (source !== undefined) this.#store.allocation.unref(source);
  }

  /** The whole of shared AU `source` with `chunk` laid over it at `inAu`. */
  async #copiedImage(source: number, inAu: number, chunk: Buffer): Promise<{ image: Buffer; imageStart: number }> {
    const image = Buffer.allocUnsafe(this.#allocationUnitBytes);
    await this.#reader.readVerified(source, 0, this.#allocationUnitBytes, image, 0);
    chunk.copy(image, inAu);
    return { image, imageStart: 0 };
  }

  async #writeInPlace(p: number, inAu: number, chunk: Buffer): Promise<void> {
    const B = CHECKSUM_BLOCK_BYTES;
    this.#store.inPlaceWriteStarted(p);
    try {
      await this.#store.ensureIntent(p);
      const first = Math.floor(inAu / B);
      const end = Math.ceil((inAu + chunk.length) / B);
      let image = chunk;
      if (inAu % B !== 0 || chunk.length % B !== 0) {
        image = Buffer.allocUnsafe((end - first) * B);
        await this.#reader.readVerified(p, first * B, B, image, 0, true);
        if (end - first > 1) await this.#reader.readVerified(p, (end - 1) * B, B, image, (end - first - 1) * B, true);
        chunk.copy(image, inAu - first * B);
      }
      await this.#raid.write(image, 0, image.length, p * this.#allocationUnitBytes + first * B);
      const base = p * this.#blocksPerAu;
      for (let b = first; b < end; b++) this.#store.state.checksums[base + b] = blockChecksum(image, (b - first) * B);
      this.#store.markDirty(p);
    } finally {
      this.#store.inPlaceWriteEnded(p);
    }
  }

  // ---------------------------------------------------------------- trim, zeroes, block status

  /** Discards whole AUs of the range (NBD TRIM); partial AUs are left as they are. */
  async trim(id: number, position: number, length: number, fua: boolean): Promise<void> {
    this.#store.requireWritable();
    await this.#unmapRange(id, position, length);
    if (fua) await this.#store.commit();
  }

  /** Unmaps the whole AUs of the range; returns the partial head and tail it left mapped. */
  async #unmapRange(id: number, position: number, length: number): Promise<{ head: [number, number]; tail: [number, number] }> {
    const au = this.#allocationUnitBytes;
    const firstFull = Math.ceil(position / au);
    const endFull = Math.floor((position + length) / au);
    const gate = this.#gates.acquire(id, false);
    if (gate) await gate;
    try {
      const entry = this.#store.volumeById(id);
      this.#requireWritableVolume(entry);
      this.#checkBounds(entry, position, length);
      for (let vAu = firstFull; vAu < endFull; vAu++) {
        if (entry.map[vAu] === 0) continue;
        await this.#rangeLocks.with(this.#rangeKey(id, vAu), true, async () => {
          const p = entry.map[vAu]! - 1;
          if (p < 0) return;
          entry.map[vAu] = 0;
          this.#store.recordMap(id, vAu, 0);
          this.#store.allocation.unref(p);
        });
      }
    } finally {
      this.#gates.release(id, false);
    }
    if (endFull <= firstFull) return { head: [position, length], tail: [0, 0] };
    return { head: [position, firstFull * au - position], tail: [endFull * au, position + length - endFull * au] };
  }

  /** Makes a range read as zeroes: whole AUs are unmapped (unless `noHole`), edges written. */
  async writeZeroes(id: number, position: number, length: number, fua: boolean, noHole: boolean): Promise<void> {
    this.#store.requireWritable();
    const ranges: Array<[number, number]> = [];
    if (noHole) ranges.push([position, length]);
    else {
      const { head, tail } = await this.#unmapRange(id, position, length);
      ranges.push(head, tail);
    }
    const step = this.#allocationUnitBytes;
    for (const [start, count] of ranges) {
      for (let done = 0; done < count; done += step) {
        const n = Math.min(step, count - done);
        await this.write(id, Buffer.alloc(n), start + done, false);
      }
    }
    if (fua) await this.#store.commit();
  }

  /** Allocation map of a volume from `position`: unmapped AUs are holes that read as zeroes. */
  blockStatus(id: number, position: number, length: number): BlockStatusExtent[] {
    const entry = this.#store.volumeById(id);
    const au = this.#allocationUnitBytes;
    const end = Math.min(entry.record.sizeBytes, position + length);
    const extents: BlockStatusExtent[] = [];
    for (let pos = position; pos < end && extents.length < 1024; ) {
      const vAu = Math.floor(pos / au);
      const n = Math.min((vAu + 1) * au, end) - pos;
      const hole = entry.map[vAu] === 0;
      const last = extents[extents.length - 1];
      if (last && last.hole === hole) last.lengthBytes += n;
      else extents.push({ lengthBytes: n, hole, zero: hole });
      pos += n;
    }
    return extents;
  }
}

/** The bytes a first write to an AU puts on the members, and where in the AU they start. */
function freshImage(chunk: Buffer, inAu: number, au: number, zeroed: boolean): { image: Buffer; imageStart: number } {
  const B = CHECKSUM_BLOCK_BYTES;
  if (inAu === 0 && chunk.length === au) return { image: chunk, imageStart: 0 };
  if (zeroed) {
    // A never-written AU reads as zeroes: only the touched blocks need writing.
    const first = Math.floor(inAu / B);
    const end = Math.ceil((inAu + chunk.length) / B);
    const image = Buffer.alloc((end - first) * B);
    chunk.copy(image, inAu - first * B);
    return { image, imageStart: first * B };
  }
  const image = Buffer.alloc(au);
  chunk.copy(image, inAu);
  return { image, imageStart: 0 };
}
