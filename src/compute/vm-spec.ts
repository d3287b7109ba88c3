/**
 * What a host needs to run one VM: the wire type between control plane and host agent, and the
 * input of every hypervisor driver. Sizes carry their unit in the name. Each type is a TypeBox
 * schema first: the agent validates what it receives against it (src/agent-api/), and the
 * formats here are strict enough that nothing but the intended value can reach a command line.
 */
import { type Static, Type } from '@sinclair/typebox';
import { VM_UID_FIRST, VM_UID_LAST } from './vm-user.ts';
import { CpuTopology, MAX_VCPUS } from './cpu-topology.ts';

/** The fixed vCPU model every host presents, so that a VM can later move to any host. */
export const NUBIS_CPU_MODEL = 'qemu64';
/** A versioned machine type: the device model must be identical on both ends of a migration. */
export const NUBIS_MACHINE_TYPE = 'pc-q35-7.2';

export type Accelerator = 'kvm' | 'tcg';

/** Formats shared by the schemas below (and by the QEMU command-line builder's own checks). */
const IPV4 = '^(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(\\.(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3}$';
const CIDR = '^[0-9]{1,3}(\\.[0-9]{1,3}){3}/[0-9]{1,2}$';
const DEVICE_ID = '^[a-z][a-z0-9-]{0,31}$';
/** A path on the host: anything but control characters. */
const PATH = Type.String({ minLength: 1, maxLength: 4096, pattern: '^[^\\u0000-\\u001f\\u007f]+$' });
const ID = Type.String({ pattern: '^[a-z0-9][a-z0-9-]{0,62}$' });
const Port = Type.Integer({ minimum: 1, maximum: 65535 });
const Protocol = Type.Union([Type.Literal('tcp'), Type.Literal('udp'), Type.Literal('icmp'), Type.Literal('any')]);

/** How the guest boots: a kernel with initrd (like the built-in `tiny` image) or a disk image. */
export const BootSource = Type.Union([
  Type.Object(
    { kind: Type.Literal('kernel'), kernelPath: PATH, initrdPath: PATH, cmdline: Type.String({ maxLength: 4096, pattern: '^[^\\u0000-\\u001f\\u007f]*$' }) },
    { additionalProperties: false },
  ),
  Type.Object(
    {
      kind: Type.Literal('disk'),
      path: PATH,
      format: Type.Union([Type.Literal('qcow2'), Type.Literal('raw')]),
      /** A full clone: the root disk is made as a copy of `path` (a template's), not an overlay over it. */
      copy: Type.Optional(Type.Boolean()),
    },
    { additionalProperties: false },
  ),
]);
export type BootSource = Static<typeof BootSource>;

const RATE = (description: string) => Type.Optional(Type.Integer({ format: 'int64', minimum: 1, maximum: 1e12, description }));

/**
 * IO limits of one disk, applied by QEMU's throttling (QMP block_set_io_throttle): operations and
 * bytes per second, each either for reads and writes together or for each apart, with a burst
 * allowed above the limit for `burstSeconds`. What is left out is not limited.
 */
export const DiskLimits = Type.Object(
  {
    iops: RATE('Operations a second, reads and writes together'),
    iopsRead: RATE('Read operations a second'),
    iopsWrite: RATE('Write operations a second'),
    bytesPerSec: RATE('Bytes a second, read and written together'),
    bytesReadPerSec: RATE('Bytes read a second'),
    bytesWritePerSec: RATE('Bytes written a second'),
    iopsBurst: RATE('Operations a second allowed in a burst (at least the operations limit)'),
    bytesPerSecBurst: RATE('Bytes a second allowed in a burst (at least the bytes limit)'),
    burstSeconds: Type.Optional(Type.Integer({ format: 'int32', minimum: 1, maximum: 3600, description: 'How long a burst may last (default 1 s)' })),
  },
  { additionalProperties: false },
);
export type DiskLimits = Static<typeof DiskLimits>;

/** A VM disk: a local image file, or a volume that a storage node exports over NBD. */
export const DiskSpec = Type.Union([
  Type.Object(
    {
      id: Type.String({ pattern: DEVICE_ID }),
      kind: Type.Literal('file'),
      path: PATH,
      format: Type.Union([Type.Literal('qcow2'), Type.Literal('raw')]),
      readOnly: Type.Optional(Type.Boolean()),
      /** POOL/VOLUME when the file is a volume of a host's dir pool. */
      localVolume: Type.Optional(Type.String({ maxLength: 127, pattern: '^[a-z0-9-]+/[a-z0-9-]+$' })),
      limits: Type.Optional(DiskLimits),
    },
    { additionalProperties: false },
  ),
  Type.Object(
    {
      id: Type.String({ pattern: DEVICE_ID }),
      kind: Type.Literal('nbd'),
      socketPath: PATH,
      exportName: Type.String({ maxLength: 1024, pattern: '^[a-z0-9/-]+$' }),
      /**
       * The storage node's TCP listener, used instead of `socketPath` by a host that does not
       * share the node's filesystem: TLS only, QEMU proving with the VM's own client certificate.
       */
      tcp: Type.Optional(Type.Object({ host: Type.String({ pattern: IPV4 }), port: Port }, { additionalProperties: false })),
      readOnly: Type.Optional(Type.Boolean()),
      limits: Type.Optional(DiskLimits),
    },
    { additionalProperties: false },
  ),
]);
export type DiskSpec = Static<typeof DiskSpec>;

/** A host port forwarded to a guest port over user-mode networking. */
export const PortForward = Type.Object(
  { protocol: Type.Union([Type.Literal('tcp'), Type.Literal('udp')]), hostAddress: Type.String({ pattern: IPV4 }), hostPort: Port, guestPort: Port },
  { additionalProperties: false },
);
export type PortForward = Static<typeof PortForward>;

/** A port's firewall; the host enforces it before the VM starts and whenever it changes. */
export const NicFirewallSpec = Type.Object(
  {
    ip: Type.String({ pattern: IPV4 }),
    ingressRules: Type.Array(
      Type.Object(
        { protocol: Protocol, portMin: Type.Optional(Port), portMax: Type.Optional(Port), sourceCidr: Type.String({ pattern: CIDR }) },
        { additionalProperties: false },
      ),
      { maxItems: 1024 },
    ),
    allowIngressFrom: Type.Array(Type.String({ pattern: IPV4 }), { maxItems: 65536 }),
    /** Allowed new connections from the VM; undefined: egress open. */
    egressRules: Type.Optional(
      Type.Array(
        Type.Object(
          { protocol: Protocol, portMin: Type.Optional(Port), portMax: Type.Optional(Port), destinationCidr: Type.String({ pattern: CIDR }) },
          { additionalProperties: false },
        ),
        { maxItems: 1024 },
      ),
    ),
  },
  { additionalProperties: false },
);
export type NicFirewallSpec = Static<typeof NicFirewallSpec>;

const MBIT = (description: string) => Type.Optional(Type.Integer({ format: 'int32', minimum: 1, maximum: 100_000, description }));

/** A NIC's bandwidth limits in Mbit/s, applied to its tap by the host (network/nic-bandwidth.ts). */
export const NicBandwidthSpec = Type.Object(
  { inMbit: MBIT('Towards the guest, Mbit/s (shaped)'), outMbit: MBIT('From the guest, Mbit/s (policed)') },
  { additionalProperties: false },
);
export type NicBandwidthSpec = Static<typeof NicBandwidthSpec>;

export const NicSpec = Type.Object(
  {
    id: Type.String({ pattern: DEVICE_ID }),
    mac: Type.String({ pattern: '^([0-9a-f]{2}:){5}[0-9a-f]{2}$' }),
    /** `user`: QEMU's user-mode network (no root needed); `tap`: a tap device plugged by the host. */
    mode: Type.Union([Type.Literal('user'), Type.Literal('tap')]),
    tapName: Type.Optional(Type.String({ pattern: '^[A-Za-z0-9_.-]{1,15}$' })),
    forwards: Type.Optional(Type.Array(PortForward, { maxItems: 16 })),
    /** For `tap` NICs: the virtual network the host plugs the tap into. */
    network: Type.Optional(
      Type.Object(
        { id: ID, vni: Type.Integer({ minimum: 1, maximum: 16777215 }), mtu: Type.Integer({ minimum: 576, maximum: 9000 }) },
        { additionalProperties: false },
      ),
    ),
    /** For `tap` NICs: the port's firewall (anti-spoofing for `ip`, and ingress from its security groups). */
    firewall: Type.Optional(NicFirewallSpec),
    /** For `tap` NICs: its bandwidth limits. */
    bandwidth: Type.Optional(NicBandwidthSpec),
  },
  { additionalProperties: false },
);
export type NicSpec = Static<typeof NicSpec>;

/** A VM's TPM, firmware and launch policy (compute/trusted-launch.ts). */
export const TrustedLaunchFields = {
  /** A TPM 2.0 (swtpm on the host) whose state lives in the VM's folder and moves with it. */
  tpm: Type.Optional(Type.Boolean()),
  /** `uefi`: OVMF firmware with a per-VM variable store; absent or `bios`: SeaBIOS as before. */
  firmware: Type.Optional(Type.Union([Type.Literal('bios'), Type.Literal('uefi')])),
  /** Present when the VM may only run from matching launch measurements (its project requires trusted launch). */
  trustedLaunch: Type.Optional(
    Type.Object(
      {
        expected: Type.Array(
          Type.Object(
            { component: Type.String({ pattern: '^[a-z][a-z0-9:._-]{0,127}$' }), sha256: Type.String({ pattern: '^[0-9a-f]{64}$' }) },
            { additionalProperties: false },
          ),
          { maxItems: 64 },
        ),
      },
      { additionalProperties: false },
    ),
  ),
};

/** A list of host CPUs, as the kernel's cpusets write it: `0-3,6`. */
export const CPU_LIST_PATTERN = '^[0-9]{1,4}(-[0-9]{1,4})?(,[0-9]{1,4}(-[0-9]{1,4})?){0,63}$';

/** The highest CPU a list of CPU_LIST_PATTERN names: a host needs more CPUs than that. */
export function highestCpuOf(cpuList: string): number {
  return Math.max(...cpuList.split(/[,-]/).map(Number));
}

/** A VM's share of its host's CPUs, applied through its cgroup (host/cgroups.ts). */
export const CpuControls = Type.Object(
  {
    /** A cap on the CPU time of the whole VM, in percent of one host CPU (200: two CPUs' worth). */
    limitPercent: Type.Optional(Type.Integer({ minimum: 1, maximum: 6400 })),
    /** Its share against the host's other VMs when CPUs are short (100 by default, as cgroup v2). */
    weight: Type.Optional(Type.Integer({ minimum: 1, maximum: 10_000 })),
    /** The host CPUs its threads may run on. */
    pin: Type.Optional(Type.String({ maxLength: 320, pattern: CPU_LIST_PATTERN })),
  },
  { additionalProperties: false },
);
export type CpuControls = Static<typeof CpuControls>;

export const VmSpec = Type.Object(
  {
    id: ID,
    name: Type.String({ pattern: '^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$' }),
    /** The vCPUs present now (QEMU's -smp cpus=): at start, and raised by hot-adding while it runs. */
    cpus: Type.Integer({ minimum: 1, maximum: MAX_VCPUS }),
    /** The vCPUs it can ever have (-smp maxcpus=; absent: cpus), which placement and quotas count. */
    maxCpus: Type.Optional(Type.Integer({ minimum: 1, maximum: MAX_VCPUS })),
    /** How the maximum is laid out (absent: one socket of maxCpus cores); compute/cpu-topology.ts. */
    cpuTopology: Type.Optional(CpuTopology),
    /** The guest's RAM as QEMU gives it (-m): the VM's maximum memory, which placement counts. */
    memoryMb: Type.Integer({ minimum: 64, maximum: 1048576 }),
    /** What the balloon leaves the guest (its current memory, host/vm-memory.ts); absent: all of memoryMb. */
    memoryTargetMb: Type.Optional(Type.Integer({ minimum: 64, maximum: 1048576 })),
    /** The agent may balloon the idle guest below its target when the host runs short (host/memory-reclaim.ts). */
    memoryReclaim: Type.Optional(Type.Boolean()),
    boot: BootSource,
    disks: Type.Array(DiskSpec, { maxItems: 16 }),
    nics: Type.Array(NicSpec, { maxItems: 16 }),
    cpuControls: Type.Optional(CpuControls),
    /** The unprivileged uid (and gid) its QEMU and swtpm run as on every host (compute/vm-user.ts). */
    unixUid: Type.Optional(Type.Integer({ minimum: VM_UID_FIRST, maximum: VM_UID_LAST, format: 'int32' })),
    /**
     * A linked clone: the uid of its template, whose group alone may read the template's disks
     * (host/vm-snapshot-control.ts `sealTemplate`); its QEMU is launched in that group too.
     * Named by the control plane, never read from the clone's own disk files (its QEMU writes them).
     */
    templateUid: Type.Optional(Type.Integer({ minimum: VM_UID_FIRST, maximum: VM_UID_LAST, format: 'int32' })),
    ...TrustedLaunchFields,
  },
  { additionalProperties: false },
);
export type VmSpec = Static<typeof VmSpec>;

/** Why a VM cannot be restarted on another host, or undefined when it can. */
export function notRestartable(spec: VmSpec): string | undefined {
  if (spec.boot.kind !== 'kernel') return 'it boots an imported disk image, whose overlay lives on its host';
  const local = spec.disks.find((disk) => disk.kind !== 'nbd');
  if (local) return `its disk ${local.id} is a file on its host (only storage-node volumes are reachable from every host)`;
  return undefined;
}
