/**
 * Every wire type of the REST API, in one place: the same schemas validate requests, type the
 * route handlers and produce the OpenAPI document.
 *
 * Size: the shared catalogue of the API's types; the larger families have their own files
 * (cluster-schemas.ts, event-schemas.ts, ...), and what stays here is what the routes share.
 */
import { Type, type Static, type TSchema } from '@sinclair/typebox';
import { LABEL_KEY_PATTERN, LABEL_VALUE_PATTERN, MAX_LABELS } from './label-format.ts';
import { DEVICE_REF_MAX_LENGTH, DEVICE_REF_PATTERN, DEVICE_REF_RULE } from '../storage/pool/device-ref.ts';
import { CPU_LIST_PATTERN, DiskLimits, NicBandwidthSpec } from '../compute/vm-spec.ts';
import { CpuTopology, MAX_VCPUS } from '../compute/cpu-topology.ts';
import { VmMemoryReport } from '../compute/memory-spec.ts';
import { VmPlatformFields } from './trusted-launch-schemas.ts';
import { VmTemplateFields } from './template-fields.ts';

const NAME_PATTERN = '^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$';

/** Names of VMs, images, projects, hosts: DNS-label-like, so they work as guest hostnames. */
export const ResourceName = Type.String({
  pattern: NAME_PATTERN,
  maxLength: 63,
  description: 'Lowercase letters, digits and inner hyphens, 1-63 characters',
  examples: ['web1'],
});

/**
 * A resource named in a route: its name or its id. Ids (`vm-3f9c1a2b7d4e`, see core/ids.ts) are
 * written in the names' alphabet, so one pattern takes both.
 */
export function ResourceRef(description: string) {
  return Type.String({ pattern: NAME_PATTERN, maxLength: 63, description, examples: ['web1'] });
}

/** An id as the API hands it out: a type prefix and random hex (core/ids.ts). */
export const ResourceId = Type.String({
  pattern: '^[a-z0-9][a-z0-9-]{0,62}$',
  maxLength: 63,
  description: 'A type prefix and random hex, e.g. vm-3f9c1a2b7d4e',
});

/** An ISO 8601 time as `Date.toISOString()` writes it. */
export const Timestamp = Type.String({ format: 'date-time', maxLength: 32 });

/** Free text (messages, descriptions, log lines) of at most `maxLength` characters. */
export function Text(maxLength: number, options: { description?: string } = {}) {
  return Type.String({ maxLength, ...options });
}

/** A 32-bit integer from `minimum` to `maximum`. */
export function Int32(minimum: number, maximum: number, options: { description?: string; default?: number } = {}) {
  return Type.Integer({ format: 'int32', minimum, maximum, ...options });
}

/** A count (of VMs, NICs, errors...): 0 up to the int32 range. */
export function Count(options: { description?: string } = {}) {
  return Int32(0, 2 ** 31 - 1, options);
}

/** A byte count; JSON numbers stay exact up to 2^53 - 1. */
export function ByteCount(options: { description?: string } = {}) {
  return Type.Integer({ format: 'int64', minimum: 0, maximum: Number.MAX_SAFE_INTEGER, ...options });
}

/** A TCP/UDP port. */
export function Port(options: { description?: string } = {}) {
  return Int32(1, 65535, options);
}

/** A dotted IPv4 address; the pattern refuses anything a command line could read as more. */
const IPV4_PATTERN = '^(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(\\.(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3}$';

/** A dotted-quad IPv4 address. */
export function Ipv4(options: { description?: string; examples?: string[] } = {}) {
  return Type.String({ format: 'ipv4', pattern: IPV4_PATTERN, maxLength: 15, ...options });
}

/**
 * An IPv4 network in CIDR notation, e.g. 10.10.0.0/24. The pattern takes digits, dots and a slash
 * only, so nothing else can reach a command line; the network code checks the values and says
 * what is wrong with them (an octet over 255, a /33, host bits set).
 */
export function Ipv4Cidr(options: { description?: string; examples?: string[] } = {}) {
  return Type.String({ pattern: '^[0-9]{1,3}(\\.[0-9]{1,3}){3}/[0-9]{1,2}$', maxLength: 18, ...options });
}

/** A path on the control plane host (Linux PATH_MAX). */
export function FilePath(options: { description?: string } = {}) {
  return Type.String({ minLength: 1, maxLength: 4096, ...options });
}

/** A size such as 20G, 512MiB or 4096, as storage/size.ts parses it. */
const SIZE_PATTERN = '^\\s*[0-9]+(\\.[0-9]+)?\\s*[KMGTPkmgtp]?([iI]?[bB])?\\s*$';

/** Every list the API answers with stays below this many entries. */
const MAX_LIST = 100000;

/** A list answer; the API has no paging, so the bound is a sanity limit for clients. */
export function List<T extends TSchema>(items: T, options: { description?: string } = {}) {
  return Type.Array(items, { maxItems: MAX_LIST, ...options });
}

export const ErrorBody = Type.Object(
  {
    code: Type.String({ pattern: '^[A-Z][A-Z0-9_]*$', maxLength: 64, description: 'Stable error code, e.g. VM_NOT_FOUND' }),
    message: Text(65536, { description: 'What went wrong and what to change' }),
    details: Type.Optional(Type.Record(Type.String(), Type.Unknown())),
  },
  { $id: 'Error' },
);

export const ProjectQuery = Type.Object({ project: Type.Optional(ResourceName) }, { additionalProperties: false });

/** Labels of hosts and pools, as stored and shown. */
export const Labels = Type.Record(Type.String({ pattern: LABEL_KEY_PATTERN, maxLength: 127 }), Type.String({ pattern: LABEL_VALUE_PATTERN, maxLength: 63 }), {
  maxProperties: MAX_LABELS,
  description: 'Labels as key=value (e.g. zone, region, rack)',
});

/** How a host keeps its VMs apart (README "Isolation"), as its agent reports it. */
export const HostIsolation = Type.Object(
  {
    cgroups: Type.Union([Type.Literal('v1'), Type.Literal('v2'), Type.Literal('none')], {
      description: 'The cgroup version its CPU controls use (none: the host has neither, VMs run without controls)',
    }),
    vmUsers: Type.Boolean({ description: 'Each VM runs as an unprivileged user of its own (false: the agent is not root)' }),
  },
  { additionalProperties: false },
);
export type HostIsolation = Static<typeof HostIsolation>;

export const Host = Type.Object(
  {
    id: ResourceId,
    name: ResourceName,
    status: Type.Union([Type.Literal('online'), Type.Literal('suspect'), Type.Literal('offline'), Type.Literal('fenced'), Type.Literal('maintenance')], {
      description: 'online; suspect (silent a few seconds); offline; fenced (lost: its HA VMs were restarted elsewhere); maintenance',
    }),
    labels: Labels,
    cpuOvercommit: Type.Number({ description: 'vCPUs placement gives VMs per host core' }),
    memoryOvercommit: Type.Number({ description: "Guest memory per MiB of the host's memory after its reserve" }),
    endpoint: Text(4096),
    accelerator: Text(16, { description: 'kvm or tcg, chosen by a boot probe' }),
    acceleratorReason: Text(4096),
    cpus: Count(),
    memoryMb: Count(),
    allocatedCpus: Count(),
    allocatedMemoryMb: Count(),
    vmCount: Count(),
    lastSeenAt: Timestamp,
    joinedAt: Timestamp,
    underlayIp: Type.Optional(Ipv4({ description: 'Address on the underlay network (VXLAN endpoint)' })),
    qemuVersion: Type.Optional(Text(256, { description: 'QEMU on the host; a VM migrates only to the same or a newer QEMU' })),
    isolation: Type.Optional(HostIsolation),
  },
  { $id: 'Host' },
);

export const PublishedPort = Type.Object(
  {
    protocol: Type.Union([Type.Literal('tcp'), Type.Literal('udp')], { default: 'tcp' }),
    // It becomes part of QEMU's `hostfwd=` option: only a plain address may pass.
    hostAddress: Type.String({ format: 'ipv4', pattern: IPV4_PATTERN, maxLength: 15, default: '127.0.0.1', description: 'Host IPv4 address to listen on' }),
    hostPort: Type.Integer({ format: 'int32', minimum: 1, maximum: 65535 }),
    guestPort: Type.Integer({ format: 'int32', minimum: 1, maximum: 65535 }),
  },
  { additionalProperties: false },
);

/** A volume as POOL/VOLUME. */
export const VolumePath = Type.String({
  pattern: '^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?/[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$',
  maxLength: 127,
  description: 'POOL/VOLUME, both names',
  examples: ['pool1/vol1'],
});

/**
 * Whether the balancer may move a VM, as vSphere DRS's per-VM automation level: `auto` (any run),
 * `manual` (only a run a person starts, never the background balancer) or `never`.
 */
export const VmBalancePolicy = Type.Union([Type.Literal('auto'), Type.Literal('manual'), Type.Literal('never')], {
  description: 'Which balancing runs may move it: auto (any, the default), manual (only one a person starts) or never',
});
export type VmBalancePolicy = Static<typeof VmBalancePolicy>;

/** What a VM create and update set about high availability, start on boot and balancing. */
export const VmPolicies = {
  ha: Type.Optional(Type.Boolean({ description: 'Restart it on another host when its host fails (its disks must be on shared storage)' })),
  haPriority: Type.Optional(Int32(0, 1000, { description: 'Higher restarts first when a host fails (default 0)' })),
  haGroup: Type.Optional(
    Type.String({
      pattern: '^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)?$',
      maxLength: 63,
      description: "HA group whose hosts it prefers; '' leaves its group (on update)",
    }),
  ),
  autostart: Type.Optional(Type.Boolean({ description: "Start it when its host's agent starts after a host reboot" })),
  bootOrder: Type.Optional(Int32(0, 1000, { description: 'Lower starts first at autostart (default 0)' })),
  bootDelaySeconds: Type.Optional(Int32(0, 600, { description: 'Seconds before the next VM starts at autostart (default 0)' })),
  balance: Type.Optional(VmBalancePolicy),
};

/** A VM's CPU controls as create sets them (host/cgroups.ts applies them in the VM's cgroup). */
export const VmCpuControls = {
  cpuLimit: Type.Optional(
    Int32(1, 6400, { description: "Cap on the VM's CPU time in percent of one host CPU (50: half a CPU; 200: two CPUs' worth); at most 100 per vCPU" }),
  ),
  cpuWeight: Type.Optional(Int32(1, 10000, { description: "Its share against the host's other VMs when CPUs are short (default 100)" })),
  cpuPin: Type.Optional(Type.String({ pattern: CPU_LIST_PATTERN, maxLength: 320, description: 'The host CPUs it may run on, as 0-3,6' })),
};

/** A VM's disks' IO limits by guest device (vdb), as `vm show` lists the disks. */
const DISK_DEVICE = Type.String({ pattern: '^vd[a-p]$' });
export const VmDiskLimits = Type.Record(DISK_DEVICE, DiskLimits, { maxProperties: 16, additionalProperties: false });
/** On update: the disks named get these limits (in full); null lifts a disk's limits. */
export const VmDiskLimitsUpdate = Type.Record(DISK_DEVICE, Type.Union([DiskLimits, Type.Null()]), {
  maxProperties: 16,
  additionalProperties: false,
  description: 'IO limits by guest device (vdb); each disk named gets exactly the limits given, null lifts them',
});
/** A VM's memory beside `memoryMb` (its current memory) as create sets them (control/vm-memory.ts). */
export const VmMemoryFields = {
  maxMemoryMb: Type.Optional(
    Int32(64, 1048576, { description: 'Its maximum memory in MiB (default: memoryMb): vm set can raise memoryMb up to it; placement and quotas count it' }),
  ),
  memoryReclaim: Type.Optional(Type.Boolean({ description: 'Its host may balloon it below memoryMb while the host is short of memory, and gives it back' })),
};

/** A VM's vCPUs beside `cpus` (present now) as create sets them (compute/cpu-topology.ts, control/vm-vcpus.ts). */
export const VmVcpuFields = {
  maxCpus: Type.Optional(
    Int32(1, MAX_VCPUS, { description: 'The most vCPUs it can have (default: cpus): vm set can hot-add up to it; placement and quotas count it' }),
  ),
  cpuTopology: Type.Optional({
    ...CpuTopology,
    description: 'How maxCpus are laid out for the guest; sockets x cores x threads must be maxCpus (default: one socket of maxCpus cores, one thread each)',
  }),
};

/** The vCPU field of an update. */
export const VmVcpuUpdate = {
  cpus: Type.Optional(
    Int32(1, MAX_VCPUS, {
      description: 'vCPUs present, up to its maxCpus: hot-added while it runs (fewer only while it is stopped, from its next start)',
    }),
  ),
};

/** The memory fields of an update. */
export const VmMemoryUpdate = {
  memoryMb: Type.Optional(Int32(64, 1048576, { description: 'Its current memory in MiB, within its maximum: live through its balloon while it runs' })),
  memoryReclaim: VmMemoryFields.memoryReclaim,
};

/** A VM's NICs' bandwidth limits by NIC (net0), as `vm show` lists the NICs. */
const NIC_ID = Type.String({ pattern: '^net[0-9]{1,2}$' });
export const VmNicBandwidth = Type.Record(NIC_ID, NicBandwidthSpec, { maxProperties: 16, additionalProperties: false });
/** On update: the NICs named get these limits (in full); null lifts a NIC's limits. */
export const VmNicBandwidthUpdate = Type.Record(NIC_ID, Type.Union([NicBandwidthSpec, Type.Null()]), {
  maxProperties: 16,
  additionalProperties: false,
  description:
    'Bandwidth limits by NIC (net0) in Mbit/s, inMbit towards the guest and outMbit from it; each NIC named gets exactly the limits given, null lifts them',
});

/** The same on update, where null takes a control away. */
export const VmCpuControlsUpdate = {
  cpuLimit: Type.Optional(Type.Union([VmCpuControls.cpuLimit, Type.Null()])),
  cpuWeight: Type.Optional(Type.Union([VmCpuControls.cpuWeight, Type.Null()])),
  cpuPin: Type.Optional(Type.Union([VmCpuControls.cpuPin, Type.Null()])),
};

export const VmCreateRequest = Type.Object(
  {
    name: ResourceName,
    image: ResourceName,
    cpus: Int32(1, MAX_VCPUS, { default: 1, description: 'Virtual CPUs present at its start (within maxCpus)' }),
    memoryMb: Int32(64, 1048576, { default: 256, description: 'Guest memory in MiB (its current memory, within maxMemoryMb)' }),
    host: Type.Optional(ResourceName),
    project: Type.Optional(ResourceName),
    publish: Type.Optional(Type.Array(PublishedPort, { maxItems: 16, description: 'Host ports forwarded to guest ports (user-mode network)' })),
    networks: Type.Optional(
      Type.Array(
        Type.Object(
          { network: ResourceName, ip: Type.Optional(Ipv4({ description: 'Requested address; default: the lowest free one' })) },
          { additionalProperties: false },
        ),
        { maxItems: 8, description: 'NICs on virtual networks, in guest order (eth0, eth1, ...); without it the VM gets a user-mode NIC' },
      ),
    ),
    secgroups: Type.Optional(Type.Array(ResourceName, { maxItems: 8, description: 'Security groups of its network NICs; without any, ingress is open' })),
    group: Type.Optional(ResourceName),
    disks: Type.Optional(Type.Array(VolumePath, { maxItems: 8, description: 'Volumes (POOL/VOLUME) attached as virtio disks vda, vdb, ... over NBD' })),
    waitReady: Type.Boolean({ default: true, description: 'The operation ends when the guest printed its readiness line' }),
    allowPostcopy: Type.Optional(
      Type.Boolean({ description: 'Live migration may use post-copy (default true); without it a migration that cannot converge throttles the guest instead' }),
    ),
    ...VmPolicies,
    ...VmCpuControls,
    ...VmVcpuFields,
    ...VmMemoryFields,
    ...VmPlatformFields,
  },
  { additionalProperties: false, $id: 'VmCreateRequest' },
);
export type VmCreateRequest = Static<typeof VmCreateRequest>;

export const VmState = Text(16, { description: 'pending, starting, running, paused, stopping, stopped, crashed, migrating, unknown' });

/** What a VM does now: the rates of its host's latest usage sample (a running VM shown alone). */
export const VmActivity = Type.Object(
  {
    sampledAt: Timestamp,
    cpu: Type.Optional(Type.Number({ minimum: 0, maximum: 1, description: 'Busy fraction of its vCPUs' })),
    memoryBytes: Type.Optional(Type.Number({ minimum: 0, description: "QEMU's resident memory" })),
    diskReadBytesPerSec: Type.Optional(Type.Number({ minimum: 0 })),
    diskWriteBytesPerSec: Type.Optional(Type.Number({ minimum: 0 })),
    netRxBytesPerSec: Type.Optional(Type.Number({ minimum: 0 })),
    netTxBytesPerSec: Type.Optional(Type.Number({ minimum: 0 })),
  },
  { description: "Its CPU, disk and network rates from its host's latest sample (every 10 s)" },
);
export type VmActivity = Static<typeof VmActivity>;

export const Vm = Type.Object(
  {
    id: ResourceId,
    name: ResourceName,
    project: ResourceName,
    host: Text(63),
    image: ResourceName,
    cpus: Count({ description: 'vCPUs present now' }),
    maxCpus: Count({ description: 'The most vCPUs it can have; placement and quotas count it' }),
    cpuTopology: { ...CpuTopology, description: 'How maxCpus are laid out for the guest (sockets x cores x threads)' },
    memoryMb: Count(),
    state: VmState,
    desiredState: Text(16),
    accelerator: Text(16),
    ready: Type.Boolean({ description: 'The guest printed its readiness line in its current boot' }),
    pid: Type.Optional(Count()),
    startedAt: Type.Optional(Timestamp),
    readyAt: Type.Optional(Timestamp),
    uptimeSeconds: Type.Optional(Count()),
    guestIps: Type.Array(Text(64), { maxItems: 64 }),
    nics: Type.Array(Type.Object({ network: ResourceName, mac: Type.String({ pattern: '^([0-9a-f]{2}:){5}[0-9a-f]{2}$', maxLength: 17 }), ip: Ipv4() }), {
      maxItems: 8,
    }),
    disks: Type.Array(Type.Object({ device: Text(16, { description: 'Name in the guest when it boots from kernel+initrd' }), volume: VolumePath }), {
      maxItems: 64,
    }),
    publish: Type.Array(PublishedPort, { maxItems: 16 }),
    lastError: Type.Optional(Text(65536)),
    crashLogTail: Type.Optional(Type.Array(Text(65536), { maxItems: 1000 })),
    allowPostcopy: Type.Boolean({ description: 'Live migration may use post-copy' }),
    ha: Type.Boolean({ description: 'Restarted on another host when its host fails' }),
    haPriority: Type.Integer({ format: 'int32', minimum: 0, maximum: 1000 }),
    haGroup: Type.Optional(ResourceName),
    autostart: Type.Boolean({ description: "Started when its host's agent starts after a host reboot" }),
    bootOrder: Type.Integer({ format: 'int32', minimum: 0, maximum: 1000 }),
    bootDelaySeconds: Type.Integer({ format: 'int32', minimum: 0, maximum: 600 }),
    balance: VmBalancePolicy,
    ...VmCpuControls,
    diskLimits: Type.Optional(VmDiskLimits),
    nicBandwidth: Type.Optional(VmNicBandwidth),
    maxMemoryMb: Count(),
    memoryReclaim: Type.Boolean(),
    activity: Type.Optional(VmActivity),
    memoryUsage: Type.Optional({ ...VmMemoryReport, description: 'Its memory as its guest and host see it now (a running VM shown alone, not in lists)' }),
    ...VmPlatformFields,
    ...VmTemplateFields,
    createdAt: Timestamp,
  },
  { $id: 'Vm' },
);
export type Vm = Static<typeof Vm>;

export const VmRef = Type.Object({ vm: ResourceRef('VM name (in the project) or id') });

export const VmStopRequest = Type.Object(
  {
    force: Type.Boolean({ default: false, description: 'Skip the ACPI shutdown: stop at once (stop) or hard reset (reboot)' }),
    timeoutSeconds: Int32(1, 3600, { default: 30, description: 'How long the guest may take to shut down before it is forced' }),
  },
  { additionalProperties: false },
);

export const VmLogQuery = Type.Object({ project: Type.Optional(ResourceName), lines: Int32(1, 10000, { default: 100 }) }, { additionalProperties: false });

export const VmLog = Type.Object({ lines: Type.Array(Text(65536), { maxItems: 10000 }) });

export const Image = Type.Object(
  {
    id: ResourceId,
    name: ResourceName,
    kind: Type.Union([Type.Literal('kernel'), Type.Literal('disk')]),
    format: Text(16),
    sizeBytes: ByteCount(),
    builtin: Type.Boolean(),
    createdAt: Timestamp,
  },
  { $id: 'Image' },
);

/**
 * A file in the control plane's import folder (`<data>/import/`): a name relative to it, or an
 * absolute path inside it. No `..` segments, no spaces or control characters, at most 1024
 * characters. The catalogue checks the same rule again and where the file really is.
 */
export const importFileNamePattern = '^(?!.*(?:^|/)\\.\\.(?:/|$))[A-Za-z0-9._+@/-]{1,1024}$';
const ImportFileName = (description: string) =>
  Type.String({
    pattern: importFileNamePattern,
    maxLength: 1024,
    description: `${description}; letters, digits and . _ + @ - /, no .. segments, at most 1024 characters`,
    examples: ['debian-12.qcow2'],
  });

export const ImageImportRequest = Type.Object(
  {
    name: ResourceName,
    path: Type.Optional(ImportFileName('A qcow2 or raw disk image in the import folder (<data>/import/): its name there, or its absolute path inside it')),
    kernelPath: Type.Optional(ImportFileName('A Linux x86 kernel (bzImage) in the import folder, with initrdPath: a kernel+initrd image')),
    initrdPath: Type.Optional(ImportFileName('An initrd (cpio, optionally gzip/xz/zstd/lz4/bzip2-compressed) in the import folder')),
  },
  { additionalProperties: false },
);

export const OperationStatus = Type.Union([Type.Literal('running'), Type.Literal('succeeded'), Type.Literal('failed'), Type.Literal('cancelled')]);

export const Operation = Type.Object(
  {
    id: ResourceId,
    kind: Text(64),
    status: OperationStatus,
    stage: Text(256),
    progress: Type.Number({ minimum: 0, maximum: 1 }),
    target: Type.Object({ type: Text(64), id: Text(256), name: Text(256) }),
    error: Type.Optional(Type.Object({ code: Text(64), message: Text(65536) })),
    result: Type.Optional(Type.Unknown()),
    createdAt: Timestamp,
    updatedAt: Timestamp,
  },
  { $id: 'Operation' },
);
export type Operation = Static<typeof Operation>;

export const OperationEvent = Type.Object({
  seq: Count(),
  at: Timestamp,
  stage: Text(256),
  message: Text(65536),
  progress: Type.Number(),
  data: Type.Optional(Type.Unknown()),
});
export type OperationEvent = Static<typeof OperationEvent>;

export const Accepted = Type.Object({ operation: Operation }, { $id: 'Accepted' });

export const Project = Type.Object({ id: ResourceId, name: ResourceName, createdAt: Timestamp });
export const ProjectCreateRequest = Type.Object({ name: ResourceName }, { additionalProperties: false });

export const HostJoinRequest = Type.Object(
  {
    name: ResourceName,
    joinToken: Text(256),
    endpoint: Type.String({
      pattern: '^(unix:/|https?://)',
      maxLength: 4096,
      description: 'Where the control plane reaches the agent: unix:/path or http://host:port',
      examples: ['unix:/run/nubis/agent.sock'],
    }),
    agentToken: Type.String({ minLength: 32, maxLength: 256, description: 'What the agent presents to the control plane from now on (only its hash is kept)' }),
    accelerator: Type.Union([Type.Literal('kvm'), Type.Literal('tcg')]),
    acceleratorReason: Text(4096),
    cpus: Int32(1, 65536),
    memoryMb: Int32(64, 2 ** 31 - 1),
    underlayIp: Type.Optional(Ipv4()),
    qemuVersion: Type.Optional(Text(256, { description: "The host's `qemu-system-x86_64 --version` line" })),
    isolation: Type.Optional(HostIsolation),
  },
  { additionalProperties: false },
);

// What an agent reports about its VMs: bounds only, no patterns, so that a report is never
// refused for a detail and the control plane keeps hearing from the host.
export const VmStatusReport = Type.Object({
  id: Text(63),
  name: Text(63),
  state: Text(16),
  pid: Type.Optional(Count()),
  startedAt: Type.Optional(Text(32)),
  readyAt: Type.Optional(Text(32)),
  guestIps: Type.Optional(Type.Array(Text(64), { maxItems: 64 })),
  lastError: Type.Optional(Text(65536)),
  crashLogTail: Type.Optional(Type.Array(Text(65536), { maxItems: 1000 })),
});

export const HostReport = Type.Object(
  { vms: List(VmStatusReport), full: Type.Boolean({ description: 'The list is every VM of the host' }) },
  { additionalProperties: false },
);

export const Status = Type.Object({
  version: Text(32),
  hosts: Count(),
  hostsOnline: Count(),
  vms: Count(),
  vmsRunning: Count(),
  dataDir: FilePath(),
});

export const Network = Type.Object(
  {
    id: ResourceId,
    name: ResourceName,
    project: ResourceName,
    subnet: Ipv4Cidr(),
    gateway: Type.Optional(Ipv4()),
    dhcp: Type.Boolean(),
    nat: Type.Boolean(),
    dhcpAddress: Type.Optional(Ipv4()),
    vni: Int32(1, 16777215),
    conntrackZone: Int32(1, 65535),
    mtu: Int32(68, 65535),
    nicCount: Count(),
    hosts: List(ResourceName, { description: 'Hosts that carry the network: a VM on it, its DHCP server or NAT gateway, a probe or an incoming migration' }),
    createdAt: Timestamp,
  },
  { $id: 'Network' },
);

export const NetworkCreateRequest = Type.Object(
  {
    name: ResourceName,
    subnet: Ipv4Cidr({ description: 'IPv4 subnet, /8 to /29', examples: ['10.10.0.0/24'] }),
    gateway: Type.Optional(Ipv4({ description: 'Gateway address given to guests (reserved in IPAM)', examples: ['10.10.0.1'] })),
    dhcp: Type.Boolean({ default: false, description: 'Serve DHCP (fixed leases from IPAM); otherwise guests get static settings' }),
    nat: Type.Boolean({ default: false, description: 'A NAT gateway at the gateway address: VMs reach the outside, port forwards reach VMs' }),
    vni: Type.Optional(Int32(1, 16777215, { description: 'VXLAN network identifier; default: the next free one from 1000' })),
    project: Type.Optional(ResourceName),
  },
  { additionalProperties: false },
);

export const NetworkProbeRequest = Type.Object(
  {
    command: Type.Array(Type.String({ minLength: 1, maxLength: 4096, pattern: '^[^\\u0000]*$' }), {
      minItems: 1,
      maxItems: 64,
      description: 'Command and arguments, run in a namespace attached to the network',
    }),
    host: Type.Optional(ResourceName),
    timeoutSeconds: Int32(1, 600, { default: 30 }),
  },
  { additionalProperties: false },
);

export const NetworkProbeResult = Type.Object({
  host: ResourceName,
  address: Ipv4({ description: 'The address the probe used' }),
  exitCode: Int32(-255, 255),
  stdout: Text(16 * 2 ** 20),
  stderr: Text(16 * 2 ** 20),
});

export const SecgroupRule = Type.Object({
  id: ResourceId,
  direction: Type.Union([Type.Literal('ingress'), Type.Literal('egress')]),
  protocol: Text(8),
  portMin: Type.Optional(Port()),
  portMax: Type.Optional(Port()),
  cidr: Type.Optional(Ipv4Cidr()),
  remoteGroup: Type.Optional(Text(63)),
});

export const Secgroup = Type.Object(
  {
    id: ResourceId,
    name: ResourceName,
    project: ResourceName,
    description: Text(200),
    rules: List(SecgroupRule),
    members: List(ResourceName, { description: 'VMs in the group' }),
    createdAt: Timestamp,
  },
  { $id: 'Secgroup' },
);

export const SecgroupCreateRequest = Type.Object(
  { name: ResourceName, description: Type.Optional(Type.String({ maxLength: 200 })), project: Type.Optional(ResourceName) },
  { additionalProperties: false },
);

export const SecgroupRuleRequest = Type.Object(
  {
    direction: Type.Union([Type.Literal('ingress'), Type.Literal('egress')], { default: 'ingress' }),
    protocol: Type.Union([Type.Literal('tcp'), Type.Literal('udp'), Type.Literal('icmp'), Type.Literal('any')]),
    portMin: Type.Optional(Port({ description: 'First port (tcp/udp)' })),
    portMax: Type.Optional(Port({ description: 'Last port (default: portMin)' })),
    cidr: Type.Optional(Ipv4Cidr({ description: 'Allowed sources (ingress) or destinations (egress); default 0.0.0.0/0', examples: ['10.0.0.0/8'] })),
    remoteGroup: Type.Optional(ResourceName),
  },
  { additionalProperties: false },
);

export const PoolMember = Type.Object(
  {
    index: Count(),
    path: FilePath(),
    state: Text(32),
    readErrors: Type.Optional(Count()),
    writeErrors: Type.Optional(Count()),
    checksumErrors: Type.Optional(Count()),
  },
  { additionalProperties: true },
);

export const Pool = Type.Object(
  {
    name: ResourceName,
    kind: Text(8, { description: 'san: volumes served by the storage node over NBD (device-based); dir: qcow2 files on hosts (host-based)' }),
    labels: Type.Optional(Labels),
    layout: Text(16),
    state: Text(16, { description: 'online, degraded or faulted' }),
    readOnly: Type.Boolean(),
    readOnlyReason: Type.Optional(Text(4096)),
    sizeBytes: ByteCount(),
    allocatedBytes: ByteCount(),
    freeBytes: ByteCount(),
    provisionedBytes: ByteCount(),
    overcommitRatio: Type.Number(),
    wasteBytes: ByteCount(),
    chunkBytes: ByteCount(),
    warnings: List(Text(4096)),
    members: List(PoolMember),
    volumes: Count(),
  },
  { $id: 'Pool', additionalProperties: true },
);

/** A pool member as a client names it; the storage node checks it again (src/storage/pool/device-ref.ts). */
export const DeviceRef = Type.String({
  minLength: 1,
  maxLength: DEVICE_REF_MAX_LENGTH,
  pattern: DEVICE_REF_PATTERN,
  description: `Regular file or block device on the storage node, or an NBD export: ${DEVICE_REF_RULE}`,
});

export const PoolCreateRequest = Type.Object(
  {
    name: ResourceName,
    kind: Type.Optional(
      Type.Union([Type.Literal('san'), Type.Literal('dir')], {
        description: 'san (default): devices in a RAID layout served by the storage node over NBD; dir: a folder of qcow2 files on each of `hosts`',
      }),
    ),
    layout: Type.Optional(
      Type.Union(
        ['raid0', 'raid1', 'raid5', 'raid6', 'raid10'].map((l) => Type.Literal(l)),
        { description: 'san pools' },
      ),
    ),
    devices: Type.Optional(Type.Array(DeviceRef, { minItems: 1, maxItems: 32, description: 'san pools' })),
    chunk: Type.Optional(
      Type.String({
        maxLength: 16,
        pattern: '^[0-9]{1,12}([KMGkmg]([iI]?[bB])?|[bB])?$',
        description: 'Chunk size: whole bytes or with K, M or G, e.g. 64K (default 64K)',
      }),
    ),
    force: Type.Optional(
      Type.Boolean({ description: 'san pools: overwrite devices that hold a filesystem, a partition table or another pool (refused otherwise)' }),
    ),
    hosts: Type.Optional(Type.Array(ResourceName, { minItems: 1, maxItems: 64, description: 'dir pools: the hosts that get a folder (default: every host)' })),
  },
  { additionalProperties: false },
);

export const PoolReplaceRequest = Type.Object(
  {
    member: Type.Union([Type.Integer({ format: 'int32', minimum: 0, maximum: 31, description: 'Member index' }), DeviceRef], {
      description: 'The member to replace: its index or its device',
    }),
    device: DeviceRef,
    maxMbPerSec: Type.Optional(Type.Integer({ format: 'int32', minimum: 1, maximum: 1000000 })),
    force: Type.Optional(
      Type.Boolean({ description: 'Overwrite a new device that holds a filesystem, a partition table or another pool (refused otherwise)' }),
    ),
  },
  { additionalProperties: false },
);

export const Volume = Type.Object(
  {
    name: ResourceName,
    pool: ResourceName,
    sizeBytes: ByteCount(),
    kind: Text(16, { description: 'volume, snapshot or clone' }),
    originName: Type.Optional(Text(63)),
    readOnly: Type.Boolean(),
    allocatedBytes: ByteCount(),
    usedBy: Type.Optional(Text(63, { description: 'The VM it is attached to' })),
    host: Type.Optional(Text(63, { description: 'dir pools: the host holding the qcow2 file' })),
    createdAt: Timestamp,
    encrypted: Type.Optional(
      Type.Boolean({ description: 'storage-node pools: its blocks are encrypted (XTS-AES-256) with a data key shared only with its snapshots and clones' }),
    ),
  },
  { $id: 'Volume' },
);

export const Size = Type.String({ pattern: SIZE_PATTERN, maxLength: 32, description: 'e.g. 20G, 512M', examples: ['1G'] });

export const VolumeCreateRequest = Type.Object(
  {
    name: ResourceName,
    size: Size,
    host: Type.Optional(ResourceName),
    encrypted: Type.Optional(Type.Boolean({ description: 'storage-node pools: encrypt its blocks with a data key of its own (default false)' })),
  },
  { additionalProperties: false },
);

export const PortForward = Type.Object(
  {
    id: ResourceId,
    protocol: Type.Union([Type.Literal('tcp'), Type.Literal('udp')]),
    hostPort: Port(),
    vm: ResourceName,
    vmPort: Port(),
    listenAddress: Type.Optional(Ipv4({ description: "Where clients connect: the gateway host's outside (underlay) address" })),
    host: Type.Optional(Text(63)),
  },
  { $id: 'PortForward' },
);

export const PortForwardRequest = Type.Object(
  {
    protocol: Type.Union([Type.Literal('tcp'), Type.Literal('udp')], { default: 'tcp' }),
    hostPort: Port(),
    vm: ResourceName,
    vmPort: Port(),
  },
  { additionalProperties: false },
);
