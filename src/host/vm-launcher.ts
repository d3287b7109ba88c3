/**
 * How the agent starts a VM's processes as the VM's own user: through `nubis-launch`
 * (launcher/nubis-launch.c), which opens the VM's taps, drops root for the VM's uid and gid, sets
 * no_new_privs and runs the program. The launcher is compiled from its source on first use (gcc
 * is one of the packages setup installs) into the cache, under a name that is the digest of its
 * source and compiler, so a changed source is built again and concurrent agents never see half
 * a binary.
 *
 * Isolation needs root: an agent running as another user (a developer's test) starts QEMU as
 * itself, as before, and says so in its host report.
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, statSync } from 'node:fs';
import { chmod, chown, mkdir, readFile, rename, rm } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { promisify } from 'node:util';
import { type VmUser, VMS_GID } from '../compute/vm-user.ts';
import { NubisError, messageOf } from '../core/errors.ts';
import { cacheDir, repoRoot } from '../core/paths.ts';

const run = promisify(execFile);
const SOURCE = join(repoRoot, 'src', 'host', 'launcher', 'nubis-launch.c');
/** The device post-copy migration opens in QEMU; only root and the VMs' group may. */
const USERFAULTFD_DEVICE = '/dev/userfaultfd';
const KVM_DEVICE = '/dev/kvm';

/** True when this agent can start VMs as their own users (it runs as root). */
export function vmUsersAvailable(): boolean {
  return process.getuid?.() === 0;
}

let built: Promise<string> | undefined;

/** The path of the compiled launcher, building it once per agent process when needed. */
export function launcherPath(): Promise<string> {
  built ??= buildLauncher().catch((error) => {
    built = undefined;
    throw error;
  });
  return built;
}

async function buildLauncher(): Promise<string> {
  const source = await readFile(SOURCE);
  const compiler = (await run('gcc', ['-dumpfullversion']).catch(missingGcc)).stdout.trim();
  const digest = createHash('sha256').update(source).update(`\0gcc ${compiler}`).digest('hex').slice(0, 16);
  const binary = join(cacheDir(), 'launcher', digest, 'nubis-launch');
  if (existsSync(binary)) return binary;
  await mkdir(dirname(binary), { recursive: true, mode: 0o755 });
  const partial = `${binary}.${process.pid}.partial`;
  try {
    await run('gcc', ['-O2', '-Wall', '-Wextra', '-Werror', '-o', partial, SOURCE]).catch(missingGcc);
    await chmod(partial, 0o755);
    await rename(partial, binary);
  } finally {
    await rm(partial, { force: true });
  }
  return binary;
}

function missingGcc(error: unknown): never {
  throw new NubisError('VM_START_FAILED', `Cannot build nubis-launch, which starts VMs as their own users: ${messageOf(error)}; install gcc (npm start does)`, {
    cause: error,
  });
}

/**
 * The supplementary groups of every VM's processes: the VMs' group (for /dev/userfaultfd) and the
 * group that may open /dev/kvm, where the host has KVM.
 */
export function vmGroups(): number[] {
  const groups = [VMS_GID];
  // Never root's group: a host whose /dev/kvm is root's and open to all needs no group for it.
  const kvmGid = existsSync(KVM_DEVICE) ? statSync(KVM_DEVICE).gid : 0;
  if (kvmGid !== 0) groups.push(kvmGid);
  return groups;
}

/**
 * Lets the VMs' group, and only it beside root, open /dev/userfaultfd, so that QEMU running as a
 * VM's user can take a post-copy migration (devices are recreated at boot, so every agent start
 * does it). A kernel without the device leaves post-copy to the userfaultfd system call.
 */
export async function openUserfaultfdToVms(): Promise<void> {
  if (!existsSync(USERFAULTFD_DEVICE)) return;
  await chown(USERFAULTFD_DEVICE, 0, VMS_GID);
  await chmod(USERFAULTFD_DEVICE, 0o660);
}

/** A tap the launcher opens for QEMU, on descriptor `fd`. */
export interface LaunchedTap {
  fd: number;
  name: string;
}

/**
 * How `user`'s processes are started: the launcher with its arguments up to the program, which
 * follows them (with `taps` opened on their descriptors for QEMU, and `moreGroups` beside the
 * VMs' own: the groups of the templates its disks are linked clones of, vm-files.ts).
 */
export async function launcherFor(
  user: VmUser,
  taps: LaunchedTap[] = [],
  moreGroups: number[] = [],
): Promise<{ user: VmUser; command: string; args: string[] }> {
  const groups = [...vmGroups(), ...moreGroups];
  const args = ['--uid', String(user.uid), '--gid', String(user.gid), ...groups.flatMap((gid) => ['--group', String(gid)])];
  for (const tap of taps) args.push('--tap', `${tap.fd}:${tap.name}`);
  return { user, command: await launcherPath(), args: [...args, '--'] };
}
