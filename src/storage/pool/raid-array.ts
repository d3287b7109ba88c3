/**
 * The RAID layer of a pool: one contiguous logical address space striped over member devices
 * with RAID 0, 1, 5, 6 or 10 and a chunk size, serving reads and writes with members missing.
 *
 * Layouts (every member holds `rows` chunks after its metadata area):
 * - raid0: chunk c on member c % n.                          usable n * rows * chunk
 * - raid1: every member holds everything.                    usable rows * chunk
 * - raid10: n/2 mirrored pairs, chunks striped over pairs.   usable n/2 * rows * chunk
 * - raid5: rotating parity P, left-symmetric like md.        usable (n-1) * rows * chunk
 * - raid6: rotating P and Q (GF(2^8) syndrome).              usable (n-2) * rows * chunk
 *
 * Concurrency contract: callers never write the same row from two requests at once (the pool
 * holds its allocation-unit lock around every write, and allocation units are whole rows).
 */
import { NubisError } from '../../core/errors.ts';
import { gfInv, gfPow2, mulInPlace, mulXorInto, xorInto } from './gf256.ts';
import type { MemberDevice } from './member-device.ts';

export type RaidLayout = 'raid0' | 'raid1' | 'raid5' | 'raid6' | 'raid10';
export const RAID_LAYOUTS: readonly RaidLayout[] = ['raid0', 'raid1', 'raid5', 'raid6', 'raid10'];

export type MemberState = 'online' | 'missing' | 'faulted' | 'rebuilding';

/** One member position of the array; `device` is absent when missing. */
export interface MemberSlot {
  index: number;
  path: string;
  device?: MemberDevice;
  state: MemberState;
  /** While rebuilding: rows below this hold current data. */
  rebuiltRows: number;
  readErrors: number;
  writeErrors: number;
  checksumErrors: number;
}

/** Fixed shape of an array. */
export interface RaidGeometry {
  layout: RaidLayout;
  memberCount: number;
  chunkBytes: number;
  /** Where data starts on every member (after label and metadata). */
  dataStartBytes: number;
  rows: number;
}

/** Minimum members per layout and how many may be lost. */
export function layoutRules(layout: RaidLayout, memberCount: number): { minMembers: number; tolerated: number } {
  switch (layout) {
    case 'raid0':
      return { minMembers: 1, tolerated: 0 };
    case 'raid1':
      return { minMembers: 1, tolerated: memberCount - 1 };
    case 'raid10':
      return { minMembers: 4, tolerated: 1 };
    case 'raid5':
      return { minMembers: 3, tolerated: 1 };
    case 'raid6':
      return { minMembers: 4, tolerated: 2 };
  }
}

/** Data chunks per row. */
export function dataChunksPerRow(layout: RaidLayout, memberCount: number): number {
  switch (layout) {
    case 'raid0':
      return memberCount;
    case 'raid1':
      return 1;
    case 'raid10':
      return memberCount / 2;
    case 'raid5':
      return memberCount - 1;
    case 'raid6':
      return memberCount - 2;
  }
}

const TWO_MEMBERS_PER_PAIR = 2;

/** Reads, writes and repairs over the members of one pool. */
export class RaidArray {
  readonly geometry: RaidGeometry;
  readonly members: MemberSlot[];
  readonly sizeBytes: number;
  readonly rowDataBytes: number;
  readonly #dataPerRow: number;
  readonly #parity: number;

  constructor(geometry: RaidGeometry, members: MemberSlot[]) {
    this.geometry = geometry;
    this.members = members;
    this.#dataPerRow = dataChunksPerRow(geometry.layout, geometry.memberCount);
    this.#parity = geometry.layout === 'raid5' ? 1 : geometry.layout === 'raid6' ? 2 : 0;
    this.rowDataBytes = this.#dataPerRow * geometry.chunkBytes;
    this.sizeBytes = this.rowDataBytes * geometry.rows;
  }

  get hasParity(): boolean {
    return this.#parity > 0;
  }

  /** Members that cannot serve reads of `row`. */
  #unreadable(member: MemberSlot, row: number): boolean {
    if (!member.device) return true;
    if (member.state === 'online') return false;
    return !(member.state === 'rebuilding' && row < member.rebuiltRows);
  }

  #writable(member: MemberSlot): boolean {
    return member.device !== undefined && (member.state === 'online' || member.state === 'rebuilding');
  }

  /** Members that hold copies of data column `group` (mirror layouts). */
  #mirrorGroup(group: number): number[] {
    switch (this.geometry.layout) {
      case 'raid0':
        return [group];
      case 'raid10':
        return [TWO_MEMBERS_PER_PAIR * group, TWO_MEMBERS_PER_PAIR * group + 1];
      default:
        return this.members.map((m) => m.index);
    }
  }

  /** Parity layouts: member of P, of Q (raid6) and of each data index, for `row`. */
  #parityMembers(row: number): { p: number; q: number; data: (d: number) => number } {
    const n = this.geometry.memberCount;
    const p = n - 1 - (row % n);
    const q = (p + 1) % n;
    const first = this.#parity === 2 ? 2 : 1;
    return { p, q: this.#parity === 2 ? q : -1, data: (d) => (p + first + d) % n };
  }

  #memberOffset(row: number, inChunk: number): number {
    return this.geometry.dataStartBytes + row * this.geometry.chunkBytes + inChunk;
  }

  /** Splits a logical range into pieces that each lie in one chunk. */
  #pieces(position: number, length: number, fn: (row: number, dataIndex: number, inChunk: number, pieceLength: number, done: number) => void): void {
    const chunk = this.geometry.chunkBytes;
    let done = 0;
    while (done < length) {
      const pos = position + done;
      const c = Math.floor(pos / chunk);
      const inChunk = pos - c * chunk;
      const n = Math.min(chunk - inChunk, length - done);
      fn(Math.floor(c / this.#dataPerRow), c % this.#dataPerRow, inChunk, n, done);
      done += n;
    }
  }

  #checkRange(position: number, length: number): void {
    if (position < 0 || length < 0 || position + length > this.sizeBytes) {
      throw new NubisError('POOL_IO_RANGE', `Range ${position}+${length} lies outside the pool's ${this.sizeBytes} bytes`);
    }
  }

  async #readMember(member: MemberSlot, buffer: Buffer, offset: number, length: number, position: number): Promise<boolean> {
    try {
      await member.device!.read(buffer, offset, length, position);
      return true;
    } catch {
      member.readErrors++;
      return false;
    }
  }

  async #writeMember(member: MemberSlot, buffer: Buffer, offset: number, length: number, position: number): Promise<boolean> {
    try {
      await member.device!.write(buffer, offset, length, position);
      return true;
    } catch {
      // A member that fails a write no longer holds current data: take it out (zpool: FAULTED).
      member.writeErrors++;
      member.state = 'faulted';
      return false;
    }
  }

  /** Reads `length` bytes of the logical space into `buffer` at `offset`. */
  async read(buffer: Buffer, offset: number, length: number, position: number): Promise<void> {
    this.#checkRange(position, length);
    const jobs: Promise<void>[] = [];
    if (!this.hasParity) {
      this.#runs(position, length, (row, dataIndex, inChunk, n, done) => jobs.push(this.#readPiece(row, dataIndex, inChunk, n, buffer, offset + done)));
    } else {
      this.#pieces(position, length, (row, dataIndex, inChunk, n, done) => {
        jobs.push(this.#readPiece(row, dataIndex, inChunk, n, buffer, offset + done));
      });
    }
    await Promise.all(jobs);
  }

  /**
   * Mirror layouts: like #pieces, but consecutive chunks of one mirror group that are adjacent on
   * disk (raid1, a one-member raid0) become one run, so a 1 MiB request is one system call.
   */
  #runs(position: number, length: number, fn: (row: number, dataIndex: number, inChunk: number, runLength: number, done: number) => void): void {
    let current: [number, number, number, number, number] | undefined;
    this.#pieces(position, length, (row, dataIndex, inChunk, n, done) => {
      if (
        current &&
        current[1] === dataIndex &&
        inChunk === 0 &&
        current[0] * this.geometry.chunkBytes + current[2] + current[3] === row * this.geometry.chunkBytes
      ) {
        current[3] += n;
        return;
      }
      if (current) fn(...current);
      current = [row, dataIndex, inChunk, n, done];
    });
    if (current) fn(...current);
  }

  async #readPiece(row: number, dataIndex: number, inChunk: number, length: number, buffer: Buffer, offset: number): Promise<void> {
    const memberPosition = this.#memberOffset(row, inChunk);
    if (!this.hasParity) {
      const group = this.#mirrorGroup(dataIndex);
      // A run may span rows: a rebuilding member must have rebuilt the last of them.
      const lastRow = row + Math.floor((inChunk + length - 1) / this.geometry.chunkBytes);
      // Spread reads of mirrors over their members by row.
      for (let k = 0; k < group.length; k++) {
        const member = this.members[group[(row + k) % group.length]!]!;
        if (this.#unreadable(member, lastRow)) continue;
        if (await this.#readMember(member, buffer, offset, length, memberPosition)) return;
      }
      throw new NubisError('POOL_FAULTED', `No member can serve row ${row}: the pool has lost more members than its layout tolerates`);
    }
    const layout = this.#parityMembers(row);
    const member = this.members[layout.data(dataIndex)]!;
    if (!this.#unreadable(member, row) && (await this.#readMember(member, buffer, offset, length, memberPosition))) return;
    const pieces = await this.#reconstructRow(row, inChunk, length, new Set([member.index]));
    pieces.get(member.index)!.copy(buffer, offset);
  }

  /**
   * Reads column [inChunk, inChunk+length) of every member of `row` and solves the members in
   * `lost` (plus any that cannot be read) from parity. Returns every member's piece.
   */
  async #reconstructRow(row: number, inChunk: number, length: number, lost: Set<number>, useOnly?: 'p' | 'q'): Promise<Map<number, Buffer>> {
    const layout = this.#parityMembers(row);
    const memberPosition = this.#memberOffset(row, inChunk);
    const pieces = new Map<number, Buffer>();
    const missing = new Set(lost);
    await Promise.all(
      this.members.map(async (member) => {
        if (missing.has(member.index) || this.#unreadable(member, row)) {
          missing.add(member.index);
          return;
        }
        const piece = Buffer.allocUnsafe(length);
        if (await this.#readMember(member, piece, 0, length, memberPosition)) pieces.set(member.index, piece);
        else missing.add(member.index);
      }),
    );
    if (useOnly === 'q' && layout.p >= 0) {
      missing.add(layout.p);
      pieces.delete(layout.p);
    }
    if (useOnly === 'p' && layout.q >= 0) {
      missing.add(layout.q);
      pieces.delete(layout.q);
    }
    const lostData: number[] = [];
    for (let d = 0; d < this.#dataPerRow; d++) if (missing.has(layout.data(d))) lostData.push(d);
    const haveP = pieces.has(layout.p);
    const haveQ = layout.q >= 0 && pieces.has(layout.q);
    if (lostData.length === 0) {
      // Only parity lost: recompute it.
    } else if (lostData.length === 1 && haveP) {
      const x = lostData[0]!;
      const out = Buffer.from(pieces.get(layout.p)!);
      for (let d = 0; d < this.#dataPerRow; d++) if (d !== x) xorInto(out, pieces.get(layout.data(d))!);
      pieces.set(layout.data(x), out);
    } else if (lostData.length === 1 && haveQ) {
      const x = lostData[0]!;
      const out = Buffer.from(pieces.get(layout.q)!);
      for (let d = 0; d < this.#dataPerRow; d++) if (d !== x) mulXorInto(out, pieces.get(layout.data(d))!, gfPow2(d));
      mulInPlace(out, gfInv(gfPow2(x)));
      pieces.set(layout.data(x), out);
    } else if (lostData.length === 2 && haveP && haveQ) {
      const [x, y] = lostData as [number, number];
      const pxy = Buffer.from(pieces.get(layout.p)!);
      const qxy = Buffer.from(pieces.get(layout.q)!);
      for (let d = 0; d < this.#dataPerRow; d++) {
        if (d === x || d === y) continue;
        const piece = pieces.get(layout.data(d))!;
        xorInto(pxy, piece);
        mulXorInto(qxy, piece, gfPow2(d));
      }
      // Pxy = Dx ^ Dy and Qxy = g^x Dx ^ g^y Dy, so Dx = (Qxy ^ g^y Pxy) / (g^x ^ g^y).
      const dx = Buffer.from(qxy);
      mulXorInto(dx, pxy, gfPow2(y));
      mulInPlace(dx, gfInv(gfPow2(x) ^ gfPow2(y)));
      const dy = Buffer.from(pxy);
      xorInto(dy, dx);
      pieces.set(layout.data(x), dx);
      pieces.set(layout.data(y), dy);
    } else {
      throw new NubisError('POOL_FAULTED', `Row ${row} cannot be reconstructed: too many members are missing`);
    }
    this.#computeParity(row, pieces, length);
    return pieces;
  }

  /** Sets P (and Q) in `pieces` from its data pieces. */
  #computeParity(row: number, pieces: Map<number, Buffer>, length: number): void {
    const layout = this.#parityMembers(row);
    const p = Buffer.alloc(length);
    const q = this.#parity === 2 ? Buffer.alloc(length) : undefined;
    for (let d = 0; d < this.#dataPerRow; d++) {
      const piece = pieces.get(layout.data(d))!;
      xorInto(p, piece);
      if (q) mulXorInto(q, piece, gfPow2(d));
    }
    pieces.set(layout.p, p);
    if (q) pieces.set(layout.q, q);
  }

  /** Writes `length` bytes from `buffer` at `offset` to the logical space. */
  async write(buffer: Buffer, offset: number, length: number, position: number): Promise<void> {
    this.#checkRange(position, length);
    if (!this.hasParity) {
      const jobs: Promise<void>[] = [];
      this.#runs(position, length, (row, dataIndex, inChunk, n, done) => {
        jobs.push(this.#writeMirrored(row, dataIndex, inChunk, n, buffer, offset + done));
      });
      await Promise.all(jobs);
      return;
    }
    // Parity layouts: group pieces by row, then reconstruct-write the touched column range.
    const rows = new Map<number, Array<{ dataIndex: number; inChunk: number; length: number; done: number }>>();
    this.#pieces(position, length, (row, dataIndex, inChunk, n, done) => {
      let list = rows.get(row);
      if (!list) rows.set(row, (list = []));
      list.push({ dataIndex, inChunk, length: n, done });
    });
    await Promise.all([...rows].map(([row, pieces]) => this.#writeParityRow(row, pieces, buffer, offset)));
  }

  async #writeMirrored(row: number, dataIndex: number, inChunk: number, length: number, buffer: Buffer, offset: number): Promise<void> {
    const position = this.#memberOffset(row, inChunk);
    const targets = this.#mirrorGroup(dataIndex)
      .map((i) => this.members[i]!)
      .filter((m) => this.#writable(m));
    const results = await Promise.all(targets.map((m) => this.#writeMember(m, buffer, offset, length, position)));
    if (!results.some(Boolean)) throw new NubisError('POOL_FAULTED', `No member could store row ${row}: the pool is faulted`);
  }

  async #writeParityRow(
    row: number,
    touched: Array<{ dataIndex: number; inChunk: number; length: number; done: number }>,
    buffer: Buffer,
    offset: number,
  ): Promise<void> {
    const layout = this.#parityMembers(row);
    const start = Math.min(...touched.map((t) => t.inChunk));
    const end = Math.max(...touched.map((t) => t.inChunk + t.length));
    const width = end - start;
    const fullyCovered = new Set(touched.filter((t) => t.inChunk === start && t.length === width).map((t) => t.dataIndex));
    let pieces: Map<number, Buffer>;
    const needOld = fullyCovered.size < this.#dataPerRow;
    const anyDataLost = Array.from({ length: this.#dataPerRow }, (_, d) => this.members[layout.data(d)]!).some((m) => this.#unreadable(m, row));
    if (needOld && anyDataLost) {
      pieces = await this.#reconstructRow(row, start, width, new Set());
    } else {
      pieces = new Map();
      if (needOld) {
        const memberPosition = this.#memberOffset(row, start);
        await Promise.all(
          Array.from({ length: this.#dataPerRow }, async (_, d) => {
            if (fullyCovered.has(d)) return;
            const member = this.members[layout.data(d)]!;
            const piece = Buffer.allocUnsafe(width);
            if (await this.#readMember(member, piece, 0, width, memberPosition)) {
              pieces.set(member.index, piece);
              return;
            }
            const rebuilt = await this.#reconstructRow(row, start, width, new Set([member.index]));
            pieces.set(member.index, rebuilt.get(member.index)!);
          }),
        );
      }
    }
    for (const t of touched) {
      const memberIndex = layout.data(t.dataIndex);
      let piece = pieces.get(memberIndex);
      if (!piece || piece.length !== width) {
        piece = Buffer.alloc(width);
        pieces.set(memberIndex, piece);
      }
      buffer.copy(piece, t.inChunk - start, offset + t.done, offset + t.done + t.length);
    }
    this.#computeParity(row, pieces, width);
    const writes: Promise<boolean>[] = [];
    const memberPosition = this.#memberOffset(row, start);
    const touchedMembers = new Set(touched.map((t) => layout.data(t.dataIndex)));
    touchedMembers.add(layout.p);
    if (layout.q >= 0) touchedMembers.add(layout.q);
    let attempted = 0;
    for (const index of touchedMembers) {
      const member = this.members[index]!;
      if (!this.#writable(member)) continue;
      attempted++;
      writes.push(this.#writeMember(member, pieces.get(index)!, 0, width, memberPosition));
    }
    const ok = (await Promise.all(writes)).filter(Boolean).length;
    const lost = this.members.filter((m) => !this.#writable(m)).length;
    if (attempted === 0 || ok === 0 || lost > this.#parity) {
      throw new NubisError('POOL_FAULTED', `Row ${row} could not be written: more members lost than ${this.geometry.layout} tolerates`);
    }
  }

  /** Makes completed writes durable on every writable member. */
  async flush(): Promise<void> {
    await Promise.all(
      this.members.map(async (member) => {
        if (!this.#writable(member)) return;
        try {
          await member.device!.flush();
        } catch {
          member.writeErrors++;
          member.state = 'faulted';
        }
      }),
    );
  }

  /**
   * Other ways to read `length` bytes at `position` (within one chunk) when the normal read gave
   * bad data. A mirror candidate names the member it was read from (`source`); a parity
   * candidate names the member it assumes is wrong (`suspect`). Used by repair and scrub.
   */
  async *alternatives(position: number, length: number): AsyncGenerator<{ source: number; suspect: number; data: Buffer }> {
    const chunk = this.geometry.chunkBytes;
    const c = Math.floor(position / chunk);
    const inChunk = position - c * chunk;
    const row = Math.floor(c / this.#dataPerRow);
    const dataIndex = c % this.#dataPerRow;
    if (!this.hasParity) {
      for (const index of this.#mirrorGroup(dataIndex)) {
        const member = this.members[index]!;
        if (this.#unreadable(member, row)) continue;
        const data = Buffer.allocUnsafe(length);
        if (await this.#readMember(member, data, 0, length, this.#memberOffset(row, inChunk))) {
          yield { source: index, suspect: -1, data };
        }
      }
      return;
    }
    const layout = this.#parityMembers(row);
    const target = layout.data(dataIndex);
    for (const useOnly of this.#parity === 2 ? (['p', 'q'] as const) : (['p'] as const)) {
      try {
        const pieces = await this.#reconstructRow(row, inChunk, length, new Set([target]), useOnly);
        yield { source: -1, suspect: target, data: pieces.get(target)! };
      } catch {
        // Not solvable this way.
      }
    }
    if (this.#parity === 2) {
      // The bad block may be another data member of the row: lose it too and solve with P and Q.
      for (let d = 0; d < this.#dataPerRow; d++) {
        const other = layout.data(d);
        if (other === target) continue;
        try {
          const pieces = await this.#reconstructRow(row, inChunk, length, new Set([target, other]));
          yield { source: -1, suspect: target, data: pieces.get(target)! };
        } catch {
          // Not solvable this way.
        }
      }
    }
  }

  /**
   * Rewrites good `data` for the block at `position` (within one chunk). Mirrors get it on every
   * copy; parity layouts only on the data member, never recomputing parity from a row that may
   * hold another bad block (parity stays as it was, which is what repaired that block).
   */
  async repairBlock(position: number, data: Buffer): Promise<void> {
    if (!this.hasParity) {
      await this.write(data, 0, data.length, position);
      return;
    }
    const chunk = this.geometry.chunkBytes;
    const c = Math.floor(position / chunk);
    const row = Math.floor(c / this.#dataPerRow);
    const member = this.members[this.#parityMembers(row).data(c % this.#dataPerRow)]!;
    if (this.#writable(member)) await this.#writeMember(member, data, 0, data.length, this.#memberOffset(row, position - c * chunk));
  }

  /**
   * Makes redundancy consistent for rows [firstRow, endRow): mirrors copied from the first
   * readable member, parity recomputed from data. Returns the rows and members that differed.
   */
  async resyncRows(firstRow: number, endRow: number): Promise<{ fixedMembers: number[] }> {
    const fixed: number[] = [];
    const chunk = this.geometry.chunkBytes;
    for (let row = firstRow; row < endRow; row++) {
      const position = this.#memberOffset(row, 0);
      if (!this.hasParity) {
        if (this.geometry.layout === 'raid0') continue;
        for (let group = 0; group < this.#dataPerRow; group++) {
          const members = this.#mirrorGroup(group)
            .map((i) => this.members[i]!)
            .filter((m) => !this.#unreadable(m, row));
          if (members.length < 2) continue;
          const copies = await Promise.all(
            members.map(async (m) => {
              const b = Buffer.allocUnsafe(chunk);
              return (await this.#readMember(m, b, 0, chunk, position)) ? b : undefined;
            }),
          );
          const reference = copies[0];
          if (!reference) continue;
          for (let k = 1; k < members.length; k++) {
            if (copies[k] && !copies[k]!.equals(reference) && (await this.#writeMember(members[k]!, reference, 0, chunk, position))) {
              fixed.push(members[k]!.index);
            }
          }
        }
        continue;
      }
      const layout = this.#parityMembers(row);
      const pieces = new Map<number, Buffer>();
      const stored = new Map<number, Buffer>();
      let readable = true;
      for (let d = 0; d < this.#dataPerRow; d++) {
        const member = this.members[layout.data(d)]!;
        const b = Buffer.allocUnsafe(chunk);
        if (this.#unreadable(member, row) || !(await this.#readMember(member, b, 0, chunk, position))) {
          readable = false;
          break;
        }
        pieces.set(member.index, b);
      }
      if (!readable) continue;
      for (const index of [layout.p, layout.q]) {
        if (index < 0) continue;
        const member = this.members[index]!;
        const b = Buffer.allocUnsafe(chunk);
        if (!this.#unreadable(member, row) && (await this.#readMember(member, b, 0, chunk, position))) stored.set(index, b);
      }
      this.#computeParity(row, pieces, chunk);
      for (const [index, b] of stored) {
        if (!b.equals(pieces.get(index)!) && (await this.#writeMember(this.members[index]!, pieces.get(index)!, 0, chunk, position))) {
          fixed.push(index);
        }
      }
    }
    return { fixedMembers: fixed };
  }

  /** Recomputes member `index`'s chunks of rows [firstRow, endRow) from the others and writes them. */
  async rebuildRows(index: number, firstRow: number, endRow: number): Promise<void> {
    const member = this.members[index]!;
    const chunk = this.geometry.chunkBytes;
    for (let row = firstRow; row < endRow; row++) {
      const position = this.#memberOffset(row, 0);
      let data: Buffer | undefined;
      if (!this.hasParity) {
        const group = [...Array(this.#dataPerRow).keys()].find((g) => this.#mirrorGroup(g).includes(index))!;
        for (const other of this.#mirrorGroup(group)) {
          if (other === index || this.#unreadable(this.members[other]!, row)) continue;
          const b = Buffer.allocUnsafe(chunk);
          if (await this.#readMember(this.members[other]!, b, 0, chunk, position)) {
            data = b;
            break;
          }
        }
        if (!data) throw new NubisError('POOL_FAULTED', `Row ${row} has no readable copy to rebuild member ${index} from`);
      } else {
        data = (await this.#reconstructRow(row, 0, chunk, new Set([index]))).get(index)!;
      }
      if (!(await this.#writeMember(member, data, 0, chunk, position))) {
        throw new NubisError('POOL_DEVICE_FAILED', `Writing to the new member ${member.path} failed during rebuild`);
      }
    }
  }

  /** Members lost (missing or faulted) and whether the layout still serves all data. */
  health(): { lost: number; state: 'online' | 'degraded' | 'faulted' } {
    const lostMembers = this.members.filter((m) => m.state === 'missing' || m.state === 'faulted' || m.state === 'rebuilding');
    if (lostMembers.length === 0) return { lost: 0, state: 'online' };
    let servable: boolean;
    if (this.geometry.layout === 'raid10') {
      servable = [...Array(this.#dataPerRow).keys()].every((g) => this.#mirrorGroup(g).some((i) => !lostMembers.includes(this.members[i]!)));
    } else {
      servable = lostMembers.length <= layoutRules(this.geometry.layout, this.geometry.memberCount).tolerated;
    }
    return { lost: lostMembers.length, state: servable ? 'degraded' : 'faulted' };
  }
}
