/**
 * Finds what a device already holds (a filesystem, a partition table, another storage stack's
 * header, a Nubis pool label) from its magic bytes, so that creating a pool or replacing a member
 * does not overwrite someone's data without being told to. We read the bytes ourselves through
 * the member's own I/O (files, block devices and NBD exports alike) rather than run blkid: the
 * storage engine must not depend on what a host has installed. Offsets are those of util-linux's
 * libblkid probes (libblkid/src/superblocks/*.c, partitions/*.c), cited per signature.
 */
import { decodeLabel } from './metadata-format.ts';

/** Something found on a device. */
export interface DeviceSignature {
  /** Short machine name: `ext4`, `gpt`, `nubis-pool`, ... */
  kind: string;
  /** What a person reads after "holds": `an ext4 filesystem`, `a GPT partition table`. */
  description: string;
  /** The Nubis pool a label names (kind `nubis-pool`). */
  pool?: string;
  /** The pool's UUID, to tell whether it is a pool this node serves. */
  poolUuid?: string;
}

/** The bytes from the start of a device that the probes look at (btrfs ends at 64 KiB + 72). */
export const SIGNATURE_HEAD_BYTES = 68 * 1024;
/** The bytes from the end (md 0.90 keeps its superblock in the last 64-128 KiB). */
export const SIGNATURE_TAIL_BYTES = 128 * 1024;

const MD_MAGIC = 0xa92b4efc;

function ascii(buffer: Buffer, offset: number, text: string): boolean {
  return offset + text.length <= buffer.length && buffer.toString('latin1', offset, offset + text.length) === text;
}

function u32le(buffer: Buffer, offset: number): number | undefined {
  return offset + 4 <= buffer.length ? buffer.readUInt32LE(offset) : undefined;
}

/** ext2/3/4 share the superblock magic; the feature flags tell them apart (blkid ext.c). */
function extFlavour(head: Buffer): string {
  const sb = 1024;
  const compat = head.readUInt32LE(sb + 0x5c);
  const incompat = head.readUInt32LE(sb + 0x60);
  const roCompat = head.readUInt32LE(sb + 0x64);
  // What ext3 supports: incompat FILETYPE | RECOVER | META_BG; ro_compat SPARSE_SUPER | LARGE_FILE | BTREE_DIR.
  if ((incompat & ~(0x0002 | 0x0004 | 0x0010)) !== 0 || (roCompat & ~(0x0001 | 0x0002 | 0x0004)) !== 0) return 'ext4';
  return (compat & 0x0004) !== 0 ? 'ext3' : 'ext2';
}

/**
 * Identifies the content of a device from its first bytes (`head`, at least
 * SIGNATURE_HEAD_BYTES unless the device is smaller) and, optionally, its last bytes (`tail`,
 * ending at `sizeBytes`). Returns the first match, undefined for a blank device.
 */
export function identifyDeviceContent(head: Buffer, tail?: { buffer: Buffer; sizeBytes: number }): DeviceSignature | undefined {
  // Our own label first: it names the pool, which helps more than "some data".
  if (ascii(head, 0, 'NUBISPL1')) {
    try {
      const label = decodeLabel(head.subarray(0, 4096));
      if (label)
        return {
          kind: 'nubis-pool',
          description: `the label of member ${label.memberIndex} of Nubis pool ${label.poolName}`,
          pool: label.poolName,
          poolUuid: label.poolUuid,
        };
    } catch {
      // A damaged label still says a pool was here.
    }
    return { kind: 'nubis-pool', description: 'a damaged Nubis pool label' };
  }
  // LUKS1/LUKS2 header: "LUKS\xba\xbe" at 0 (blkid luks.c).
  if (head.length >= 6 && head.subarray(0, 6).equals(Buffer.from([0x4c, 0x55, 0x4b, 0x53, 0xba, 0xbe])))
    return { kind: 'luks', description: 'a LUKS encrypted volume' };
  // XFS superblock magic "XFSB" at 0 (blkid xfs.c).
  if (ascii(head, 0, 'XFSB')) return { kind: 'xfs', description: 'an XFS filesystem' };
  // md superblock 1.1 at 0, 1.2 at 4 KiB (blkid linux_raid.c).
  if (u32le(head, 0) === MD_MAGIC || u32le(head, 4096) === MD_MAGIC) return { kind: 'linux-raid', description: 'a Linux md RAID member superblock' };
  // LVM2 physical volume: "LABELONE" at the start of one of the first four sectors (blkid lvm2.c).
  for (let sector = 0; sector < 4; sector++) {
    if (ascii(head, sector * 512, 'LABELONE')) return { kind: 'lvm2', description: 'an LVM2 physical volume label' };
  }
  // ext2/3/4: s_magic 0xEF53 at 1024 + 56 (blkid ext.c).
  if (head.length >= 1024 + 0x68 && head.readUInt16LE(1080) === 0xef53) {
    const kind = extFlavour(head);
    return { kind, description: `an ${kind} filesystem` };
  }
  // btrfs superblock at 64 KiB, magic "_BHRfS_M" at offset 0x40 in it (blkid btrfs.c).
  if (ascii(head, 65536 + 0x40, '_BHRfS_M')) return { kind: 'btrfs', description: 'a btrfs filesystem' };
  // Swap: "SWAPSPACE2" (or the old "SWAP-SPACE") in the last 10 bytes of the first page (blkid swap.c).
  for (const pageBytes of [4096, 8192, 16384, 65536]) {
    if (ascii(head, pageBytes - 10, 'SWAPSPACE2') || ascii(head, pageBytes - 10, 'SWAP-SPACE')) return { kind: 'swap', description: 'Linux swap space' };
  }
  // GPT header "EFI PART" in LBA 1, for 512-byte and 4 KiB sectors (UEFI spec 5.3.2).
  if (ascii(head, 512, 'EFI PART') || ascii(head, 4096, 'EFI PART')) return { kind: 'gpt', description: 'a GPT partition table' };
  // MBR: 0x55AA at 510 and at least one of the four entries at 446 used (a type byte at +4).
  if (head.length >= 512 && head[510] === 0x55 && head[511] === 0xaa) {
    for (let entry = 0; entry < 4; entry++) {
      if (head[446 + entry * 16 + 4] !== 0) return { kind: 'mbr', description: 'an MBR partition table' };
    }
  }
  // md 0.90 at the last 64 KiB boundary minus 64 KiB; md 1.0 at 8 KiB before the end, 4 KiB aligned.
  if (tail) {
    const tailStart = tail.sizeBytes - tail.buffer.length;
    const at = (position: number) => (position >= tailStart && position + 4 <= tail.sizeBytes ? u32le(tail.buffer, position - tailStart) : undefined);
    const md090 = Math.floor(tail.sizeBytes / 65536) * 65536 - 65536;
    const md10 = Math.floor((tail.sizeBytes - 8192) / 4096) * 4096;
    if ((md090 >= 0 && at(md090) === MD_MAGIC) || (md10 >= 0 && at(md10) === MD_MAGIC))
      return { kind: 'linux-raid', description: 'a Linux md RAID member superblock' };
  }
  return undefined;
}

/** Anything with positioned reads and a size: a `MemberDevice`. */
export interface ReadableDevice {
  readonly sizeBytes: number;
  read(buffer: Buffer, offset: number, length: number, position: number): Promise<void>;
}

/** Reads the head and tail of `device` and identifies what it holds (undefined when blank). */
export async function readDeviceSignature(device: ReadableDevice): Promise<DeviceSignature | undefined> {
  const headBytes = Math.min(SIGNATURE_HEAD_BYTES, device.sizeBytes);
  const head = Buffer.alloc(SIGNATURE_HEAD_BYTES);
  if (headBytes > 0) await device.read(head, 0, headBytes, 0);
  let tail: { buffer: Buffer; sizeBytes: number } | undefined;
  if (device.sizeBytes > SIGNATURE_HEAD_BYTES) {
    const tailBytes = Math.min(SIGNATURE_TAIL_BYTES, device.sizeBytes);
    const buffer = Buffer.alloc(tailBytes);
    await device.read(buffer, 0, tailBytes, device.sizeBytes - tailBytes);
    tail = { buffer, sizeBytes: device.sizeBytes };
  }
  return identifyDeviceContent(head, tail);
}
