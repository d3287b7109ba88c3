/**
 * The installed QEMU's version, and the refusal of one too old to trust with guest memory: under
 * TCG, QEMU 7.2 lost memory the guest wrote during the later passes of a pre-copy and hung in
 * post-copy recovery (bench/migration/RESULTS.md). The minimum lives in package.json, where the
 * first-run setup (scripts/setup.mjs) reads it to install a recent enough QEMU.
 */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { NubisError } from '../../core/errors.ts';
import { QEMU_BINARY } from './qemu-process.ts';

const packageJson = JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as { nubis: { minimumQemuMajor: number } };
export const MINIMUM_QEMU_MAJOR = packageJson.nubis.minimumQemuMajor;

/** `qemu-system-x86_64 --version`'s first line, e.g. "QEMU emulator version 10.0.2 (Debian ...)". */
export function qemuVersionLine(): string {
  try {
    return execFileSync(QEMU_BINARY, ['--version'], { encoding: 'utf8' }).split('\n')[0];
  } catch {
    return 'unknown';
  }
}

/** [major, minor, micro] from a `--version` line, or undefined when it names none. */
export function parseQemuVersion(versionLine: string): [number, number, number] | undefined {
  const match = /version (\d+)\.(\d+)\.(\d+)/.exec(versionLine);
  return match ? [Number(match[1]), Number(match[2]), Number(match[3])] : undefined;
}

/**
 * Whether a VM can migrate from a host running `sourceLine`'s QEMU to one running
 * `destinationLine`'s: QEMU loads the streams of its own and older releases (with the same
 * machine type), never those of a newer one. Unknown versions are not held against a host.
 */
export function canMigrateBetween(sourceLine: string | null | undefined, destinationLine: string | null | undefined): boolean {
  const source = sourceLine ? parseQemuVersion(sourceLine) : undefined;
  const destination = destinationLine ? parseQemuVersion(destinationLine) : undefined;
  if (!source || !destination) return true;
  for (let i = 0; i < 3; i++) if (source[i] !== destination[i]) return destination[i] > source[i];
  return true;
}

/** Throws QEMU_TOO_OLD (or QEMU_MISSING) unless the installed QEMU is at least the minimum. */
export function requireSupportedQemu(versionLine = qemuVersionLine()): void {
  const major = parseQemuVersion(versionLine)?.[0];
  if (major === undefined) {
    throw new NubisError(
      'QEMU_MISSING',
      `${QEMU_BINARY} could not be run or did not report its version: run \`npm start\` (or node scripts/setup.mjs) as root to install QEMU ${MINIMUM_QEMU_MAJOR} or newer`,
    );
  }
  if (major < MINIMUM_QEMU_MAJOR) {
    throw new NubisError(
      'QEMU_TOO_OLD',
      `${versionLine} is older than QEMU ${MINIMUM_QEMU_MAJOR}, which Nubis needs (7.2 lost guest memory in live migration under TCG): run \`npm start\` (or node scripts/setup.mjs) as root, which installs it, on Debian 12 from bookworm-backports`,
    );
  }
}
