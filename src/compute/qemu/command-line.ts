/**
 * Builds the qemu-system-x86_64 argument list for a VM. Pure: no I/O, so it is unit-tested and
 * the same spec always gives the same device model (which live migration depends on).
 */
import { NubisError } from '../../core/errors.ts';
import { type LaunchPlatform, platformArgs } from './platform-args.ts';
import { smpOption } from './vcpus.ts';
import { NUBIS_CPU_MODEL, NUBIS_MACHINE_TYPE, type Accelerator, type DiskSpec, type VmSpec } from '../vm-spec.ts';

/** Where a VM's control files live (all in the VM's folder on its host). */
export interface VmRuntimePaths {
  qmpSocket: string;
  consoleSocket: string;
  vncSocket: string;
  serialLog: string;
  pidFile: string;
  /**
   * The folder of the VM's storage client credentials (`ca-cert.pem`, `client-cert.pem`,
   * `client-key.pem`), needed when a disk reaches the storage node over TCP. QEMU reads them once,
   * when it creates the credentials object at its start (crypto/tlscredsx509.c: `complete` loads
   * the files into gnutls credentials); the launcher removes them after that.
   */
  storageTlsDir?: string;
}

/** The id of the TLS credentials object that NBD disks over TCP use. */
export const STORAGE_TLS_OBJECT = 'storage-tls';

/** Root ports for devices attached while the VM runs; the same on every host, for migration. */
export const HOTPLUG_PORTS = ['hp0', 'hp1', 'hp2', 'hp3'];

/** Extra command-line options for special starts, e.g. an incoming migration. */
export interface QemuLaunchOptions {
  accelerator: Accelerator;
  /** `-incoming` for the destination of a migration (`defer`: wait for `migrate-incoming`). */
  incoming?: string;
  /** The VM's TPM socket, firmware files and paused start (platform-args.ts). */
  platform?: LaunchPlatform;
}

/** QEMU's option syntax escapes a comma in a value by doubling it. */
function escapeOptionValue(value: string): string {
  return value.replaceAll(',', ',,');
}

/**
 * The formats of values placed into option strings as they are. The API validates each where it
 * receives it; this second check, where the command line is built, keeps a value that slipped
 * through (`127.0.0.1,tftp=/etc` as an address) from adding options to a QEMU that runs as root.
 */
const OPTION_VALUE_FORMATS = {
  address: /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$/,
  id: /^[a-z][a-z0-9-]{0,31}$/,
  mac: /^([0-9a-f]{2}:){5}[0-9a-f]{2}$/,
  tap: /^[A-Za-z0-9_.-]{1,15}$/,
  protocol: /^(tcp|udp)$/,
  port: /^([1-9]\d{0,3}|[1-5]\d{4}|6[0-4]\d{3}|65[0-4]\d{2}|655[0-2]\d|6553[0-5])$/,
  // Paths are escaped, not matched; but no control character (NUL, newline) belongs in one.
  path: /^[^\u0000-\u001f\u007f]+$/u,
} as const;

/** `value` when it has the named format; otherwise a `QEMU_INVALID_OPTION` error naming it. */
export function optionValue(value: string | number, format: keyof typeof OPTION_VALUE_FORMATS, what: string): string {
  const text = String(value);
  if (!OPTION_VALUE_FORMATS[format].test(text)) {
    throw new NubisError(
      'QEMU_INVALID_OPTION',
      `The ${what} ${JSON.stringify(text).slice(0, 80)} is not a valid ${format} for a QEMU option; nothing was started`,
    );
  }
  return text;
}

/** The balloon's device id; QOM names it /machine/peripheral/<id> (compute/qemu/balloon.ts). */
export const BALLOON_DEVICE_ID = 'balloon0';

/** The block node of a VM's boot disk (its copy-on-write overlay over an image). */
export const BOOT_DISK_NODE = 'boot';

/** The argument list (without the binary) for `spec` under `options`. */
export function buildQemuArgs(spec: VmSpec, paths: VmRuntimePaths, options: QemuLaunchOptions): string[] {
  const args: string[] = [
    '-name',
    `guest=${escapeOptionValue(optionValue(spec.name, 'path', 'VM name'))},debug-threads=on`,
    '-machine',
    `${NUBIS_MACHINE_TYPE},accel=${options.accelerator}`,
    '-cpu',
    NUBIS_CPU_MODEL,
    '-smp',
    smpOption(spec),
    '-m',
    `${spec.memoryMb}M`,
    '-nodefaults',
    '-no-user-config',
    '-display',
    'none',
    // seccomp filter: QEMU may not run obsolete syscalls, gain privileges, or spawn programs.
    '-sandbox',
    'on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny',
    '-qmp',
    `unix:${escapeOptionValue(paths.qmpSocket)},server=on,wait=off`,
    // The serial console is a socket a user can attach to, and QEMU also logs it to a file,
    // so the log is complete whether or not anyone is attached.
    '-chardev',
    `socket,id=serial0,path=${escapeOptionValue(paths.consoleSocket)},server=on,wait=off,logfile=${escapeOptionValue(paths.serialLog)},logappend=on`,
    '-serial',
    'chardev:serial0',
    // The screen is a VNC server on a unix socket that only the agent reaches, and even that
    // socket is useless alone: VNC authentication with a password the agent sets for one
    // connection (a console ticket's) and expires right after (host/vnc-relay.ts).
    '-vnc',
    `unix:${escapeOptionValue(paths.vncSocket)},password=on`,
    '-device',
    'VGA',
    // q35's root bus takes no hot-plugged devices: a few PCIe root ports give disks attached
    // to a running VM a slot (the guest kernel's pciehp sees them arrive and leave).
    ...HOTPLUG_PORTS.flatMap((port, index) => ['-device', `pcie-root-port,id=${port},chassis=${index + 1},slot=${index + 1}`]),
    // The balloon: `vm set --memory` within the maximum, the guest's memory statistics, and
    // free page reporting (the guest hands back pages it freed). No deflate-on-oom: with it the
    // guest keeps ballooned pages in its MemTotal, and a target it can take back is no limit.
    '-device',
    `virtio-balloon-pci,id=${BALLOON_DEVICE_ID},free-page-reporting=on`,
    '-pidfile',
    paths.pidFile,
  ];
  if (spec.boot.kind === 'kernel') {
    args.push(
      '-kernel',
      optionValue(spec.boot.kernelPath, 'path', 'kernel path'),
      '-initrd',
      optionValue(spec.boot.initrdPath, 'path', 'initrd path'),
      '-append',
      optionValue(spec.boot.cmdline, 'path', 'kernel command line'),
    );
  } else {
    args.push('-blockdev', blockdev(BOOT_DISK_NODE, spec.boot.path, spec.boot.format, false));
    args.push('-device', `virtio-blk-pci,drive=${BOOT_DISK_NODE},id=boot-disk,bootindex=0`);
  }
  if (spec.disks.some((disk) => disk.kind === 'nbd' && disk.tcp)) {
    if (!paths.storageTlsDir) throw new NubisError('QEMU_INVALID_OPTION', 'A disk reaches the storage node over TCP but the VM has no storage credentials');
    args.push('-object', storageTlsObject(paths.storageTlsDir));
  }
  for (const disk of spec.disks) {
    optionValue(disk.id, 'id', 'disk id');
    args.push('-blockdev', diskBlockdev(disk));
    args.push('-device', `virtio-blk-pci,drive=${disk.id},id=${disk.id}-disk`);
  }
  for (const nic of spec.nics) args.push(...nicArgs(nic, options.platform?.tapFds?.[nic.id]));
  args.push(...platformArgs(spec, options.platform));
  if (options.incoming) args.push('-incoming', options.incoming);
  return args;
}

/** The -netdev and -device of a NIC; a tap by name, or on descriptor `fd` (opened by the launcher). */
function nicArgs(nic: VmSpec['nics'][number], fd: number | undefined): string[] {
  const args: string[] = [];
  if (nic.mode === 'user') {
    const forwards = (nic.forwards ?? [])
      .map(
        (f) =>
          `,hostfwd=${optionValue(f.protocol, 'protocol', 'published protocol')}:${optionValue(f.hostAddress, 'address', 'published host address')}:${optionValue(f.hostPort, 'port', 'published host port')}-:${optionValue(f.guestPort, 'port', 'published guest port')}`,
      )
      .join('');
    args.push('-netdev', `user,id=${optionValue(nic.id, 'id', 'NIC id')}${forwards}`);
  } else {
    if (!nic.tapName) throw new Error(`NIC ${nic.id} is in tap mode but has no tap device name`);
    const tapName = optionValue(nic.tapName, 'tap', 'tap name');
    if (fd !== undefined && !(Number.isInteger(fd) && fd >= 3 && fd < 256)) throw new Error(`NIC ${nic.id}: ${fd} is not a descriptor a tap is handed on`);
    args.push('-netdev', `tap,id=${optionValue(nic.id, 'id', 'NIC id')},${fd === undefined ? `ifname=${tapName},script=no,downscript=no` : `fd=${fd}`}`);
  }
  // A virtual network's frames are smaller than Ethernet's (VXLAN's header) and its bridge drops
  // larger ones: the device tells the guest's driver the MTU, so no guest sends one.
  const mtu = nic.mode === 'tap' && nic.network ? `,host_mtu=${checkedMtu(nic.network.mtu)}` : '';
  args.push('-device', `virtio-net-pci,netdev=${nic.id},mac=${optionValue(nic.mac, 'mac', 'MAC address')},id=${nic.id}-dev${mtu}`);
  return args;
}

/**
 * The `-object` of the credentials NBD disks over TCP use: a TLS client that checks the storage
 * node's certificate (against `ca-cert.pem`) and shows the VM's (`client-cert.pem`) from `dir`.
 */
export function storageTlsObject(dir: string): string {
  return `tls-creds-x509,id=${STORAGE_TLS_OBJECT},endpoint=client,verify-peer=on,dir=${escapeOptionValue(optionValue(dir, 'path', 'storage credentials folder'))}`;
}

/** The -blockdev of a disk: QEMU's own NBD client attaches a storage node's volume natively. */
export function diskBlockdev(disk: DiskSpec): string {
  if (disk.kind === 'file') return blockdev(disk.id, disk.path, disk.format, disk.readOnly ?? false);
  // Over TCP: TLS with the VM's certificate, and QEMU checks the node's certificate names this address.
  const server = disk.tcp
    ? `file.server.type=inet,file.server.host=${optionValue(disk.tcp.host, 'address', 'storage node address')},file.server.port=${optionValue(disk.tcp.port, 'port', 'storage node port')},file.tls-creds=${STORAGE_TLS_OBJECT}`
    : `file.server.type=unix,file.server.path=${escapeOptionValue(optionValue(disk.socketPath, 'path', 'NBD socket'))}`;
  return `driver=raw,node-name=${optionValue(disk.id, 'id', 'disk id')},read-only=${disk.readOnly ? 'on' : 'off'},file.driver=nbd,${server},file.export=${escapeOptionValue(optionValue(disk.exportName, 'path', 'NBD export'))}`;
}

function blockdev(id: string, path: string, format: 'qcow2' | 'raw', readOnly: boolean): string {
  if (format !== 'qcow2' && format !== 'raw') throw new NubisError('QEMU_INVALID_OPTION', `The disk format ${JSON.stringify(format)} is neither qcow2 nor raw`);
  return `driver=${format},node-name=${optionValue(id, 'id', 'disk id')},read-only=${readOnly ? 'on' : 'off'},file.driver=file,file.filename=${escapeOptionValue(optionValue(path, 'path', 'disk path'))}`;
}

/** An MTU as the spec allows it (576 to 9000), checked again where it reaches the command line. */
function checkedMtu(mtu: number): number {
  if (!Number.isInteger(mtu) || mtu < 576 || mtu > 9000) throw new Error(`${mtu} is not an MTU from 576 to 9000`);
  return mtu;
}
