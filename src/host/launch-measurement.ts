/**
 * Measured launch: digests (SHA-256) of what a VM's QEMU really runs, read from the process
 * itself rather than from the paths the agent meant: its binary (`/proc/PID/exe`), the files it
 * holds open (`/proc/PID/fd`: the kernel and initrd the agent handed it as fds 3 and 4, the
 * firmware's code, the disk images under the VM's overlay) and a canonical form of its command
 * line. `verifyLaunch` compares them with the values a trusted launch expects.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { readFile, readdir, readlink, stat } from 'node:fs/promises';
import { basename } from 'node:path';
import { NubisError } from '../core/errors.ts';
import type { LaunchMeasurement } from '../agent-api/contract.ts';
import type { VmSpec } from '../compute/vm-spec.ts';

/** The fds a QEMU inherits the boot files on (platform-args.ts `inheritFds`: 3, 4, ...). */
export const KERNEL_FD = 3;
export const INITRD_FD = 4;

/** Digests of unchanged files (same inode, size and time of change), so a big base image is read once per agent run. */
const digestCache = new Map<string, string>();

async function fileDigest(path: string): Promise<string> {
  const info = await stat(path);
  const key = `${info.dev}:${info.ino}:${info.size}:${info.ctimeMs}`;
  const cached = digestCache.get(key);
  if (cached) return cached;
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  const digest = hash.digest('hex');
  digestCache.set(key, digest);
  return digest;
}

/**
 * The command line with what differs from one start of the same VM to the next left out: its
 * folder (another host's path after a migration), `-incoming` and the paused start `-S`.
 */
export function canonicalCommandLine(args: string[], vmDir: string): string {
  const kept: string[] = [];
  for (let i = 0; i < args.length; i++) {
    if (args[i] === '-S') continue;
    if (args[i] === '-incoming') {
      i++;
      continue;
    }
    kept.push(args[i].replaceAll(vmDir, '<vm>'));
  }
  return kept.join(' ');
}

/** Measures the QEMU `pid` of the VM in `vmDir` started from `spec`, as it runs now. */
export async function measureLaunch(pid: number, vmDir: string, spec: VmSpec, firmwareCodePath?: string): Promise<LaunchMeasurement> {
  const components: LaunchMeasurement['components'] = [];
  const proc = `/proc/${pid}`;
  components.push({ component: 'qemu-binary', path: await readlink(`${proc}/exe`), sha256: await fileDigest(`${proc}/exe`) });
  const args = (await readFile(`${proc}/cmdline`, 'utf8')).split('\0').slice(1, -1);
  const canonical = canonicalCommandLine(args, vmDir);
  components.push({ component: 'command-line', path: canonical.slice(0, 4000), sha256: createHash('sha256').update(canonical).digest('hex') });
  const ownFiles = new Set(spec.disks.flatMap((disk) => (disk.kind === 'file' ? [disk.path] : [])));
  for (const fd of (await readdir(`${proc}/fd`)).map(Number).sort((a, b) => a - b)) {
    const target = await readlink(`${proc}/fd/${fd}`).catch(() => '');
    // memfd: QEMU's own anonymous memory (its display surface), not a file it was given.
    if (!target.startsWith('/') || target.startsWith('/memfd:') || target.startsWith('/dev/') || target.startsWith(`${vmDir}/`) || ownFiles.has(target))
      continue;
    if (!(await stat(`${proc}/fd/${fd}`).catch(() => undefined))?.isFile()) continue;
    const component =
      spec.boot.kind === 'kernel' && fd === KERNEL_FD
        ? 'kernel'
        : spec.boot.kind === 'kernel' && fd === INITRD_FD
          ? 'initrd'
          : target === firmwareCodePath
            ? 'firmware'
            : `disk-base:${basename(target)}`;
    if (components.some((c) => c.component === component)) continue; // one file opened twice
    components.push({ component, path: target, sha256: await fileDigest(`${proc}/fd/${fd}`) });
  }
  return { measuredAt: new Date().toISOString(), components };
}

/** What differs between `measured` and `expected`, one line per component; empty when all match. */
export function launchDifferences(measured: LaunchMeasurement, expected: Array<{ component: string; sha256: string }>): string[] {
  return expected.flatMap(({ component, sha256 }) => {
    const found = measured.components.find((c) => c.component === component);
    if (!found) return [`${component}: expected ${sha256.slice(0, 16)}..., not measured`];
    return found.sha256 === sha256
      ? []
      : [`${component} (${found.path.slice(0, 200)}): measured ${found.sha256.slice(0, 16)}..., expected ${sha256.slice(0, 16)}...`];
  });
}

/** Throws `TRUSTED_LAUNCH_MISMATCH` naming each component that differs from what the VM's trusted launch expects. */
export function verifyLaunch(name: string, measured: LaunchMeasurement, expected: Array<{ component: string; sha256: string }>): void {
  const differences = launchDifferences(measured, expected);
  if (differences.length > 0)
    throw new NubisError(
      'TRUSTED_LAUNCH_MISMATCH',
      `VM ${name} was not started: its launch does not match its project's trusted measurements: ${differences.join('; ')}. Check the image and the host's software, or record new expected values`,
      { details: { differences } },
    );
}
