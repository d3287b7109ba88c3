/**
 * A bootable disk image of the tiny guest, for tests of VMs that boot from an imported disk
 * image: a FAT file system with syslinux, the tiny kernel and initrd, and a syslinux.cfg that
 * boots them with the guest's name on the kernel command line (its readiness line names it).
 */
import { execFileSync } from 'node:child_process';
import { rmSync, truncateSync, writeFileSync } from 'node:fs';
import { cacheDir } from '../../src/core/paths.ts';
import { readTinyImage } from '../../src/images/build-tiny.ts';

/** Writes the image at `path` (64 MiB) for a guest that calls itself `guestName`. */
export function makeTinyBootDisk(path: string, guestName: string): void {
  const tiny = readTinyImage(cacheDir());
  if (!tiny) throw new Error('The tiny image is not built; nubis up builds it');
  const config = `${path}.syslinux.cfg`;
  writeFileSync(path, '');
  truncateSync(path, 64 * 2 ** 20);
  execFileSync('mkfs.fat', ['-n', 'TINY', path], { stdio: 'ignore' });
  execFileSync('syslinux', ['--install', path]);
  writeFileSync(config, `DEFAULT tiny\nPROMPT 0\nLABEL tiny\n  KERNEL vmlinuz\n  APPEND initrd=initrd.img console=ttyS0 nubis.name=${guestName} panic=-1\n`);
  try {
    execFileSync('mcopy', ['-i', path, tiny.kernelPath, '::/vmlinuz']);
    execFileSync('mcopy', ['-i', path, tiny.initrdPath, '::/initrd.img']);
    execFileSync('mcopy', ['-i', path, config, '::/syslinux.cfg']);
  } finally {
    rmSync(config, { force: true });
  }
}
