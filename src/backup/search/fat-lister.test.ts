import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { parseBootSector, parseDirectory } from './fat-lister.ts';

/** A short (8.3) directory entry; `name` is the 11 raw bytes, space padded. */
function shortEntry(name: string, options: { attributes?: number; caseBits?: number; cluster?: number; size?: number; first?: number } = {}): Buffer {
  const entry = Buffer.alloc(32);
  entry.write(name.padEnd(11, ' '), 0, 'latin1');
  if (options.first !== undefined) entry[0] = options.first;
  entry[11] = options.attributes ?? 0x20;
  entry[12] = options.caseBits ?? 0;
  entry.writeUInt16LE((options.cluster ?? 0) >>> 16, 20);
  entry.writeUInt16LE((options.cluster ?? 0) & 0xffff, 26);
  entry.writeUInt32LE(options.size ?? 0, 28);
  return entry;
}

function checksum(short: Buffer): number {
  let sum = 0;
  for (let i = 0; i < 11; i++) sum = (((sum & 1) << 7) + (sum >> 1) + short[i]) & 0xff;
  return sum;
}

/** The long-name entries for `name` before `short`, last part first, as a VFAT writer lays them out. */
function withLongName(name: string, short: Buffer, badChecksum = false): Buffer {
  const units = Buffer.from(name, 'utf16le');
  const parts = Math.ceil(units.length / 26);
  // Ended by 0x0000 when it does not fill the last part, the rest 0xFFFF.
  const padded = Buffer.alloc(parts * 26, 0xff);
  units.copy(padded);
  if (units.length < padded.length) padded.writeUInt16LE(0, units.length);
  const entries: Buffer[] = [];
  for (let order = parts; order >= 1; order--) {
    const chunk = padded.subarray((order - 1) * 26, order * 26);
    const entry = Buffer.alloc(32);
    entry[0] = order | (order === parts ? 0x40 : 0);
    chunk.copy(entry, 1, 0, 10);
    entry[11] = 0x0f;
    entry[13] = (checksum(short) + (badChecksum ? 1 : 0)) & 0xff;
    chunk.copy(entry, 14, 10, 22);
    chunk.copy(entry, 28, 22, 26);
    entries.push(entry);
  }
  return Buffer.concat([...entries, short]);
}

describe('the FAT directory reader', () => {
  it('reads long names (also beyond the BMP), short names with their case bits, sizes and clusters', () => {
    const directory = Buffer.concat([
      shortEntry('.', { attributes: 0x10 }),
      shortEntry('..', { attributes: 0x10 }),
      shortEntry('VOLUME  LBL', { attributes: 0x08 }),
      withLongName('🙂 a long name with spaces.txt', shortEntry('ALONGN~1TXT', { size: 1234, cluster: 0x12345 })),
      shortEntry('UPPER   TXT', { size: 1 }),
      shortEntry('LOWER   TXT', { caseBits: 0x18, size: 2 }),
      shortEntry('README     ', { caseBits: 0x08 }),
      shortEntry('SUBDIR     ', { attributes: 0x10, cluster: 7 }),
      // fatgen103: a name starting with byte 0xE5 is stored with 0x05.
      shortEntry('XNAME   BIN', { first: 0x05 }),
    ]);
    assert.deepEqual(parseDirectory(directory, true), [
      { name: '🙂 a long name with spaces.txt', isDirectory: false, size: 1234, firstCluster: 0x12345 },
      { name: 'UPPER.TXT', isDirectory: false, size: 1, firstCluster: 0 },
      { name: 'lower.txt', isDirectory: false, size: 2, firstCluster: 0 },
      { name: 'readme', isDirectory: false, size: 0, firstCluster: 0 },
      { name: 'SUBDIR', isDirectory: true, size: 0, firstCluster: 7 },
      { name: '\udce5NAME.BIN', isDirectory: false, size: 0, firstCluster: 0 },
    ]);
  });

  it('skips deleted entries, stops at the end mark, and falls back to the short name when a long one does not belong', () => {
    const directory = Buffer.concat([
      shortEntry('GONE    TXT', { first: 0xe5 }),
      // A long name whose checksum is another short name's: left over from a rename, not this file's.
      withLongName('stale long name.txt', shortEntry('KEPT    TXT'), true),
      // A long name whose short entry was deleted must not stick to the next file.
      withLongName('deleted long name.txt', shortEntry('DELETE~1TXT', { first: 0xe5 })),
      shortEntry('NEXT    TXT'),
      // Only a damaged or forged image holds a '/' in a name: left out, not made a path.
      withLongName('a/b', shortEntry('AB      TXT')),
      Buffer.alloc(32),
      shortEntry('AFTER   END'),
    ]);
    assert.deepEqual(
      parseDirectory(directory, false).map((entry) => entry.name),
      ['KEPT.TXT', 'NEXT.TXT'],
    );
  });

  it('keeps the high half of the first cluster on FAT32 only', () => {
    const entry = shortEntry('FILE    BIN', { cluster: 0x10005 });
    assert.equal(parseDirectory(entry, true)[0].firstCluster, 0x10005);
    assert.equal(parseDirectory(entry, false)[0].firstCluster, 5);
  });

  it('refuses a boot sector that is not FAT', () => {
    assert.throws(() => parseBootSector(Buffer.alloc(512)), /No boot sector signature/);
    const sector = Buffer.alloc(512);
    sector.writeUInt16LE(0xaa55, 510);
    sector.writeUInt16LE(300, 11);
    assert.throws(() => parseBootSector(sector), /Not a FAT boot sector \(300 bytes per sector/);
  });
});
