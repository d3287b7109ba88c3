/**
 * The contract between the control plane and a host agent, in one place that both sides import:
 * every route the agent serves with the schema of its path parameters, body and answer. The agent
 * registers its routes from this table and validates each body against it (src/host/agent-app.ts);
 * the control plane calls them through {@link AgentClient} (src/agent-api/agent-client.ts), never
 * with a path of its own making. Imports only the wire types of compute/ (the VM spec).
 */
import { type Static, type TSchema, Type } from '@sinclair/typebox';
import { CpuControls, DiskLimits, DiskSpec, NicBandwidthSpec, NicFirewallSpec, VmSpec } from '../compute/vm-spec.ts';
import { MemorySettings, type VmMemoryReport } from '../compute/memory-spec.ts';
import { VcpuSettings } from '../compute/cpu-topology.ts';

/** What an agent reports about one VM: the actual state, as opposed to the desired one. */
export type VmRunState = 'starting' | 'running' | 'paused' | 'stopping' | 'stopped' | 'crashed' | 'migrating' | 'incoming';

/** Digests of what a VM's QEMU really runs, taken at its launch (host/launch-measurement.ts). */
export const LaunchMeasurement = Type.Object({
  measuredAt: Type.String({ maxLength: 32 }),
  components: Type.Array(
    Type.Object({ component: Type.String({ maxLength: 128 }), path: Type.String({ maxLength: 4096 }), sha256: Type.String({ pattern: '^[0-9a-f]{64}$' }) }),
    { maxItems: 64 },
  ),
});
export type LaunchMeasurement = Static<typeof LaunchMeasurement>;

export const VmStatus = Type.Object({
  id: Type.String({ maxLength: 63 }),
  name: Type.String({ maxLength: 63 }),
  state: Type.String({ maxLength: 16 }),
  pid: Type.Optional(Type.Integer()),
  /** When QEMU last started (ISO time). */
  startedAt: Type.Optional(Type.String({ maxLength: 32 })),
  /** When the guest printed its readiness line in the current boot. */
  readyAt: Type.Optional(Type.String({ maxLength: 32 })),
  /** IPv4 addresses the guest reported in its readiness line. */
  guestIps: Type.Optional(Type.Array(Type.String({ maxLength: 15 }), { maxItems: 64 })),
  /** Why the VM stopped or crashed, with the end of its console log for a crash. */
  lastError: Type.Optional(Type.String({ maxLength: 65536 })),
  crashLogTail: Type.Optional(Type.Array(Type.String({ maxLength: 4096 }), { maxItems: 100 })),
  /** The measurements of its QEMU's current launch. */
  launch: Type.Optional(LaunchMeasurement),
});
export type VmStatus = Omit<Static<typeof VmStatus>, 'state'> & { state: VmRunState };

/** What a host needs to plumb one network. */
export const HostNetworkSpec = Type.Object(
  {
    id: Type.String({ maxLength: 63 }),
    vni: Type.Integer({ minimum: 1, maximum: 16777215 }),
    mtu: Type.Integer({ minimum: 576, maximum: 9000 }),
    /** The network's conntrack zone on every host: overlapping subnets never share connection state. */
    ctZone: Type.Integer({ minimum: 1, maximum: 65535 }),
    /** Underlay addresses of the other hosts carrying the network: VXLAN head-end replication. */
    peers: Type.Array(Type.String({ format: 'ipv4', maxLength: 15 }), { maxItems: 4096 }),
    /** Present on the one host that serves the network's DHCP. */
    dhcp: Type.Optional(
      Type.Object({
        subnet: Type.String({ maxLength: 18 }),
        serverIp: Type.String({ format: 'ipv4', maxLength: 15 }),
        gateway: Type.Optional(Type.String({ format: 'ipv4', maxLength: 15 })),
        hosts: Type.Array(
          Type.Object({
            mac: Type.String({ pattern: '^([0-9a-f]{2}:){5}[0-9a-f]{2}$' }),
            ip: Type.String({ format: 'ipv4', maxLength: 15 }),
            name: Type.String({ pattern: '^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$' }),
          }),
          { maxItems: 65536 },
        ),
      }),
    ),
    /** Present on the one host that runs the network's NAT gateway, with the port forwards into it. */
    nat: Type.Optional(
      Type.Object({
        gatewayCidr: Type.String({ maxLength: 18 }),
        subnet: Type.String({ maxLength: 18 }),
        forwards: Type.Array(
          Type.Object({
            protocol: Type.Union([Type.Literal('tcp'), Type.Literal('udp')]),
            hostPort: Type.Integer({ minimum: 1, maximum: 65535 }),
            vmIp: Type.String({ format: 'ipv4', maxLength: 15 }),
            vmPort: Type.Integer({ minimum: 1, maximum: 65535 }),
          }),
          { maxItems: 65536 },
        ),
      }),
    ),
  },
  { additionalProperties: false },
);
export type HostNetworkSpec = Static<typeof HostNetworkSpec>;

export interface DirPoolInfo {
  path: string;
  sizeBytes: number;
  freeBytes: number;
}

export interface DirVolumeInfo {
  path: string;
  sizeBytes: number;
  /** What the qcow2 file takes on disk. */
  allocatedBytes: number;
}

/** What `query-migrate` tells about RAM, the fields Nubis reads (QEMU's qapi/migration.json MigrationStats). */
export interface QemuRamStats {
  transferred?: number;
  remaining?: number;
  total?: number;
  normal?: number;
  duplicate?: number;
  'dirty-pages-rate'?: number;
  'dirty-sync-count'?: number;
  'page-size'?: number;
  mbps?: number;
  'postcopy-requests'?: number;
}

/** QEMU's `query-migrate` (qapi/migration.json MigrationInfo), as the agent passes it on. */
export interface QemuMigrationStatus {
  status?: string;
  ram?: QemuRamStats;
  'total-time'?: number;
  downtime?: number;
  'setup-time'?: number;
  'cpu-throttle-percentage'?: number;
  'error-desc'?: string;
}

/** QEMU's times of the VM's last STOP and RESUME events (ms since the epoch). */
export interface PauseTimes {
  stoppedAtMs?: number;
  resumedAtMs?: number;
}

export interface DiskMirrorJob {
  disk: string;
  lengthBytes: number;
  copiedBytes: number;
  ready: boolean;
  status: string;
}

const Uri = Type.String({ maxLength: 64, pattern: '^tcp:[0-9.]{7,15}:[0-9]{1,5}$', description: 'tcp:ADDRESS:PORT on the underlay' });
const Capabilities = Type.Record(Type.String({ pattern: '^[a-z-]{1,32}$' }), Type.Boolean());
const Ms = (maximum: number) => Type.Integer({ minimum: 0, maximum });
const SizeBytes = Type.Integer({ minimum: 0, maximum: Number.MAX_SAFE_INTEGER });
const Name = Type.String({ pattern: '^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$' });
const VmParams = Type.Object({ id: Type.String({ pattern: '^[a-z0-9][a-z0-9-]{0,62}$' }) });
const PoolParams = Type.Object({ pool: Name });
const VolumeParams = Type.Object({ pool: Name, volume: Name });
const DiskParams = Type.Object({ id: VmParams.properties.id, disk: Type.String({ pattern: '^[a-z][a-z0-9-]{0,31}$' }) });
const NicParams = Type.Object({ id: VmParams.properties.id, nic: Type.String({ pattern: '^[a-z][a-z0-9-]{0,31}$' }) });
const NetworkParams = Type.Object({ id: Type.String({ pattern: '^[a-z0-9][a-z0-9-]{0,62}$' }) });
const NoParams = Type.Object({});
/** A VM snapshot's id, which names it in the VM's qcow2 files and its memory file (host/vm-snapshot-control.ts). */
const SnapshotParams = Type.Object({ id: VmParams.properties.id, snapshot: Type.String({ pattern: '^snap-[0-9a-f]{12}$' }) });
const SnapshotDiskIds = Type.Array(Type.String({ pattern: '^[a-z][a-z0-9-]{0,31}$' }), { maxItems: 64 });
/** What a snapshot took: the disks it covers and the bytes of its saved memory. */
export const TakenSnapshot = Type.Object({ disks: SnapshotDiskIds, memoryBytes: Type.Optional(Type.Integer({ minimum: 0 })) });
export type TakenSnapshot = Static<typeof TakenSnapshot>;

const BackupParams = Type.Object({ id: VmParams.properties.id, backup: Type.String({ pattern: '^bak-[0-9a-f]{12}$' }) });
/** A tenant's 32-byte backup key in base64, handed to the agent for one call and never kept on the host. */
const BackupKey = Type.String({ pattern: '^[A-Za-z0-9+/]{43}=$' });
const RestoreParams = Type.Object({ backup: BackupParams.properties.backup, disk: Type.String({ pattern: '^[a-z][a-z0-9-]{0,31}$' }) });
/** What a backup cost per disk (host/vm-backup.ts `BackupDiskReport`). */
export const TakenBackup = Type.Object({
  disks: Type.Array(
    Type.Object({
      id: Type.String({ maxLength: 32 }),
      source: Type.String({ maxLength: 4096 }),
      sizeBytes: Type.Integer({ minimum: 0 }),
      chunks: Type.Integer({ minimum: 0 }),
      zeroChunks: Type.Integer({ minimum: 0 }),
      newChunks: Type.Integer({ minimum: 0 }),
      sentBytes: Type.Integer({ minimum: 0 }),
      /** Bytes read of the disk: all of it, or only the chunks changed since backup `changedSince` (host/backup-views.ts). */
      readBytes: Type.Integer({ minimum: 0 }),
      changedSince: Type.Optional(Type.String({ pattern: '^bak-[0-9a-f]{12}$' })),
    }),
    { maxItems: 64 },
  ),
  storedBytes: Type.Integer({ minimum: 0 }),
  /** Files (and folders) of the disks' filesystems in the backup's encrypted catalog. */
  catalogFiles: Type.Integer({ minimum: 0 }),
  /** What the catalog left out, and why (a disk without a filesystem it reads, a damaged one). */
  catalogNotes: Type.Optional(Type.Array(Type.String({ maxLength: 4096 }), { maxItems: 16 })),
});
export type TakenBackup = Static<typeof TakenBackup>;

export const StopRequest = Type.Object(
  { force: Type.Optional(Type.Boolean()), timeoutSeconds: Type.Optional(Type.Integer({ minimum: 1, maximum: 3600 })) },
  { additionalProperties: false },
);
const NbdTarget = Type.Object({ host: Type.String({ format: 'ipv4' }), port: Type.Integer({ minimum: 1, maximum: 65535 }) }, { additionalProperties: false });
export const MirrorRequest = Type.Object(
  { diskIds: Type.Array(Type.String({ pattern: '^[a-z][a-z0-9-]{0,31}$' }), { maxItems: 17 }), target: NbdTarget },
  { additionalProperties: false },
);
/**
 * One end's credentials for a migration over TLS (compute/qemu/migration-tls.ts), issued for this
 * migration alone: PEM text, and the peer it accepts (a certificate's DN, or an address).
 */
const Pem = Type.String({ minLength: 1, maxLength: 16_384, pattern: '^-----BEGIN [A-Z ]+-----\\n[A-Za-z0-9+/=\\n]+-----END [A-Z ]+-----\\n?$' });
export const MigrationTls = Type.Object(
  {
    endpoint: Type.Union([Type.Literal('server'), Type.Literal('client')]),
    caPem: Pem,
    certPem: Pem,
    keyPem: Pem,
    peer: Type.String({ minLength: 1, maxLength: 253, pattern: '^(CN=[a-z0-9.-]+|[0-9.]+)$' }),
  },
  { additionalProperties: false },
);
export const IncomingRequest = Type.Object(
  {
    spec: VmSpec,
    tls: Type.Optional(MigrationTls),
    listenUri: Uri,
    capabilities: Capabilities,
    carried: Type.Object({
      guestIps: Type.Optional(Type.Array(Type.String({ maxLength: 15 }), { maxItems: 64 })),
      startedAt: Type.Optional(Type.String({ maxLength: 32 })),
    }),
    mirror: Type.Optional(
      Type.Object({
        newFiles: Type.Array(Type.Object({ path: Type.String({ minLength: 1, maxLength: 4096 }), sizeBytes: SizeBytes }), { maxItems: 16 }),
        listen: NbdTarget,
        diskIds: MirrorRequest.properties.diskIds,
      }),
    ),
  },
  { additionalProperties: false },
);
export const MigrateRequest = Type.Object(
  {
    uri: Uri,
    capabilities: Capabilities,
    downtimeLimitMs: Ms(600_000),
    maxBandwidthBytesPerSec: Type.Optional(SizeBytes),
    mirroredDisks: Type.Optional(MirrorRequest.properties.diskIds),
    tls: Type.Optional(MigrationTls),
  },
  { additionalProperties: false },
);
export const MigrationParameters = Type.Object(
  { downtimeLimitMs: Type.Optional(Ms(600_000)), maxBandwidthBytesPerSec: Type.Optional(SizeBytes) },
  { additionalProperties: false },
);
export const ProbeRequest = Type.Object(
  {
    address: Type.String({ maxLength: 18 }),
    gateway: Type.Optional(Type.String({ format: 'ipv4' })),
    command: Type.Array(Type.String({ minLength: 1, maxLength: 4096 }), { minItems: 1, maxItems: 64 }),
    timeoutMs: Ms(3_600_000),
  },
  { additionalProperties: false },
);
export const FirewallUpdate = Type.Array(Type.Composite([NicFirewallSpec, Type.Object({ nicId: Type.String({ pattern: '^[a-z][a-z0-9-]{0,31}$' }) })]), {
  maxItems: 16,
});

/** One route: how it is called and the schemas its parts are validated against. */
export interface AgentRoute {
  method: 'GET' | 'PUT' | 'POST' | 'DELETE';
  url: string;
  params: TSchema;
  body?: TSchema;
}

const route = <R extends AgentRoute>(r: R): R => r;

/** Every route of the agent API (the console is a WebSocket beside these). */
export const AGENT_ROUTES = {
  info: route({ method: 'GET', url: '/agent/info', params: NoParams }),
  listVms: route({ method: 'GET', url: '/agent/vms', params: NoParams }),
  createVm: route({ method: 'PUT', url: '/agent/vms/:id', params: VmParams, body: VmSpec }),
  vmStatus: route({ method: 'GET', url: '/agent/vms/:id', params: VmParams }),
  startVm: route({ method: 'POST', url: '/agent/vms/:id/start', params: VmParams }),
  stopVm: route({ method: 'POST', url: '/agent/vms/:id/stop', params: VmParams, body: StopRequest }),
  rebootVm: route({ method: 'POST', url: '/agent/vms/:id/reboot', params: VmParams, body: StopRequest }),
  pauseVm: route({ method: 'POST', url: '/agent/vms/:id/pause', params: VmParams }),
  resumeVm: route({ method: 'POST', url: '/agent/vms/:id/resume', params: VmParams }),
  waitReady: route({
    method: 'POST',
    url: '/agent/vms/:id/wait-ready',
    params: VmParams,
    body: Type.Object({ timeoutMs: Ms(3_600_000) }, { additionalProperties: false }),
  }),
  deleteVm: route({ method: 'DELETE', url: '/agent/vms/:id', params: VmParams }),
  consoleLog: route({ method: 'GET', url: '/agent/vms/:id/log', params: VmParams }),
  attachDisk: route({ method: 'POST', url: '/agent/vms/:id/disks', params: VmParams, body: DiskSpec }),
  detachDisk: route({ method: 'DELETE', url: '/agent/vms/:id/disks/:disk', params: DiskParams }),
  takeSnapshot: route({
    method: 'PUT',
    url: '/agent/vms/:id/snapshots/:snapshot',
    params: SnapshotParams,
    body: Type.Object({ withMemory: Type.Boolean() }, { additionalProperties: false }),
  }),
  rollbackSnapshot: route({
    method: 'POST',
    url: '/agent/vms/:id/snapshots/:snapshot/rollback',
    params: SnapshotParams,
    body: Type.Object({ disks: SnapshotDiskIds, withMemory: Type.Boolean() }, { additionalProperties: false }),
  }),
  deleteSnapshot: route({ method: 'DELETE', url: '/agent/vms/:id/snapshots/:snapshot', params: SnapshotParams }),
  sealTemplate: route({ method: 'POST', url: '/agent/vms/:id/template', params: VmParams }),
  takeBackup: route({
    method: 'PUT',
    url: '/agent/vms/:id/backups/:backup',
    params: BackupParams,
    body: Type.Object(
      { key: BackupKey, vm: Type.Record(Type.String({ maxLength: 64 }), Type.Unknown(), { maxProperties: 64 }) },
      { additionalProperties: false },
    ),
  }),
  pullRestoredDisks: route({ method: 'POST', url: '/agent/vms/:id/restored-disks/pull', params: VmParams }),
  setFirewall: route({ method: 'PUT', url: '/agent/vms/:id/firewall', params: VmParams, body: FirewallUpdate }),
  setCpuControls: route({ method: 'PUT', url: '/agent/vms/:id/cpu-controls', params: VmParams, body: CpuControls }),
  setDiskLimits: route({ method: 'PUT', url: '/agent/vms/:id/disks/:disk/limits', params: DiskParams, body: DiskLimits }),
  setNicBandwidth: route({ method: 'PUT', url: '/agent/vms/:id/nics/:nic/bandwidth', params: NicParams, body: NicBandwidthSpec }),
  setMemory: route({ method: 'PUT', url: '/agent/vms/:id/memory', params: VmParams, body: MemorySettings }),
  setCpus: route({ method: 'PUT', url: '/agent/vms/:id/cpus', params: VmParams, body: VcpuSettings }),
  memoryReport: route({ method: 'GET', url: '/agent/vms/:id/memory', params: VmParams }),
  prepareIncoming: route({ method: 'PUT', url: '/agent/vms/:id/incoming', params: VmParams, body: IncomingRequest }),
  activateIncoming: route({ method: 'POST', url: '/agent/vms/:id/incoming/activate', params: VmParams }),
  recoverIncoming: route({
    method: 'POST',
    url: '/agent/vms/:id/incoming/recover',
    params: VmParams,
    body: Type.Object({ uri: Uri }, { additionalProperties: false }),
  }),
  startMirrors: route({ method: 'POST', url: '/agent/vms/:id/mirror', params: VmParams, body: MirrorRequest }),
  mirrors: route({ method: 'GET', url: '/agent/vms/:id/mirror', params: VmParams }),
  abortMirrors: route({ method: 'DELETE', url: '/agent/vms/:id/mirror', params: VmParams }),
  migrate: route({ method: 'POST', url: '/agent/vms/:id/migrate', params: VmParams, body: MigrateRequest }),
  migrationStatus: route({ method: 'GET', url: '/agent/vms/:id/migration', params: VmParams }),
  pauseTimes: route({ method: 'GET', url: '/agent/vms/:id/pauses', params: VmParams }),
  startPostcopy: route({ method: 'POST', url: '/agent/vms/:id/migration/postcopy', params: VmParams }),
  cancelMigration: route({ method: 'POST', url: '/agent/vms/:id/migration/cancel', params: VmParams }),
  sampleDirtyRate: route({
    method: 'POST',
    url: '/agent/vms/:id/migration/dirty-rate',
    params: VmParams,
    body: Type.Object({ seconds: Type.Integer({ minimum: 1, maximum: 60 }) }, { additionalProperties: false }),
  }),
  setMigrationParameters: route({ method: 'PUT', url: '/agent/vms/:id/migration/parameters', params: VmParams, body: MigrationParameters }),
  pauseMigration: route({ method: 'POST', url: '/agent/vms/:id/migration/pause', params: VmParams }),
  resumeMigration: route({
    method: 'POST',
    url: '/agent/vms/:id/migration/resume',
    params: VmParams,
    body: Type.Object({ uri: Uri }, { additionalProperties: false }),
  }),
  ensureDirPool: route({ method: 'PUT', url: '/agent/dir-pools/:pool', params: PoolParams }),
  dirPool: route({ method: 'GET', url: '/agent/dir-pools/:pool', params: PoolParams }),
  removeDirPool: route({ method: 'DELETE', url: '/agent/dir-pools/:pool', params: PoolParams }),
  createDirVolume: route({
    method: 'PUT',
    url: '/agent/dir-pools/:pool/volumes/:volume',
    params: VolumeParams,
    body: Type.Object({ sizeBytes: SizeBytes }, { additionalProperties: false }),
  }),
  dirVolume: route({ method: 'GET', url: '/agent/dir-pools/:pool/volumes/:volume', params: VolumeParams }),
  copyDirVolume: route({
    method: 'PUT',
    url: '/agent/dir-pools/:pool/volumes/:volume/copy',
    params: VolumeParams,
    body: Type.Object({ from: Name, linked: Type.Boolean() }, { additionalProperties: false }),
  }),
  deleteDirVolume: route({ method: 'DELETE', url: '/agent/dir-pools/:pool/volumes/:volume', params: VolumeParams }),
  restoreBootDisk: route({
    method: 'PUT',
    url: '/agent/restores/:backup/:disk',
    params: RestoreParams,
    body: Type.Object({ key: BackupKey }, { additionalProperties: false }),
  }),
  removeRestoredDisk: route({ method: 'DELETE', url: '/agent/restores/:backup/:disk', params: RestoreParams }),
  restoreDirVolume: route({
    method: 'PUT',
    url: '/agent/dir-pools/:pool/volumes/:volume/restore',
    params: VolumeParams,
    body: Type.Object(
      {
        backup: BackupParams.properties.backup,
        disk: Type.String({ pattern: '^[a-z][a-z0-9-]{0,31}$' }),
        key: BackupKey,
        /** Serve the backup as the volume's backing file at once, to be pulled while its VM runs (host/live-restore.ts). */
        live: Type.Optional(Type.Boolean()),
      },
      { additionalProperties: false },
    ),
  }),
  resizeDirVolume: route({
    method: 'POST',
    url: '/agent/dir-pools/:pool/volumes/:volume/resize',
    params: VolumeParams,
    body: Type.Object({ sizeBytes: SizeBytes }, { additionalProperties: false }),
  }),
  applyNetwork: route({ method: 'PUT', url: '/agent/networks/:id', params: NetworkParams, body: HostNetworkSpec }),
  removeNetwork: route({ method: 'DELETE', url: '/agent/networks/:id', params: NetworkParams }),
  probe: route({ method: 'POST', url: '/agent/networks/:id/probe', params: NetworkParams, body: ProbeRequest }),
  shutdown: route({
    method: 'POST',
    url: '/agent/shutdown',
    params: NoParams,
    body: Type.Object({ stopVms: Type.Optional(Type.Boolean()) }, { additionalProperties: false }),
  }),
} as const;

export type AgentRouteName = keyof typeof AGENT_ROUTES;

/**
 * The agent's WebSocket routes, beside the JSON ones: byte streams to a VM's serial console and
 * to its VNC display. Binary frames carry the bytes both ways; the agent closes with 4000 plus
 * the HTTP status of a refusal (4404 no such VM, 4409 console busy), with its reason.
 */
export const AGENT_STREAMS = {
  console: { url: '/agent/vms/:id/console', params: VmParams },
  vnc: { url: '/agent/vms/:id/vnc', params: VmParams },
} as const;

export type AgentStreamKind = keyof typeof AGENT_STREAMS;

/** The header that carries a VNC stream's one-time password: never the URL, which logs keep. */
export const VNC_PASSWORD_HEADER = 'x-nubis-vnc-password';

/** A one-time VNC password: 8 letters and digits (VNC authentication uses at most 8 characters). */
export const VNC_PASSWORD_FORMAT = /^[A-Za-z0-9]{8}$/;

/** One open byte stream to a VM through its agent (see {@link AGENT_STREAMS}). */
export interface AgentStream {
  send(data: Buffer): void;
  close(): void;
  /**
   * Registers what happens next, right after the stream is made (nothing is missed before):
   * `open` once connected, `data` for each frame, `end` once with the close code and reason
   * (1011 when the agent could not be reached).
   */
  listen(handlers: { open(): void; data(data: Buffer): void; end(code: number, reason: string): void }): void;
}

/** Options of one call: a deadline and the signal that cancels it. */
export interface CallOptions {
  timeoutMs?: number;
  signal?: AbortSignal;
}

/** The agent API as the control plane sees it: one method per route. */
export interface AgentClient {
  info(): Promise<{ name: string; accelerator: string; acceleratorReason: string; vms: VmStatus[] }>;
  listVms(): Promise<VmStatus[]>;
  createVm(spec: VmSpec, options?: CallOptions): Promise<VmStatus>;
  vmStatus(id: string, options?: CallOptions): Promise<VmStatus>;
  startVm(id: string, options?: CallOptions): Promise<VmStatus>;
  stopVm(id: string, request: Static<typeof StopRequest>, options?: CallOptions): Promise<VmStatus>;
  rebootVm(id: string, request: Static<typeof StopRequest>, options?: CallOptions): Promise<VmStatus>;
  pauseVm(id: string, options?: CallOptions): Promise<VmStatus>;
  resumeVm(id: string, options?: CallOptions): Promise<VmStatus>;
  waitReady(id: string, timeoutMs: number, options?: CallOptions): Promise<VmStatus>;
  deleteVm(id: string, options?: CallOptions): Promise<void>;
  consoleLog(id: string, lines: number): Promise<string[]>;
  /** Opens a byte stream to the VM's serial console or VNC display; `vncPassword` is the display's one-time password. */
  openStream(kind: AgentStreamKind, id: string, options?: { vncPassword?: string }): AgentStream;
  attachDisk(id: string, disk: DiskSpec, options?: CallOptions): Promise<VmStatus>;
  detachDisk(id: string, diskId: string, options?: CallOptions): Promise<VmStatus>;
  /** Takes a snapshot of the VM's disks (and with `withMemory` its running state), all of one instant. */
  takeSnapshot(id: string, snapshotId: string, withMemory: boolean, options?: CallOptions): Promise<TakenSnapshot>;
  /** Rolls the VM back to a snapshot covering `disks`; a memory snapshot leaves it running from that point. */
  rollbackSnapshot(id: string, snapshotId: string, snapshot: { disks: string[]; withMemory: boolean }, options?: CallOptions): Promise<VmStatus>;
  deleteSnapshot(id: string, snapshotId: string, options?: CallOptions): Promise<void>;
  /** Makes the stopped VM's disk files read-only and readable by its clones' QEMUs (vm template). */
  sealTemplate(id: string, options?: CallOptions): Promise<void>;
  /** Backs the VM's disks up into the backup store, sealed with `key` (base64); `vm` is sealed in its manifest. */
  takeBackup(id: string, backupId: string, request: { key: string; vm: Record<string, unknown> }, options?: CallOptions): Promise<TakenBackup>;
  /** Copies into the running VM's disks restored live what they still read from their backup, then ends those reads. */
  pullRestoredDisks(id: string, options?: CallOptions): Promise<{ disks: Array<{ disk: string; fetchedBytes: number }> }>;
  setFirewall(id: string, firewalls: Static<typeof FirewallUpdate>): Promise<void>;
  /** Sets the VM's CPU controls (all of them: one left out goes back to the host's default), live when it runs. */
  setCpuControls(id: string, controls: CpuControls, options?: CallOptions): Promise<VmStatus>;
  /** Sets one disk's IO limits (all of them: empty lifts every one), live when the VM runs. */
  setDiskLimits(id: string, diskId: string, limits: DiskLimits, options?: CallOptions): Promise<VmStatus>;
  /** Sets one NIC's bandwidth limits (all of them: empty lifts both), live when the VM runs. */
  setNicBandwidth(id: string, nicId: string, bandwidth: NicBandwidthSpec, options?: CallOptions): Promise<VmStatus>;
  /** Sets the VM's current memory and reclaim (all of it: a target left out is the whole maximum), live through its balloon when it runs. */
  setMemory(id: string, settings: MemorySettings, options?: CallOptions): Promise<VmStatus>;
  /** Sets the vCPUs present: hot-added while it runs (fewer refused then), at the next start when stopped. */
  setCpus(id: string, settings: VcpuSettings, options?: CallOptions): Promise<VmStatus>;
  /** The VM's memory as its guest and host see it; undefined while its QEMU does not run. */
  memoryReport(id: string): Promise<VmMemoryReport | undefined>;
  prepareIncoming(id: string, request: Static<typeof IncomingRequest>, options?: CallOptions): Promise<VmStatus>;
  activateIncoming(id: string, options?: CallOptions): Promise<VmStatus>;
  recoverIncoming(id: string, uri: string, options?: CallOptions): Promise<void>;
  startMirrors(id: string, request: Static<typeof MirrorRequest>, options?: CallOptions): Promise<void>;
  mirrors(id: string, options?: CallOptions): Promise<DiskMirrorJob[]>;
  abortMirrors(id: string): Promise<void>;
  migrate(id: string, request: Static<typeof MigrateRequest>, options?: CallOptions): Promise<VmStatus>;
  migrationStatus(id: string, options?: CallOptions): Promise<QemuMigrationStatus>;
  pauseTimes(id: string, options?: CallOptions): Promise<PauseTimes>;
  startPostcopy(id: string, options?: CallOptions): Promise<void>;
  cancelMigration(id: string): Promise<void>;
  sampleDirtyRate(id: string, seconds: number, options?: CallOptions): Promise<number>;
  setMigrationParameters(id: string, parameters: Static<typeof MigrationParameters>, options?: CallOptions): Promise<void>;
  pauseMigration(id: string, options?: CallOptions): Promise<void>;
  resumeMigration(id: string, uri: string, options?: CallOptions): Promise<void>;
  ensureDirPool(pool: string): Promise<DirPoolInfo>;
  dirPool(pool: string, options?: CallOptions): Promise<DirPoolInfo>;
  removeDirPool(pool: string): Promise<void>;
  createDirVolume(pool: string, volume: string, sizeBytes: number): Promise<DirVolumeInfo>;
  dirVolume(pool: string, volume: string, options?: CallOptions): Promise<DirVolumeInfo>;
  /** A new volume of the pool made of `from`: a full copy, or `linked` copy-on-write over it. */
  copyDirVolume(pool: string, volume: string, from: string, linked: boolean): Promise<DirVolumeInfo>;
  deleteDirVolume(pool: string, volume: string): Promise<void>;
  /** Writes the root disk `disk` of a backup into a file of the host's own (a restored VM's root disk is then made of it); answers its path. */
  restoreBootDisk(backup: string, disk: string, key: string, options?: CallOptions): Promise<{ path: string }>;
  /** Removes the file restoreBootDisk wrote (once the VM's root disk is made of it). */
  removeRestoredDisk(backup: string, disk: string): Promise<void>;
  /** New volume `volume` made of disk `disk` of a backup in the backup store. */
  restoreDirVolume(
    pool: string,
    volume: string,
    request: { backup: string; disk: string; key: string; live?: boolean },
    options?: CallOptions,
  ): Promise<DirVolumeInfo>;
  resizeDirVolume(pool: string, volume: string, sizeBytes: number): Promise<DirVolumeInfo>;
  applyNetwork(spec: HostNetworkSpec, options?: CallOptions): Promise<{ bridge: string; vxlan: string }>;
  removeNetwork(networkId: string, options?: CallOptions): Promise<void>;
  probe(networkId: string, request: Static<typeof ProbeRequest>, options?: CallOptions): Promise<{ exitCode: number; stdout: string; stderr: string }>;
  shutdown(stopVms: boolean): Promise<void>;
}
