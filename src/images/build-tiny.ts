// Builds the built-in "tiny" guest image: Debian's kernel plus a gzip'd newc initramfs with
// busybox-static, nubis-tool and the few kernel modules a virtio guest needs. The guest's
// behaviour is a contract the rest of Nubis relies on: src/images/README-guest.md.
import { createHash } from 'node:crypto';
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { copyFile, mkdir, mkdtemp, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { NubisError, messageOf } from '../core/errors.ts';
import { encodeCpioGzip, type CpioEntry } from './cpio.ts';
import { ensureGuestKernel, type ProgressListener } from './guest-kernel.ts';
import { resolveKernelModules } from './kernel-modules.ts';
import { runTool, ToolFailure } from './run-tool.ts';

/** A built tiny image: what QEMU's `-kernel` and `-initrd` take. */
export interface TinyImage {
  name: 'tiny';
  kernelPath: string;
  initrdPath: string;
  /** Kernel release, e.g. `6.1.0-56-amd64`. */
  kernelVersion: string;
  /** sha256 (hex) of the initrd file. */
  sha256: string;
  /** ISO 8601 time of the build. */
  builtAt: string;
}

/** Options of {@link buildTinyImage}. */
export interface BuildTinyImageOptions {
  /** Nubis's cache folder; the image goes to `<cacheDir>/images/tiny/`, the kernel package to
   * `<cacheDir>/kernels/`. */
  cacheDir: string;
  /** Rebuild even when the cached image was built from the same inputs. Default false. */
  force?: boolean;
  /** Receives one line per slow step. Default: none. */
  onProgress?: ProgressListener;
}

/** What manifest.json holds beyond the TinyImage: enough to tell whether a rebuild is due. */
interface TinyManifest extends TinyImage {
  inputsHash: string;
  kernelPackage: string;
  busyboxVersion: string;
  modules: string[];
  initrdBytes: number;
}

// Bump when the image layout changes in a way the hashed inputs below do not show.
const LAYOUT_VERSION = 1;
const SOURCE_DIR = fileURLToPath(new URL('./tiny/', import.meta.url));
const BUSYBOX_PATH = '/bin/busybox';
// virtio_pci is the transport nothing depends on; the rest pull in their dependencies
// (virtio_ring, virtio, failover, ...). evdev and button carry the ACPI power button to acpid.
// virtio_balloon gives memory back to the host (vm set --memory, free page reporting) and
// reports the guest's memory statistics; last, so a failed load costs nothing else.
const WANTED_MODULES = ['virtio_pci', 'virtio_net', 'virtio_blk', 'evdev', 'button', 'virtio_balloon'];

/**
 * Builds the tiny image under `<cacheDir>/images/tiny/` (vmlinuz, initrd.img, manifest.json),
 * fetching the kernel on first use, and returns it. An image already built from the same inputs
 * (kernel package, busybox binary and version, everything in src/images/tiny/, the gcc version)
 * is returned as it is unless `force` is set. Fails with IMAGE_KERNEL_UNAVAILABLE or
 * IMAGE_BUILD_FAILED, naming what to install or fix.
 */
export async function buildTinyImage(options: BuildTinyImageOptions): Promise<TinyImage> {
  const onProgress = options.onProgress ?? (() => {});
  const imageDir = join(options.cacheDir, 'images', 'tiny');
  const kernel = await ensureGuestKernel(options.cacheDir, onProgress);
  const busybox = await inspectBusybox();
  const sources = readSources();
  const gccVersion = (await tool('gcc', ['-dumpfullversion'], 'install gcc and libc6-dev')).trim();
  const inputsHash = sha256Hex(
    JSON.stringify({
      layout: LAYOUT_VERSION,
      kernel: `${kernel.packageName}=${kernel.packageVersion}`,
      busybox: [busybox.version, sha256Hex(busybox.binary)],
      sources: [...sources].map(([name, data]) => [name, sha256Hex(data)]),
      modules: WANTED_MODULES,
      gcc: gccVersion,
    }),
  );

  const cached = readManifest(imageDir);
  if (cached && cached.inputsHash === inputsHash && !options.force) return toTinyImage(cached);

  onProgress(`Building the tiny image with kernel ${kernel.version} and ${busybox.version}`);
  const workDir = await mkdtemp(join(tmpdir(), 'nubis-tiny-'));
  try {
    onProgress('Compiling nubis-tool (gcc -static)');
    const toolPath = join(workDir, 'nubis-tool');
    await tool('gcc', ['-static', '-O2', '-s', '-Wall', '-o', toolPath, join(SOURCE_DIR, 'nubis-tool.c')], 'install gcc and libc6-dev (static libc)');
    const modules = resolveKernelModules(kernel.modulesDir, WANTED_MODULES);
    const entries = initramfsEntries({
      sources,
      busybox: busybox.binary,
      applets: busybox.applets,
      nubisTool: await readFile(toolPath),
      modules,
    });
    onProgress('Writing the initramfs');
    const initrd = await encodeCpioGzip(entries);

    await mkdir(imageDir, { recursive: true });
    const { kernelPath, initrdPath } = imageFilesIn(imageDir);
    // Each file is replaced by a rename, so a VM starting meanwhile reads an old or a new file,
    // never half of one; the manifest goes last, so it never names a file that is not there.
    await writeFile(`${initrdPath}.${process.pid}.tmp`, initrd);
    await rename(`${initrdPath}.${process.pid}.tmp`, initrdPath);
    await copyFile(kernel.kernelPath, `${kernelPath}.${process.pid}.tmp`);
    await rename(`${kernelPath}.${process.pid}.tmp`, kernelPath);
    const manifest: TinyManifest = {
      name: 'tiny',
      kernelPath,
      initrdPath,
      kernelVersion: kernel.version,
      sha256: sha256Hex(initrd),
      builtAt: new Date().toISOString(),
      inputsHash,
      kernelPackage: `${kernel.packageName}=${kernel.packageVersion}`,
      busyboxVersion: busybox.version,
      modules: modules.map((module) => module.name),
      initrdBytes: initrd.length,
    };
    const manifestPath = join(imageDir, 'manifest.json');
    await writeFile(`${manifestPath}.${process.pid}.tmp`, `${JSON.stringify(manifest, null, 2)}\n`);
    await rename(`${manifestPath}.${process.pid}.tmp`, manifestPath);
    onProgress(`Built the tiny image: initrd ${(initrd.length / 1024 / 1024).toFixed(1)} MiB, sha256 ${manifest.sha256.slice(0, 12)}`);
    return toTinyImage(manifest);
  } finally {
    await rm(workDir, { recursive: true, force: true });
  }
}

/**
 * The tiny image last built under `cacheDir`, or undefined when there is none or its files are
 * gone. Reads the manifest only: it neither checks the inputs nor builds.
 */
export function readTinyImage(cacheDir: string): TinyImage | undefined {
  const manifest = readManifest(join(cacheDir, 'images', 'tiny'));
  return manifest && toTinyImage(manifest);
}

/** Where an image folder keeps the guest's kernel and initrd. */
function imageFilesIn(imageDir: string): { kernelPath: string; initrdPath: string } {
  return { kernelPath: join(imageDir, 'vmlinuz'), initrdPath: join(imageDir, 'initrd.img') };
}

function readManifest(imageDir: string): TinyManifest | undefined {
  try {
    const recorded = JSON.parse(readFileSync(join(imageDir, 'manifest.json'), 'utf8')) as TinyManifest;
    if (recorded.name !== 'tiny' || typeof recorded.sha256 !== 'string') return undefined;
    // The files are the folder's own, wherever it was when they were built (a cache that is moved
    // or shared through a link keeps working).
    const manifest = { ...recorded, ...imageFilesIn(imageDir) };
    if (!existsSync(manifest.kernelPath) || !existsSync(manifest.initrdPath)) return undefined;
    return manifest;
  } catch {
    return undefined;
  }
}

function toTinyImage(manifest: TinyManifest): TinyImage {
  const { name, kernelPath, initrdPath, kernelVersion, sha256, builtAt } = manifest;
  return { name, kernelPath, initrdPath, kernelVersion, sha256, builtAt };
}

interface InitramfsParts {
  sources: Map<string, Buffer>;
  busybox: Buffer;
  applets: string[];
  nubisTool: Buffer;
  modules: { name: string; data: Buffer }[];
}

/** The initramfs tree. The guest contract is in tiny/init.sh and README-guest.md. */
function initramfsEntries(parts: InitramfsParts): CpioEntry[] {
  const source = (name: string): Buffer => parts.sources.get(name)!;
  const cgi = (command: string): string => `#!/bin/sh\nexec /bin/nubis-tool ${command}\n`;
  const entries: CpioEntry[] = [];
  for (const dir of ['bin', 'sbin', 'usr/bin', 'usr/sbin', 'etc', 'lib/modules', 'proc', 'sys', 'dev', 'run', 'var/log']) {
    entries.push({ type: 'directory', path: dir });
  }
  entries.push(
    { type: 'directory', path: 'tmp', mode: 0o1777 },
    { type: 'directory', path: 'root', mode: 0o700 },
    { type: 'symlink', path: 'var/run', target: '../run' },
    // The kernel opens /dev/console for /init before anything can mount devtmpfs.
    { type: 'char-device', path: 'dev/console', major: 5, minor: 1, mode: 0o600 },
    { type: 'char-device', path: 'dev/null', major: 1, minor: 3, mode: 0o666 },
    { type: 'file', path: 'init', data: source('init.sh'), mode: 0o755 },
    { type: 'file', path: 'bin/busybox', data: parts.busybox, mode: 0o755 },
    { type: 'file', path: 'bin/nubis-tool', data: parts.nubisTool, mode: 0o755 },
    { type: 'file', path: 'etc/inittab', data: source('inittab') },
    { type: 'file', path: 'etc/profile', data: source('profile') },
    { type: 'file', path: 'etc/passwd', data: 'root::0:0:root:/root:/bin/sh\n' },
    { type: 'file', path: 'etc/group', data: 'root:x:0:\n' },
    { type: 'file', path: 'etc/resolv.conf', data: '' },
    { type: 'file', path: 'etc/nubis/udhcpc.sh', data: source('udhcpc.sh'), mode: 0o755 },
    { type: 'file', path: 'etc/nubis/shutdown.sh', data: source('shutdown.sh'), mode: 0o755 },
    // mdev brings hot-added vCPUs online (README-guest.md "vCPUs added while it runs").
    { type: 'file', path: 'etc/mdev.conf', data: source('mdev.conf') },
    { type: 'file', path: 'etc/nubis/cpu-online.sh', data: source('cpu-online.sh'), mode: 0o755 },
    { type: 'file', path: 'etc/nubis/modules', data: parts.modules.map((module) => `${module.name}\n`).join('') },
    // busybox acpid runs /etc/acpi/<action> for a mapped event; the power button is PWRF/00000080.
    { type: 'file', path: 'etc/acpi/PWRF/00000080', data: source('power-button.sh'), mode: 0o755 },
    { type: 'file', path: 'www/cgi-bin/index.cgi', data: cgi('cgi-index'), mode: 0o755 },
    { type: 'file', path: 'www/cgi-bin/dirty', data: cgi('cgi-dirty'), mode: 0o755 },
    { type: 'file', path: 'www/cgi-bin/disk', data: cgi('cgi-disk'), mode: 0o755 },
  );
  for (const module of parts.modules) {
    entries.push({ type: 'file', path: `lib/modules/${module.name}.ko`, data: module.data });
  }
  const taken = new Set(entries.map((entry) => entry.path));
  for (const applet of parts.applets) {
    // "usr/bin/[" and the like; a top-level name such as "linuxrc" would shadow nothing useful.
    if (!applet.includes('/') || taken.has(applet)) continue;
    entries.push({ type: 'symlink', path: applet, target: '/bin/busybox' });
  }
  return entries;
}

function readSources(): Map<string, Buffer> {
  const sources = new Map<string, Buffer>();
  for (const name of readdirSync(SOURCE_DIR).sort()) sources.set(name, readFileSync(join(SOURCE_DIR, name)));
  for (const required of ['init.sh', 'inittab', 'profile', 'udhcpc.sh', 'shutdown.sh', 'power-button.sh', 'mdev.conf', 'cpu-online.sh', 'nubis-tool.c']) {
    if (!sources.has(required)) throw new NubisError('IMAGE_BUILD_FAILED', `Guest source ${join(SOURCE_DIR, required)} is missing`);
  }
  return sources;
}

async function inspectBusybox(): Promise<{ binary: Buffer; version: string; applets: string[] }> {
  let binary: Buffer;
  try {
    binary = await readFile(BUSYBOX_PATH);
  } catch (error) {
    throw new NubisError('IMAGE_BUILD_FAILED', `Cannot read ${BUSYBOX_PATH}; install the busybox-static package`, { cause: error });
  }
  // Debian's plain "busybox" package installs a dynamically linked binary at the same path; it
  // would find no C library in the initramfs.
  if (hasInterpreter(binary)) {
    throw new NubisError('IMAGE_BUILD_FAILED', `${BUSYBOX_PATH} is dynamically linked; install busybox-static instead of busybox`);
  }
  const help = await tool(BUSYBOX_PATH, ['--help'], 'install busybox-static');
  const version = /^BusyBox v\S+/.exec(help)?.[0] ?? help.split('\n')[0];
  const applets = (await tool(BUSYBOX_PATH, ['--list-full'], 'install busybox-static')).split('\n').filter((line) => line !== '');
  return { binary, version, applets };
}

/** True when an ELF64 file has a PT_INTERP program header, i.e. needs a dynamic loader. */
function hasInterpreter(elf: Buffer): boolean {
  if (elf.length < 64 || elf.readUInt32BE(0) !== 0x7f454c46 || elf[4] !== 2) return false;
  const phoff = Number(elf.readBigUInt64LE(0x20));
  const phentsize = elf.readUInt16LE(0x36);
  const phnum = elf.readUInt16LE(0x38);
  for (let index = 0; index < phnum; index++) {
    const at = phoff + index * phentsize;
    if (at + 4 <= elf.length && elf.readUInt32LE(at) === 3) return true;
  }
  return false;
}

async function tool(command: string, args: string[], advice: string): Promise<string> {
  try {
    return (await runTool(command, args, { timeoutMs: 120_000 })).stdout;
  } catch (error) {
    const what = error instanceof ToolFailure && error.notInstalled ? `${command} is not installed` : messageOf(error);
    throw new NubisError('IMAGE_BUILD_FAILED', `${what}; ${advice}`, { cause: error });
  }
}

function sha256Hex(data: string | Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}
