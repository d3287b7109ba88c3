// The guest kernel of the built-in images: Debian's own linux-image package, downloaded and
// unpacked into Nubis's cache, never installed. Installing it would write to /boot and rebuild
// the host's initramfs (HOST-FACTS "Hypervisor"), which no one running a server wants.
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { mkdir, readdir, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { NubisError, messageOf } from '../core/errors.ts';
import { runTool, ToolFailure } from './run-tool.ts';

/** A kernel unpacked in the cache, ready for QEMU's `-kernel` and an initramfs's modules. */
export interface GuestKernel {
  /** The bzImage to pass to `-kernel`. */
  kernelPath: string;
  /** `lib/modules/<version>` of the unpacked package: where the `.ko` files are. */
  modulesDir: string;
  /** The kernel release (`uname -r` in the guest), e.g. `6.1.0-56-amd64`. */
  version: string;
  /** The Debian package it came from and that package's version, e.g. `6.1.192-2`. */
  packageName: string;
  packageVersion: string;
}

/** Receives one human-readable line per slow step (download, unpack). */
export type ProgressListener = (message: string) => void;

/** Options of {@link ensureGuestKernel}. */
export interface EnsureGuestKernelOptions {
  /** Ask apt again which kernel `linux-image-amd64` depends on, even when one is cached, and
   * fetch it when it changed. Default false: a cached kernel is returned without running apt,
   * which takes a second or more. */
  refresh?: boolean;
}

const META_PACKAGE = 'linux-image-amd64';
const APT_LISTS_DIR = '/var/lib/apt/lists';
const CURRENT_RECORD = 'current.json';

/**
 * Returns the guest kernel, fetching it on first use: finds the `linux-image-<release>-amd64`
 * package that Debian's meta-package `linux-image-amd64` currently depends on, runs
 * `apt-get download` for it and unpacks it with `dpkg -x` under `<cacheDir>/kernels/`. Later
 * calls return the cached kernel at once. When a refresh cannot reach apt but an older kernel is
 * cached, that one is returned. Fails with IMAGE_KERNEL_UNAVAILABLE saying what to fix.
 */
export async function ensureGuestKernel(
  cacheDir: string,
  onProgress: ProgressListener = () => {},
  options: EnsureGuestKernelOptions = {},
): Promise<GuestKernel> {
  const kernelsDir = join(cacheDir, 'kernels');
  const cached = readCurrentKernel(kernelsDir);
  if (cached && !options.refresh) return cached;

  let packageName: string;
  let packageVersion: string;
  try {
    ({ packageName, packageVersion } = await resolveKernelPackage(onProgress));
  } catch (error) {
    if (cached) {
      onProgress(`Keeping cached kernel ${cached.version}: ${messageOf(error)}`);
      return cached;
    }
    throw error;
  }

  const unpackedDir = join(kernelsDir, `${packageName}_${packageVersion}`);
  let kernel = describeUnpacked(unpackedDir, packageName, packageVersion);
  if (!kernel) {
    try {
      await downloadAndUnpack(kernelsDir, unpackedDir, packageName, packageVersion, onProgress);
    } catch (error) {
      if (cached) {
        onProgress(`Keeping cached kernel ${cached.version}: ${messageOf(error)}`);
        return cached;
      }
      throw error;
    }
    kernel = describeUnpacked(unpackedDir, packageName, packageVersion);
    if (!kernel) {
      throw new NubisError(
        'IMAGE_KERNEL_UNAVAILABLE',
        `Package ${packageName} ${packageVersion} unpacked into ${unpackedDir} holds no boot/vmlinuz-* and lib/modules/*; delete that folder and try again`,
      );
    }
  }
  await writeFile(join(kernelsDir, CURRENT_RECORD), `${JSON.stringify({ packageName, packageVersion }, null, 2)}\n`);
  await removeOtherKernels(kernelsDir, unpackedDir, onProgress);
  return kernel;
}

/** The kernel named by `current.json`, when it is still unpacked. */
function readCurrentKernel(kernelsDir: string): GuestKernel | undefined {
  try {
    const record = JSON.parse(readFileSync(join(kernelsDir, CURRENT_RECORD), 'utf8')) as { packageName: string; packageVersion: string };
    return describeUnpacked(join(kernelsDir, `${record.packageName}_${record.packageVersion}`), record.packageName, record.packageVersion);
  } catch {
    return undefined;
  }
}

function describeUnpacked(dir: string, packageName: string, packageVersion: string): GuestKernel | undefined {
  const modulesRoot = join(dir, 'lib', 'modules');
  if (!existsSync(modulesRoot)) return undefined;
  const [version] = readdirSync(modulesRoot);
  if (!version) return undefined;
  const kernelPath = join(dir, 'boot', `vmlinuz-${version}`);
  if (!existsSync(kernelPath)) return undefined;
  return { kernelPath, modulesDir: join(modulesRoot, version), version, packageName, packageVersion };
}

/** Asks apt which kernel package the meta-package depends on now, and that package's version. */
async function resolveKernelPackage(onProgress: ProgressListener): Promise<{ packageName: string; packageVersion: string }> {
  if (!hasAptLists()) {
    onProgress('Apt package lists are empty: running apt-get update');
    await aptStep(['apt-get', 'update'], 'apt-get update failed; run it by hand (as root) and check the mirrors in /etc/apt/sources.list');
  }
  const depends = await aptStep(
    ['apt-cache', 'depends', META_PACKAGE],
    `apt-cache does not know ${META_PACKAGE}; the tiny image needs a Debian host with the main archive in its apt sources, then apt-get update`,
  );
  // "  Depends: linux-image-6.1.0-56-amd64"; the meta-package has exactly one such line.
  const packageName = /^\s*Depends:\s*(linux-image-[0-9][\w.+-]*-amd64)\s*$/m.exec(depends)?.[1];
  if (!packageName) {
    throw new NubisError(
      'IMAGE_KERNEL_UNAVAILABLE',
      `${META_PACKAGE} depends on no linux-image-<release>-amd64 package (apt-cache said: ${depends.trim().split('\n').slice(0, 4).join('; ')}); run apt-get update`,
    );
  }
  const show = await aptStep(['apt-cache', 'show', '--no-all-versions', packageName], `apt-cache has no candidate for ${packageName}; run apt-get update`);
  const packageVersion = /^Version:\s*(\S+)\s*$/m.exec(show)?.[1];
  if (!packageVersion) {
    throw new NubisError('IMAGE_KERNEL_UNAVAILABLE', `apt-cache show ${packageName} printed no Version; run apt-get update`);
  }
  return { packageName, packageVersion };
}

function hasAptLists(): boolean {
  try {
    return readdirSync(APT_LISTS_DIR).some((name) => name.includes('_Packages'));
  } catch {
    return false;
  }
}

async function downloadAndUnpack(
  kernelsDir: string,
  unpackedDir: string,
  packageName: string,
  packageVersion: string,
  onProgress: ProgressListener,
): Promise<void> {
  // Work in a private folder and rename at the end: an interrupted download or unpack never
  // looks like a cached kernel, and two processes fetching at once do not mix their files.
  const workDir = join(kernelsDir, `.partial-${process.pid}-${Date.now()}`);
  await mkdir(workDir, { recursive: true });
  try {
    onProgress(`Downloading ${packageName} ${packageVersion} with apt-get download`);
    await aptStep(
      // Root's apt otherwise warns that its sandbox user cannot write the working folder.
      ['apt-get', 'download', ...(process.getuid?.() === 0 ? ['-o', 'APT::Sandbox::User=root'] : []), `${packageName}=${packageVersion}`],
      `apt-get download ${packageName} failed; check access to the Debian mirror, or run apt-get update if the version is gone from it`,
      workDir,
    );
    const deb = (await readdir(workDir)).find((name) => name.endsWith('.deb'));
    if (!deb) throw new NubisError('IMAGE_KERNEL_UNAVAILABLE', `apt-get download ${packageName} left no .deb file in ${workDir}`);
    onProgress(`Unpacking ${deb}`);
    await aptStep(['dpkg', '-x', join(workDir, deb), join(workDir, 'root')], `dpkg -x ${deb} failed; check free space in ${kernelsDir}`);
    try {
      await rename(join(workDir, 'root'), unpackedDir);
    } catch (error) {
      // Another process finished the same kernel first: theirs is as good as ours.
      if (!describeUnpacked(unpackedDir, packageName, packageVersion)) throw error;
    }
  } finally {
    await rm(workDir, { recursive: true, force: true });
  }
}

/** Earlier kernels take 400 MB each; images copy the vmlinuz they boot, so none points here. */
async function removeOtherKernels(kernelsDir: string, keepDir: string, onProgress: ProgressListener): Promise<void> {
  for (const name of await readdir(kernelsDir)) {
    const path = join(kernelsDir, name);
    if (path === keepDir || name === CURRENT_RECORD || name.startsWith('.partial-')) continue;
    if (name.startsWith('linux-image-')) {
      onProgress(`Removing superseded kernel ${name}`);
      await rm(path, { recursive: true, force: true });
    }
  }
}

async function aptStep(commandLine: string[], advice: string, cwd?: string): Promise<string> {
  const [command, ...args] = commandLine;
  try {
    return (await runTool(command, args, { cwd })).stdout;
  } catch (error) {
    if (error instanceof ToolFailure && error.notInstalled) {
      throw new NubisError(
        'IMAGE_KERNEL_UNAVAILABLE',
        `${command} is not installed: the tiny image takes its kernel from Debian's ${META_PACKAGE} package and needs a Debian host with apt and dpkg`,
        { cause: error },
      );
    }
    throw new NubisError('IMAGE_KERNEL_UNAVAILABLE', `${messageOf(error)}; ${advice}`, { cause: error, details: { command: commandLine.join(' ') } });
  }
}
