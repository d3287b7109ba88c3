/**
 * The control plane's tables, as Kysely types. Times are ISO strings; JSON columns hold text.
 * The SQL that creates them is in migrations.ts; both change together.
 *
 * Size: every table of the state in one place, as one query's types read them together.
 */
import type { Generated } from 'kysely';

/** See VmBalancePolicy in src/wire/schemas.ts. */
type VmBalancePolicy = 'auto' | 'manual' | 'never';

export interface ProjectsTable {
  id: string;
  name: string;
  created_at: string;
  /** JSON object of host/pool labels that the project's VMs and volumes require (data residency). */
  requirements: string;
  /** 1: its VMs start only from launch measurements that match the expected ones (control/trusted-launch.ts). */
  require_trusted_launch: Generated<number>;
}

/** An expected launch digest: of an image's files, the hosts' software, or one VM's command line. */
export interface LaunchReferencesTable {
  /** `image:<id>`, `host-software` or `vm:<id>`. */
  scope: string;
  component: string;
  sha256: string;
  path: string;
  recorded_at: string;
  recorded_from_vm: string;
}

export interface TokensTable {
  id: string;
  name: string;
  /** sha256 of the secret: the secret itself is shown once and never stored. */
  secret_sha256: string;
  /** Kept for older releases, where `admin` was the one token; access comes from `user_id` now. */
  role: string;
  created_at: string;
  user_id: string | null;
  /** `api`: a named token a user made; `session`: one that `login` handed out. */
  kind: 'api' | 'session';
  /** A token limited to one project: it acts nowhere else. */
  project_id: string | null;
  /** A token limited to a role's permissions (intersected with its user's). */
  role_id: string | null;
  /** JSON array: the OpenID Connect groups of a session from an ID token. */
  groups: string | null;
  expires_at: string | null;
  revoked_at: string | null;
  last_used_at: string | null;
}

export interface UsersTable {
  id: string;
  name: string;
  /** scrypt (see access/passwords.ts), or null for a user who signs in through OpenID Connect. */
  password_hash: string | null;
  totp_secret: string | null;
  totp_enabled: number;
  /** The TOTP time step last accepted: a code is good once (RFC 6238 5.2). */
  totp_last_step: number | null;
  /** `issuer subject` of an OpenID Connect user: the name alone may be reassigned at the provider. */
  oidc_subject: string | null;
  source: 'local' | 'oidc';
  created_at: string;
}

export interface RolesTable {
  id: string;
  name: string;
  description: string;
  /** JSON array of permission names (access/permissions.ts); `*` is every permission. */
  permissions: string;
  builtin: number;
  created_at: string;
}

/** A role held by a user (or by the members of an OpenID Connect group) on a project, or on the platform when project_id is null. */
export interface RoleBindingsTable {
  id: string;
  subject_type: 'user' | 'group';
  /** A user id, or a group name. */
  subject: string;
  role_id: string;
  project_id: string | null;
  created_at: string;
}

/** A project's limits; null is no limit. */
export interface ProjectQuotasTable {
  project_id: string;
  cpus: number | null;
  memory_mb: number | null;
  vms: number | null;
  volume_bytes: number | null;
  networks: number | null;
  port_forwards: number | null;
}

/** Which project a storage volume belongs to (volumes live in platform pools). */
export interface VolumeOwnersTable {
  pool: string;
  volume: string;
  project_id: string;
  size_bytes: number;
}

/** A leaf of the audit log's Merkle tree: `data` is the canonical entry JSON (it holds `seq`). */
export interface AuditEntriesTable {
  seq: number;
  data: string;
  /** hex SHA-256(0x00 || data), RFC 9162 2.1.1. */
  leaf_hash: string;
  at: string;
  user_name: string | null;
  project_id: string | null;
}

/** A signed tree head: the control plane's Ed25519 signature over size, root and time. */
export interface AuditHeadsTable {
  tree_size: number;
  root_hash: string;
  timestamp: string;
  signature: string;
}

export interface HostsTable {
  id: string;
  name: string;
  /** `unix:/path/agent.sock` or `http://address:port`. */
  endpoint: string;
  /** sha256 (hex) of the credential the agent presents to the control plane. */
  agent_token_sha256: string;
  accelerator: string;
  accelerator_reason: string;
  cpus: number;
  memory_mb: number;
  maintenance: number;
  last_seen_at: string;
  joined_at: string;
  /** The host's address on the underlay (VXLAN endpoint), or null for a host without one. */
  underlay_ip: string | null;
  /** The agent's `qemu-system-x86_64 --version` line, or null when it did not say. */
  qemu_version: string | null;
  /** JSON: how the host keeps its VMs apart (wire HostIsolation), as its agent reported at join. */
  isolation: string | null;
  /** JSON object of the host's labels (`zone`, `region`, `rack`, ...), set by `nubis host set`. */
  labels: string;
  /** vCPUs placement may give VMs per host core. */
  cpu_overcommit: number;
  /** Guest memory placement may give VMs per MiB of the host's memory (after its reserve). */
  memory_overcommit: number;
  /** When the control plane fenced the host (it stopped answering), or null while it is in service. */
  fenced_at: string | null;
  /** The last heartbeat before the host was fenced (when it was lost). */
  lost_at: string | null;
  /** 1 while the storage node refuses the host's I/O (fenced with HA VMs on storage-node volumes). */
  storage_fenced: number;
}

/** A preferred set of hosts for HA VMs, as Proxmox's HA groups: restricted or not, with or without failback. */
export interface HaGroupsTable {
  id: string;
  name: string;
  /** JSON array of host ids. */
  hosts: string;
  /** 1: its VMs run only on its hosts; 0: they prefer them. */
  restricted: number;
  /** 1: a VM away from the group's hosts migrates back when one of them is in service again. */
  failback: number;
  created_at: string;
}

/** One HA restart of a VM: from its failed host to another, with the times that make its failover time. */
export interface HaEventsTable {
  seq: Generated<number>;
  vm_id: string;
  vm_name: string;
  from_host: string;
  to_host: string | null;
  /** restarting, restarted, failed, not-restartable. */
  status: string;
  message: string;
  /** The host's last heartbeat: when it was lost. */
  host_lost_at: string;
  fenced_at: string;
  /** When the VM ran (its guest ready) on the new host, or the restart gave up. */
  ended_at: string | null;
}

/** A set of VMs placed together (affinity) or apart (anti-affinity) on hosts or zones. */
export interface PlacementGroupsTable {
  id: string;
  project_id: string;
  name: string;
  policy: 'affinity' | 'anti-affinity';
  scope: 'host' | 'zone';
  /** 1: a host that breaks the policy is refused; 0: it is only scored lower. */
  strict: number;
  created_at: string;
}

/** Labels of a storage-node pool (a dir pool's volumes take the labels of their host). */
export interface PoolLabelsTable {
  pool: string;
  labels: string;
}

/** One placement of a VM on a host, with the decision behind it; kept after the VM is gone. */
export interface PlacementEventsTable {
  seq: Generated<number>;
  vm_id: string;
  vm_name: string;
  project_id: string;
  host_id: string;
  host_name: string;
  /** create, migrate, evacuate, balance, ha-restart, restore. */
  action: string;
  /** The user (or `system` for the balancer and HA) whose action placed it. */
  actor: string | null;
  at: string;
  /** JSON: the scheduler's decision (refused hosts by rule, scores of the rest). */
  decision: string;
}

export interface ImagesTable {
  id: string;
  name: string;
  /** `kernel`: kernel + initrd; `disk`: a bootable qcow2 or raw disk. */
  kind: 'kernel' | 'disk';
  format: string;
  /** JSON: { kernelPath, initrdPath } or { path }. */
  files: string;
  size_bytes: number;
  builtin: number;
  created_at: string;
}

export interface VmsTable {
  id: string;
  project_id: string;
  name: string;
  host_id: string;
  image_id: string;
  cpus: number;
  memory_mb: number;
  desired_state: 'running' | 'stopped';
  /** What the host last reported (or `pending` before it did). */
  actual_state: string;
  /** JSON: the VmSpec sent to the host. */
  spec: string;
  /** JSON: the host's last VmStatus. */
  status: string;
  /** 1 when live migration may use post-copy for this VM (a link broken mid-way pauses it). */
  allow_postcopy: number;
  /** The placement group the VM belongs to, or null. */
  placement_group_id: string | null;
  /** 1: restarted on another host when its host fails (high availability). */
  ha: number;
  /** Higher restarts first when a host fails. */
  ha_priority: number;
  /** The HA group whose hosts it prefers (or is restricted to), or null. */
  ha_group_id: string | null;
  /** 1: started when its host's agent starts after a host reboot. */
  autostart: number;
  /** Lower starts first at autostart. */
  boot_order: number;
  /** Seconds to wait after starting this VM before the next one at autostart. */
  boot_delay_seconds: number;
  /** Which balancing runs may move it: auto, manual (only runs a person starts) or never; `auto` unless set. */
  balance: VmBalancePolicy;
  /** The uid its processes run as on any host (compute/vm-user.ts), also in its spec; unique. */
  unix_uid: number | null;
  /** 1: a template, read-only, never started again; its clones are made from its disks. */
  template: number;
  /** A linked clone: the template whose disks back its own (copy-on-write), or null. */
  linked_to: string | null;
  created_at: string;
  updated_at: string;
}

/** A snapshot of a VM's disks (and with `with_memory` its running state), by the VM's own name for it. */
/** A project's backup key, wrapped by the control plane's KEK (backup-keys/). */
export interface BackupKeysTable {
  project_id: string;
  kek_id: string;
  wrapped: string;
  created_at: string;
}

/** A backup in the backup store, as the control plane knows it (control/backups.ts). */
export interface BackupsTable {
  id: string;
  project_id: string;
  vm_id: string | null;
  vm_name: string;
  vm_state: string;
  /** JSON: per disk, what it holds and what it cost (agent contract `TakenBackup`). */
  disks: string;
  size_bytes: number;
  sent_bytes: number;
  stored_bytes: number;
  duration_ms: number;
  /** JSON: the VM's settings a restore recreates it with (image, CPUs, memory, networks). */
  settings: string;
  created_at: string;
  /** Files in its encrypted catalog, and (JSON) what the catalog left out and why. */
  catalog_files: number;
  catalog_notes: string;
}

/** One proof-of-retrievability challenge of a backup (control/backup-audits.ts). */
export interface BackupAuditsTable {
  id: string;
  backup_id: string;
  at: string;
  blocks: number;
  passed: number;
  proof_bytes: number;
  store_ms: number;
  verify_ms: number;
  /** Why it failed when the store could not answer at all. */
  error: string | null;
}

/**
 * A VM's backup schedule (control/backup-schedules.ts, migrations-backup-schedules.ts): its
 * interval, its retention rules (null: the rule is not used), the run under way and the last
 * run's outcome. Times are ISO 8601 in UTC.
 */
export interface BackupSchedulesTable {
  vm_id: string;
  interval_seconds: number;
  keep_last: number | null;
  keep_hourly: number | null;
  keep_daily: number | null;
  keep_weekly: number | null;
  keep_monthly: number | null;
  keep_yearly: number | null;
  next_run_at: string;
  /** The run under way (null: none): when it was claimed, and its operation once started. */
  run_started_at: string | null;
  run_operation_id: string | null;
  /** The last run that ended: when it started and ended, how, the backup it took, what retention deleted. */
  last_run_at: string | null;
  last_finished_at: string | null;
  last_status: 'succeeded' | 'failed' | null;
  last_operation_id: string | null;
  last_backup_id: string | null;
  last_pruned: number | null;
  last_error_code: string | null;
  last_error: string | null;
  created_at: string;
  updated_at: string;
}

export interface VmSnapshotsTable {
  /** Also its name in the VM's qcow2 files and memory file on its host. */
  id: string;
  vm_id: string;
  name: string;
  with_memory: number;
  memory_bytes: number | null;
  /** JSON: the ids of the disks it covers. */
  disks: string;
  /** The VM's state when it was taken (running, paused, stopped). */
  vm_state: string;
  created_at: string;
}

export interface OperationsTable {
  id: string;
  kind: string;
  project_id: string | null;
  target_type: string;
  target_id: string;
  target_name: string;
  status: 'running' | 'succeeded' | 'failed' | 'cancelled';
  stage: string;
  progress: number;
  error_code: string | null;
  error_message: string | null;
  result: string | null;
  created_at: string;
  updated_at: string;
}

export interface OperationEventsTable {
  seq: Generated<number>;
  operation_id: string;
  at: string;
  stage: string;
  message: string;
  progress: number;
  data: string | null;
}

export interface NetworksTable {
  id: string;
  project_id: string;
  name: string;
  subnet: string;
  gateway: string | null;
  dhcp: number;
  /** The DHCP server's own address in the subnet, when dhcp is on. */
  dhcp_address: string | null;
  vni: number;
  mtu: number;
  /** 1: a NAT gateway at `gateway` lets VMs out and port forwards in. */
  nat: number;
  /** The network's conntrack zone on every host (1-65535, unique): its connections are its own. */
  ct_zone: number;
  /** The host running the network's DHCP server and NAT gateway, once one does. */
  service_host_id: string | null;
  created_at: string;
}

/** A host the control plane plumbed a network on (and must clear when it no longer needs it). */
export interface NetworkHostsTable {
  network_id: string;
  host_id: string;
}

/** A host port on the network's NAT gateway host forwarded to a VM's port. */
export interface PortForwardsTable {
  id: string;
  network_id: string;
  protocol: 'tcp' | 'udp';
  host_port: number;
  vm_id: string;
  vm_port: number;
  created_at: string;
}

/** A VM's NIC on a virtual network: its MAC and IP stay with it for its life. */
export interface NicsTable {
  id: string;
  vm_id: string;
  network_id: string;
  /** Position among the VM's NICs: eth0, eth1, ... in the guest. */
  device_index: number;
  mac: string;
  ip: string;
  created_at: string;
}

export interface SecgroupsTable {
  id: string;
  project_id: string;
  name: string;
  description: string;
  created_at: string;
}

/** An allow rule: traffic of `protocol` to ports `port_min..port_max` from (ingress) or to (egress) `cidr` or the members of `remote_group_id`. */
export interface SecgroupRulesTable {
  id: string;
  group_id: string;
  direction: 'ingress' | 'egress';
  protocol: 'tcp' | 'udp' | 'icmp' | 'any';
  port_min: number | null;
  port_max: number | null;
  cidr: string | null;
  remote_group_id: string | null;
  created_at: string;
}

export interface VmSecgroupsTable {
  vm_id: string;
  group_id: string;
}

/** A volume of the storage node attached to a VM as its disk number `device_index`. */
export interface VmDisksTable {
  vm_id: string;
  device_index: number;
  pool: string;
  volume: string;
}

/** One live migration of a VM, with the figures QEMU and Nubis measured (JSON). */
export interface VmMigrationsTable {
  id: string;
  vm_id: string;
  from_host: string;
  to_host: string;
  strategy: string;
  status: 'running' | 'completed' | 'failed' | 'cancelled';
  figures: string;
  started_at: string;
  ended_at: string | null;
}

/** A host-based pool: a folder of qcow2 files on each of its hosts. */
export interface DirPoolsTable {
  id: string;
  name: string;
  /** JSON: [{ hostId, path }], the pool's folder on each host. */
  hosts: string;
  created_at: string;
}

/** A qcow2 volume of a dir pool; it lives on one host (and moves when its VM migrates). */
export interface DirVolumesTable {
  id: string;
  pool_id: string;
  name: string;
  host_id: string;
  size_bytes: number;
  created_at: string;
}

/** The balancer's settings (one row, id `cluster`) and its last run. */
export interface ClusterSettingsTable {
  id: string;
  /** auto: the background balancer acts; manual: only `nubis cluster balance`; off: neither. */
  balance: 'auto' | 'manual' | 'off';
  /** 1 (careful) .. 5 (eager): control/balance-plan.ts THRESHOLDS. */
  threshold: number;
  interval_seconds: number;
  /** A VM that moved (for any reason) is not moved by the balancer for this long. */
  cooldown_seconds: number;
  max_moves: number;
  /** optional: a migration uses TLS when asked (`--tls`); required: one without TLS is refused. */
  migration_tls: Generated<'optional' | 'required'>;
  /** JSON: the last run (manual or automatic) with its moves and their outcomes. */
  last_run: string | null;
  updated_at: string;
}

/**
 * One row (id 1) whose `version` triggers bump at every change that placement reads: VMs added,
 * removed, moved or resized, hosts added, removed or changed (migration 0016).
 */
export interface PlacementStateTable {
  id: number;
  version: number;
}

/** A desktop pool (VDI): desktops cloned from one snapshot of a base volume, handed out by the broker. */
export interface DesktopPoolsTable {
  id: string;
  project_id: string;
  name: string;
  image_id: string;
  /** The storage-node volume the pool was made from, and the read-only snapshot its desktops clone. */
  base_pool: string;
  base_volume: string;
  snapshot_volume: string;
  /** floating: any free desktop, reset when its user leaves; dedicated: the same desktop every time. */
  mode: 'floating' | 'dedicated';
  size: number;
  spare: number;
  grace_seconds: number;
  cpus: number;
  memory_mb: number;
  /** The virtual network of its desktops' NIC, or null (user-mode network). */
  network: string | null;
  created_at: string;
}

/** Who may get a desktop of a pool: a user (by id) or an OpenID Connect group (`group:NAME`). */
export interface DesktopEntitlementsTable {
  pool_id: string;
  /** A user id, or `group:NAME`. */
  subject: string;
  created_at: string;
}

/** One desktop of a pool: a VM with its own clone of the pool's snapshot, and who holds it. */
export interface DesktopsTable {
  id: string;
  pool_id: string;
  /** 1..size: the VM is `<pool>-<slot>`, its disk `desktop-<pool>-<slot>`. */
  slot: number;
  /** The VM, once its create has started (null while its clone is made). */
  vm_id: string | null;
  vm_name: string;
  volume: string;
  /** provisioning, resetting: work in progress; available: the VM exists (its state is the VM's); broken: see error. */
  state: 'provisioning' | 'resetting' | 'available' | 'broken';
  error: string | null;
  /** The operation of the provisioning or reset in progress, if any. */
  operation_id: string | null;
  assigned_user_id: string | null;
  assigned_at: string | null;
  connected_at: string | null;
  /** Since when its user has had no console open (null while one is open). */
  disconnected_at: string | null;
  updated_at: string;
}

export interface Database {
  placement_state: PlacementStateTable;
  desktop_pools: DesktopPoolsTable;
  desktop_entitlements: DesktopEntitlementsTable;
  desktops: DesktopsTable;
  ha_groups: HaGroupsTable;
  ha_events: HaEventsTable;
  cluster_settings: ClusterSettingsTable;
  placement_groups: PlacementGroupsTable;
  pool_labels: PoolLabelsTable;
  placement_events: PlacementEventsTable;
  users: UsersTable;
  roles: RolesTable;
  role_bindings: RoleBindingsTable;
  project_quotas: ProjectQuotasTable;
  volume_owners: VolumeOwnersTable;
  audit_entries: AuditEntriesTable;
  audit_heads: AuditHeadsTable;
  dir_pools: DirPoolsTable;
  dir_volumes: DirVolumesTable;
  vm_migrations: VmMigrationsTable;
  port_forwards: PortForwardsTable;
  vm_disks: VmDisksTable;
  vm_snapshots: VmSnapshotsTable;
  backups: BackupsTable;
  backup_keys: BackupKeysTable;
  backup_audits: BackupAuditsTable;
  backup_schedules: BackupSchedulesTable;
  secgroups: SecgroupsTable;
  secgroup_rules: SecgroupRulesTable;
  vm_secgroups: VmSecgroupsTable;
  networks: NetworksTable;
  network_hosts: NetworkHostsTable;
  nics: NicsTable;
  projects: ProjectsTable;
  launch_references: LaunchReferencesTable;
  tokens: TokensTable;
  hosts: HostsTable;
  images: ImagesTable;
  vms: VmsTable;
  operations: OperationsTable;
  operation_events: OperationEventsTable;
}
