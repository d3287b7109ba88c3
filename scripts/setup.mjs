#!/usr/bin/env node
// First-run setup shared by `npm start` and `npm test`: npm packages, the Debian packages the
// platform drives, the web console's build, and the built-in `tiny` guest image. Plain Node with no dependencies, because
// it runs before node_modules exists. Every step checks first, so a second run takes a moment.
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const repoRoot = join(dirname(fileURLToPath(import.meta.url)), '..');

/** Debian packages Nubis runs at some point, with what each is for (shown when one is missing). */
export const debianPackages = {
  'qemu-system-x86': 'runs the virtual machines',
  'qemu-utils': 'qemu-img checks and converts imported disk images',
  swtpm: 'the software TPM 2.0 behind vm create --tpm (one swtpm process per VM)',
  'swtpm-tools': "swtpm_setup and swtpm_ioctl, to inspect or prepare a VM's TPM state by hand",
  ovmf: 'the UEFI firmware (OVMF) behind vm create --firmware uefi',
  'busybox-static': 'the userland of the built-in tiny guest image',
  iproute2: 'network namespaces, bridges, veth and VXLAN links',
  nftables: 'security groups and anti-spoofing filters',
  iptables: 'stateful per-port filters (physdev match)',
  'dnsmasq-base': 'DHCP on virtual networks',
  'libnbd-bin': 'nbdinfo and nbdcopy, used to test the NBD server',
  nbdkit: 'a reference NBD server for storage tests',
  fio: 'storage benchmarks',
  dosfstools: 'tests: a bootable disk image of the tiny guest, FAT images for the backup file lister (mkfs.fat)',
  mtools: 'tests: copying the kernel onto that image, filling and cross-checking FAT images of the backup file lister (mcopy, mdir)',
  e2fsprogs: 'debugfs lists the files of ext2/3/4 filesystems in backups without mounting them; mke2fs -d builds test images',
  fdisk: 'sfdisk --json reads the partition table of a disk image for the backup file lister',
  syslinux: 'tests: the boot loader of that image',
  'iputils-ping': 'ping in network probes and tests',
  curl: 'HTTP checks in network probes and tests',
  gcc: 'compiles the guest workload tool and native npm modules',
  'libc6-dev': 'static C library for the guest workload tool',
  make: 'builds native npm modules',
  python3: 'node-gyp builds native npm modules',
  chromium: 'tests: the browser that drives the web console headless (playwright-core)',
};

function log(message) {
  process.stderr.write(`[setup] ${message}\n`);
}

function isDebian() {
  try {
    return /^ID=debian$/m.test(readFileSync('/etc/os-release', 'utf8'));
  } catch {
    return false;
  }
}

function missingDebianPackages() {
  return Object.keys(debianPackages).filter((name) => {
    // biome-ignore lint/suspicious/noTemplateCurlyInString: dpkg-query's own format, not a template
    const probe = spawnSync('dpkg-query', ['-W', '-f=${Status}', name], { encoding: 'utf8' });
    return probe.status !== 0 || !probe.stdout.includes('install ok installed');
  });
}

/**
 * QEMU older than package.json's `nubis.minimumQemuMajor` is refused (the agent checks too): Debian
 * 12's own 7.2 lost guest memory under TCG and hung in post-copy recovery. Debian 12 gets a
 * recent QEMU from Debian's own bookworm-backports.
 */
export const MINIMUM_QEMU_MAJOR = JSON.parse(readFileSync(join(repoRoot, 'package.json'), 'utf8')).nubis.minimumQemuMajor;
const QEMU_PACKAGES = ['qemu-system-x86', 'qemu-utils'];
const BACKPORTS_SOURCE = '/etc/apt/sources.list.d/nubis-bookworm-backports.sources';

function debianCodename() {
  try {
    return /^VERSION_CODENAME=(\S+)$/m.exec(readFileSync('/etc/os-release', 'utf8'))?.[1];
  } catch {
    return undefined;
  }
}

/** The upstream major version of an installed Debian package ("1:10.0.2+ds-2~bpo12+1" is 10), or undefined. */
function installedMajor(name) {
  // biome-ignore lint/suspicious/noTemplateCurlyInString: dpkg-query's own format, not a template
  const probe = spawnSync('dpkg-query', ['-W', '-f=${Status} ${Version}', name], { encoding: 'utf8' });
  if (probe.status !== 0 || !probe.stdout.includes('install ok installed')) return undefined;
  const match = /(?:\d+:)?(\d+)\./.exec(probe.stdout.split(' ').at(-1));
  return match ? Number(match[1]) : undefined;
}

function qemuCurrent() {
  return QEMU_PACKAGES.every((name) => (installedMajor(name) ?? 0) >= MINIMUM_QEMU_MAJOR);
}

/**
 * Installs QEMU from bookworm-backports on Debian 12; newer Debian ships a recent enough QEMU
 * itself. Returns whether it refreshed apt's package lists.
 */
function ensureQemu(env) {
  if (qemuCurrent()) return false;
  const codename = debianCodename();
  const fromBackports = codename === 'bookworm';
  if (fromBackports && !existsSync(BACKPORTS_SOURCE)) {
    log(`Adding Debian's bookworm-backports (${BACKPORTS_SOURCE}): Nubis needs QEMU ${MINIMUM_QEMU_MAJOR} or newer`);
    writeFileSync(
      BACKPORTS_SOURCE,
      'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n',
    );
  }
  log(`Installing QEMU ${MINIMUM_QEMU_MAJOR} or newer${fromBackports ? ' from bookworm-backports' : ''}`);
  execFileSync('apt-get', ['update', '-qq'], { stdio: 'inherit', env });
  execFileSync('apt-get', ['install', '-y', '-qq', '--no-install-recommends', ...(fromBackports ? ['-t', 'bookworm-backports'] : []), ...QEMU_PACKAGES], {
    stdio: 'inherit',
    env,
  });
  if (!qemuCurrent()) {
    log(`QEMU ${MINIMUM_QEMU_MAJOR} or newer could not be installed on Debian ${codename ?? '(unknown release)'}; install it by hand and run again`);
    process.exit(1);
  }
  return true;
}

function ensureDebianPackages() {
  if (!isDebian()) {
    log('This is not Debian: install the equivalents of these packages yourself, then run again:');
    for (const [name, why] of Object.entries(debianPackages)) log(`  ${name}: ${why}`);
    return;
  }
  const missing = missingDebianPackages();
  if (missing.length === 0 && qemuCurrent()) return;
  if (process.getuid?.() !== 0) {
    if (!qemuCurrent()) log(`Not root, so QEMU ${MINIMUM_QEMU_MAJOR} or newer cannot be installed for you (on Debian 12 it comes from bookworm-backports)`);
    if (missing.length === 0) return;
    log(`Not root, so these Debian packages cannot be installed for you. Run as root:`);
    log(`  apt-get update && apt-get install -y --no-install-recommends ${missing.join(' ')}`);
    for (const name of missing) log(`  ${name}: ${debianPackages[name]}`);
    return;
  }
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  // QEMU first, so the plain install below does not bring Debian 12's older one.
  const listsFresh = ensureQemu(env);
  const stillMissing = missingDebianPackages();
  if (stillMissing.length === 0) return;
  log(`Installing Debian packages: ${stillMissing.join(' ')}`);
  if (!listsFresh) execFileSync('apt-get', ['update', '-qq'], { stdio: 'inherit', env });
  execFileSync('apt-get', ['install', '-y', '-qq', '--no-install-recommends', ...stillMissing], { stdio: 'inherit', env });
}

function npmPackagesCurrent() {
  const installedLock = join(repoRoot, 'node_modules', '.package-lock.json');
  const lock = join(repoRoot, 'package-lock.json');
  if (!existsSync(installedLock)) return false;
  return statSync(installedLock).mtimeMs >= statSync(lock).mtimeMs;
}

function ensureNpmPackages() {
  if (npmPackagesCurrent()) return;
  log('Installing npm packages (npm ci)');
  execFileSync('npm', ['ci', '--no-audit', '--no-fund'], { cwd: repoRoot, stdio: 'inherit' });
}

/** What the web console's build is made from: a change to any of them makes web/dist stale. */
const WEB_SOURCES = ['web/src', 'web/index.html', 'web/vite.config.ts', 'web/tsconfig.json', 'docs/openapi.json', 'package-lock.json'];

function newestChangeMs(path) {
  const stat = statSync(path);
  if (!stat.isDirectory()) return stat.mtimeMs;
  // The generated API types are written by the build itself.
  const entries = readdirSync(path).filter((name) => name !== 'schema.d.ts');
  return Math.max(stat.mtimeMs, ...entries.map((name) => newestChangeMs(join(path, name))));
}

function ensureWebConsole() {
  const built = join(repoRoot, 'web', 'dist', 'index.html');
  if (existsSync(built) && statSync(built).mtimeMs >= Math.max(...WEB_SOURCES.map((path) => newestChangeMs(join(repoRoot, path))))) return;
  log('Building the web console (npm run build:web)');
  const result = spawnSync('npm', ['run', '--silent', 'build:web'], { cwd: repoRoot, stdio: 'inherit' });
  if (result.status !== 0) {
    log('Building the web console failed (see above)');
    process.exit(1);
  }
}

function ensureTinyImage() {
  // The image builder is TypeScript; it is a no-op when the cached image is current, and rebuilds
  // an image whose sources (src/images/tiny/, the kernel, busybox) changed since it was built.
  const result = spawnSync(process.execPath, ['--import', 'tsx', join(repoRoot, 'src/cli/main.ts'), 'image', 'build', 'tiny'], {
    cwd: repoRoot,
    stdio: 'inherit',
  });
  if (result.status !== 0) {
    log('Building the tiny guest image failed (see above); VMs cannot boot until it succeeds');
    process.exit(1);
  }
}

const major = Number(process.versions.node.split('.')[0]);
if (major < 20) {
  log(`Nubis needs Node.js 20 or newer; this is ${process.versions.node}. Install Node.js 20 and run again`);
  process.exit(1);
}
ensureDebianPackages();
ensureNpmPackages();
ensureWebConsole();
ensureTinyImage();
