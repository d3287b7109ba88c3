/**
 * Every wire type of the REST API, in one place: the same schemas validate requests, type the
 * route handlers and produce the OpenAPI document.
 */
import { Type, type Static } from '@sinclair/typebox';
import { DEVICE_REF_MAX_LENGTH, DEVICE_REF_PATTERN, DEVICE_REF_RULE } from '../storage/pool/device-ref.ts';

/** Names of VMs, images, projects, hosts: DNS-label-like, so they work as guest hostnames. */
export const ResourceName = Type.String({
  pattern: '^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$',
  description: 'Lowercase letters, digits and inner hyphens, 1-63 characters',
  examples: ['web1'],
});

/** A dotted IPv4 address; the pattern refuses anything a command line could read as more. */
const IPV4_PATTERN = '^(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(\\.(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3}$';
export const Ipv4Address = Type.String({ pattern: IPV4_PATTERN, maxLength: 15, description: 'A dotted IPv4 address', examples: ['10.0.0.5'] });
/** The shape of an IPv4 address with a prefix length, e.g. 10.10.0.0/24: digits, dots and a
 * slash only, so nothing else can reach a command line; the network code checks the values and
 * says what is wrong with them (an octet over 255, a /33, host bits set). */
const CIDR_SHAPE = '^[0-9]{1,3}(\\.[0-9]{1,3}){3}/[0-9]{1,2}$';
/** A volume as POOL/VOLUME, both resource names. */
const NAME_PATTERN = '[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?';
export const VolumeRefString = Type.String({ pattern: `^${NAME_PATTERN}/${NAME_PATTERN}$`, maxLength: 127, description: 'POOL/VOLUME', examples: ['p1/data1'] });

export const ErrorBody = Type.Object(
  {
    code: Type.String({ description: 'Stable error code, e.g. VM_NOT_FOUND' }),
    message: Type.String({ description: 'What went wrong and what to change' }),
    details: Type.Optional(Type.Record(Type.String(), Type.Unknown())),
  },
  { $id: 'Error' },
);

export const ProjectQuery = Type.Object(
  { project: Type.Optional(ResourceName) },
  { additionalProperties: false },
);

export const Host = Type.Object(
  {
    id: Type.String(),
    name: Type.String(),
    status: Type.Union([Type.Literal('online'), Type.Literal('offline'), Type.Literal('maintenance')]),
    endpoint: Type.String(),
    accelerator: Type.String({ description: 'kvm or tcg, chosen by a boot probe' }),
    acceleratorReason: Type.String(),
    cpus: Type.Integer(),
    memoryMb: Type.Integer(),
    allocatedCpus: Type.Integer(),
    allocatedMemoryMb: Type.Integer(),
    vmCount: Type.Integer(),
    lastSeenAt: Type.String({ format: 'date-time' }),
    joinedAt: Type.String({ format: 'date-time' }),
    underlayIp: Type.Optional(Type.String({ description: 'Address on the underlay network (VXLAN endpoint)' })),
    qemuVersion: Type.Optional(Type.String({ description: 'QEMU on the host; a VM migrates only to the same or a newer QEMU' })),
  },
  { $id: 'Host' },
);

export const PublishedPort = Type.Object({
  protocol: Type.Union([Type.Literal('tcp'), Type.Literal('udp')], { default: 'tcp' }),
  // It becomes part of QEMU's `hostfwd=` option: only a plain address may pass.
  hostAddress: Type.String({ pattern: IPV4_PATTERN, maxLength: 15, default: '127.0.0.1', description: 'Host IPv4 address to listen on' }),
  hostPort: Type.Integer({ minimum: 1, maximum: 65535 }),
  guestPort: Type.Integer({ minimum: 1, maximum: 65535 }),
}, { additionalProperties: false });

export const VmCreateRequest = Type.Object(
  {
    name: ResourceName,
    image: ResourceName,
    cpus: Type.Integer({ minimum: 1, maximum: 64, default: 1, description: 'Virtual CPUs' }),
    memoryMb: Type.Integer({ minimum: 64, maximum: 1048576, default: 256, description: 'Guest memory in MiB' }),
    host: Type.Optional(ResourceName),
    project: Type.Optional(ResourceName),
    publish: Type.Optional(Type.Array(PublishedPort, { maxItems: 16, description: 'Host ports forwarded to guest ports (user-mode network)' })),
    networks: Type.Optional(
      Type.Array(
        Type.Object({ network: ResourceName, ip: Type.Optional(Type.String({ pattern: IPV4_PATTERN, maxLength: 15, description: 'Requested address; default: the lowest free one' })) }, { additionalProperties: false }),
        { maxItems: 8, description: 'NICs on virtual networks, in guest order (eth0, eth1, ...); without it the VM gets a user-mode NIC' },
      ),
    ),
    secgroups: Type.Optional(Type.Array(ResourceName, { maxItems: 8, description: 'Security groups of its network NICs; without any, ingress is open' })),
    disks: Type.Optional(Type.Array(VolumeRefString, { maxItems: 8, description: 'Volumes (POOL/VOLUME) attached as virtio disks vda, vdb, ... over NBD' })),
    waitReady: Type.Boolean({ default: true, description: 'The operation ends when the guest printed its readiness line' }),
    allowPostcopy: Type.Optional(Type.Boolean({ description: 'Live migration may use post-copy (default true); without it a migration that cannot converge throttles the guest instead' })),
  },
  { additionalProperties: false, $id: 'VmCreateRequest' },
);
export type VmCreateRequest = Static<typeof VmCreateRequest>;

export const VmState = Type.String({ description: 'pending, starting, running, paused, stopping, stopped, crashed, migrating, unknown' });

export const Vm = Type.Object(
  {
    id: Type.String(),
    name: Type.String(),
    project: Type.String(),
    host: Type.String(),
    image: Type.String(),
    cpus: Type.Integer(),
    memoryMb: Type.Integer(),
    state: VmState,
    desiredState: Type.String(),
    accelerator: Type.String(),
    ready: Type.Boolean({ description: 'The guest printed its readiness line in its current boot' }),
    pid: Type.Optional(Type.Integer()),
    startedAt: Type.Optional(Type.String({ format: 'date-time' })),
    readyAt: Type.Optional(Type.String({ format: 'date-time' })),
    uptimeSeconds: Type.Optional(Type.Integer()),
    guestIps: Type.Array(Type.String()),
    nics: Type.Array(Type.Object({ network: Type.String(), mac: Type.String(), ip: Type.String() })),
    disks: Type.Array(Type.Object({ device: Type.String({ description: 'Name in the guest when it boots from kernel+initrd' }), volume: Type.String() })),
    publish: Type.Array(PublishedPort),
    lastError: Type.Optional(Type.String()),
    crashLogTail: Type.Optional(Type.Array(Type.String())),
    allowPostcopy: Type.Boolean({ description: 'Live migration may use post-copy' }),
    createdAt: Type.String({ format: 'date-time' }),
  },
  { $id: 'Vm' },
);
export type Vm = Static<typeof Vm>;

export const VmRef = Type.Object({ vm: Type.String({ description: 'VM name (in the project) or id' }) });

export const VmStopRequest = Type.Object(
  {
    force: Type.Boolean({ default: false, description: 'Skip the ACPI shutdown: stop at once (stop) or hard reset (reboot)' }),
    timeoutSeconds: Type.Integer({ minimum: 1, maximum: 3600, default: 30, description: 'How long the guest may take to shut down before it is forced' }),
  },
  { additionalProperties: false },
);

export const VmLogQuery = Type.Object(
  { project: Type.Optional(ResourceName), lines: Type.Integer({ minimum: 1, maximum: 10000, default: 100 }) },
  { additionalProperties: false },
);

export const VmLog = Type.Object({ lines: Type.Array(Type.String()) });

export const Image = Type.Object(
  {
    id: Type.String(),
    name: Type.String(),
    kind: Type.Union([Type.Literal('kernel'), Type.Literal('disk')]),
    format: Type.String(),
    sizeBytes: Type.Integer(),
    builtin: Type.Boolean(),
    createdAt: Type.String({ format: 'date-time' }),
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
  Type.String({ pattern: importFileNamePattern, maxLength: 1024, description: `${description}; letters, digits and . _ + @ - /, no .. segments, at most 1024 characters`, examples: ['debian-12.qcow2'] });

export const ImageImportRequest = Type.Object(
  {
    name: ResourceName,
    path: Type.Optional(ImportFileName('A qcow2 or raw disk image in the import folder (<data>/import/): its name there, or its absolute path inside it')),
    kernelPath: Type.Optional(ImportFileName('A Linux x86 kernel (bzImage) in the import folder, with initrdPath: a kernel+initrd image')),
    initrdPath: Type.Optional(ImportFileName('An initrd (cpio, optionally gzip/xz/zstd/lz4/bzip2-compressed) in the import folder')),
  },
  { additionalProperties: false },
);

export const Operation = Type.Object(
  {
    id: Type.String(),
    kind: Type.String(),
    status: Type.Union([Type.Literal('running'), Type.Literal('succeeded'), Type.Literal('failed'), Type.Literal('cancelled')]),
    stage: Type.String(),
    progress: Type.Number({ minimum: 0, maximum: 1 }),
    target: Type.Object({ type: Type.String(), id: Type.String(), name: Type.String() }),
    error: Type.Optional(Type.Object({ code: Type.String(), message: Type.String() })),
    result: Type.Optional(Type.Unknown()),
    createdAt: Type.String({ format: 'date-time' }),
    updatedAt: Type.String({ format: 'date-time' }),
  },
  { $id: 'Operation' },
);
export type Operation = Static<typeof Operation>;

export const OperationEvent = Type.Object({
  seq: Type.Integer(),
  at: Type.String({ format: 'date-time' }),
  stage: Type.String(),
  message: Type.String(),
  progress: Type.Number(),
  data: Type.Optional(Type.Unknown()),
});
export type OperationEvent = Static<typeof OperationEvent>;

export const Accepted = Type.Object({ operation: Operation }, { $id: 'Accepted' });

export const Project = Type.Object({ id: Type.String(), name: Type.String(), createdAt: Type.String() });
export const ProjectCreateRequest = Type.Object({ name: ResourceName }, { additionalProperties: false });

export const HostJoinRequest = Type.Object(
  {
    name: ResourceName,
    joinToken: Type.String(),
    endpoint: Type.String({ description: 'Where the control plane reaches the agent: unix:/path or http://host:port' }),
    agentToken: Type.String({ minLength: 32, maxLength: 256, description: 'What the agent presents to the control plane from now on (only its hash is kept)' }),
    accelerator: Type.String(),
    acceleratorReason: Type.String(),
    cpus: Type.Integer({ minimum: 1 }),
    memoryMb: Type.Integer({ minimum: 64 }),
    underlayIp: Type.Optional(Type.String()),
    qemuVersion: Type.Optional(Type.String({ description: "The host's `qemu-system-x86_64 --version` line" })),
  },
  { additionalProperties: false },
);

export const VmStatusReport = Type.Object({
  id: Type.String(),
  name: Type.String(),
  state: Type.String(),
  pid: Type.Optional(Type.Integer()),
  startedAt: Type.Optional(Type.String()),
  readyAt: Type.Optional(Type.String()),
  guestIps: Type.Optional(Type.Array(Type.String())),
  lastError: Type.Optional(Type.String()),
  crashLogTail: Type.Optional(Type.Array(Type.String())),
});

export const HostReport = Type.Object(
  { vms: Type.Array(VmStatusReport), full: Type.Boolean({ description: 'The list is every VM of the host' }) },
  { additionalProperties: false },
);

export const Status = Type.Object({
  version: Type.String(),
  hosts: Type.Integer(),
  hostsOnline: Type.Integer(),
  vms: Type.Integer(),
  vmsRunning: Type.Integer(),
  dataDir: Type.String(),
});

export const Network = Type.Object(
  {
    id: Type.String(),
    name: Type.String(),
    project: Type.String(),
    subnet: Type.String(),
    gateway: Type.Optional(Type.String()),
    dhcp: Type.Boolean(),
    nat: Type.Boolean(),
    dhcpAddress: Type.Optional(Type.String()),
    vni: Type.Integer(),
    mtu: Type.Integer(),
    nicCount: Type.Integer(),
    hosts: Type.Array(Type.String(), { description: 'Hosts that carry the network (have a VM on it)' }),
    createdAt: Type.String({ format: 'date-time' }),
  },
  { $id: 'Network' },
);

export const NetworkCreateRequest = Type.Object(
  {
    name: ResourceName,
    subnet: Type.String({ pattern: CIDR_SHAPE, maxLength: 18, description: 'IPv4 subnet, /8 to /29', examples: ['10.10.0.0/24'] }),
    gateway: Type.Optional(Type.String({ pattern: IPV4_PATTERN, maxLength: 15, description: 'Gateway address given to guests (reserved in IPAM)' })),
    dhcp: Type.Boolean({ default: false, description: 'Serve DHCP (fixed leases from IPAM); otherwise guests get static settings' }),
    nat: Type.Boolean({ default: false, description: 'A NAT gateway at the gateway address: VMs reach the outside, port forwards reach VMs' }),
    vni: Type.Optional(Type.Integer({ minimum: 1, maximum: 16777215, description: 'VXLAN network identifier; default: the next free one from 1000' })),
    project: Type.Optional(ResourceName),
  },
  { additionalProperties: false },
);

export const NetworkProbeRequest = Type.Object(
  {
    command: Type.Array(Type.String({ minLength: 1, maxLength: 4096, pattern: '^[^\\u0000]*$' }), { minItems: 1, maxItems: 64, description: 'Command and arguments, run in a namespace attached to the network' }),
    host: Type.Optional(ResourceName),
    timeoutSeconds: Type.Integer({ minimum: 1, maximum: 600, default: 30 }),
  },
  { additionalProperties: false },
);

export const NetworkProbeResult = Type.Object({
  host: Type.String(),
  address: Type.String({ description: 'The address the probe used' }),
  exitCode: Type.Integer(),
  stdout: Type.String(),
  stderr: Type.String(),
});

export const SecgroupRule = Type.Object({
  id: Type.String(),
  direction: Type.Union([Type.Literal('ingress'), Type.Literal('egress')]),
  protocol: Type.String(),
  portMin: Type.Optional(Type.Integer()),
  portMax: Type.Optional(Type.Integer()),
  cidr: Type.Optional(Type.String()),
  remoteGroup: Type.Optional(Type.String()),
});

export const Secgroup = Type.Object(
  {
    id: Type.String(),
    name: Type.String(),
    project: Type.String(),
    description: Type.String(),
    rules: Type.Array(SecgroupRule),
    members: Type.Array(Type.String(), { description: 'VMs in the group' }),
    createdAt: Type.String({ format: 'date-time' }),
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
    portMin: Type.Optional(Type.Integer({ minimum: 1, maximum: 65535, description: 'First port (tcp/udp)' })),
    portMax: Type.Optional(Type.Integer({ minimum: 1, maximum: 65535, description: 'Last port (default: portMin)' })),
    cidr: Type.Optional(Type.String({ pattern: CIDR_SHAPE, maxLength: 18, description: 'Allowed sources (ingress) or destinations (egress); default 0.0.0.0/0' })),
    remoteGroup: Type.Optional(ResourceName),
  },
  { additionalProperties: false },
);

export const PoolMember = Type.Object({ index: Type.Integer(), path: Type.String(), state: Type.String(), readErrors: Type.Optional(Type.Integer()), writeErrors: Type.Optional(Type.Integer()), checksumErrors: Type.Optional(Type.Integer()) }, { additionalProperties: true });

export const Pool = Type.Object(
  {
    name: Type.String(),
    kind: Type.String({ description: 'san: volumes served by the storage node over NBD (device-based); dir: qcow2 files on hosts (host-based)' }),
    layout: Type.String(),
    state: Type.String({ description: 'online, degraded or faulted' }),
    readOnly: Type.Boolean(),
    readOnlyReason: Type.Optional(Type.String()),
    sizeBytes: Type.Integer(),
    allocatedBytes: Type.Integer(),
    freeBytes: Type.Integer(),
    provisionedBytes: Type.Integer(),
    overcommitRatio: Type.Number(),
    wasteBytes: Type.Integer(),
    chunkBytes: Type.Integer(),
    warnings: Type.Array(Type.String()),
    members: Type.Array(PoolMember),
    volumes: Type.Integer(),
  },
  { $id: 'Pool', additionalProperties: true },
);

/** A pool member as a client names it; the storage node checks it again (src/storage/pool/device-ref.ts). */
export const DeviceRef = Type.String({ minLength: 1, maxLength: DEVICE_REF_MAX_LENGTH, pattern: DEVICE_REF_PATTERN, description: `Regular file or block device on the storage node, or an NBD export: ${DEVICE_REF_RULE}` });

export const PoolCreateRequest = Type.Object(
  {
    name: ResourceName,
    kind: Type.Optional(Type.Union([Type.Literal('san'), Type.Literal('dir')], { description: 'san (default): devices in a RAID layout served by the storage node over NBD; dir: a folder of qcow2 files on each of `hosts`' })),
    layout: Type.Optional(Type.Union(['raid0', 'raid1', 'raid5', 'raid6', 'raid10'].map((l) => Type.Literal(l)), { description: 'san pools' })),
    devices: Type.Optional(Type.Array(DeviceRef, { minItems: 1, maxItems: 32, description: 'san pools' })),
    chunk: Type.Optional(Type.String({ maxLength: 16, pattern: '^[0-9]{1,12}([KMGkmg]([iI]?[bB])?|[bB])?$', description: 'Chunk size: whole bytes or with K, M or G, e.g. 64K (default 64K)' })),
    force: Type.Optional(Type.Boolean({ description: 'san pools: overwrite devices that hold a filesystem, a partition table or another pool (refused otherwise)' })),
    hosts: Type.Optional(Type.Array(ResourceName, { minItems: 1, maxItems: 64, description: 'dir pools: the hosts that get a folder (default: every host)' })),
  },
  { additionalProperties: false },
);

export const PoolReplaceRequest = Type.Object(
  {
    member: Type.Union([Type.Integer({ minimum: 0, maximum: 31 }), DeviceRef], { description: 'The member to replace: its index or its device' }),
    device: DeviceRef,
    maxMbPerSec: Type.Optional(Type.Integer({ minimum: 1 })),
    force: Type.Optional(Type.Boolean({ description: 'Overwrite a new device that holds a filesystem, a partition table or another pool (refused otherwise)' })),
  },
  { additionalProperties: false },
);

export const Volume = Type.Object(
  {
    name: Type.String(),
    pool: Type.String(),
    sizeBytes: Type.Integer(),
    kind: Type.String({ description: 'volume, snapshot or clone' }),
    originName: Type.Optional(Type.String()),
    readOnly: Type.Boolean(),
    allocatedBytes: Type.Integer(),
    usedBy: Type.Optional(Type.String({ description: 'The VM it is attached to' })),
    host: Type.Optional(Type.String({ description: 'dir pools: the host holding the qcow2 file' })),
    createdAt: Type.String(),
  },
  { $id: 'Volume' },
);

export const VolumeCreateRequest = Type.Object({ name: ResourceName, size: Type.String({ description: 'e.g. 20G, 512M' }), host: Type.Optional(ResourceName) }, { additionalProperties: false });

export const PortForward = Type.Object(
  {
    id: Type.String(),
    protocol: Type.Union([Type.Literal('tcp'), Type.Literal('udp')]),
    hostPort: Type.Integer(),
    vm: Type.String(),
    vmPort: Type.Integer(),
    listenAddress: Type.Optional(Type.String({ description: "Where clients connect: the gateway host's outside (underlay) address" })),
    host: Type.Optional(Type.String()),
  },
  { $id: 'PortForward' },
);

export const PortForwardRequest = Type.Object(
  {
    protocol: Type.Union([Type.Literal('tcp'), Type.Literal('udp')], { default: 'tcp' }),
    hostPort: Type.Integer({ minimum: 1, maximum: 65535 }),
    vm: ResourceName,
    vmPort: Type.Integer({ minimum: 1, maximum: 65535 }),
  },
  { additionalProperties: false },
);
