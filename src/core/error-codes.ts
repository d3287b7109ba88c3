/**
 * The one error contract of every Nubis process (control plane, agents, storage node): each code
 * a process puts on the wire, with its HTTP status, and the one function that turns anything
 * thrown into a wire error. A code is a contract with clients: never rename one.
 *
 * Statuses: 4xx when the client can change its request to succeed (400 the request alone is
 * wrong, 401/403 credentials, 404 no such thing, 409 the state of a resource is in the way,
 * 422 understood but nothing can take it, e.g. no host fits or a device is unsuitable), 5xx
 * when Nubis or what it drives failed (502 a host, QEMU or NBD peer failed, 503 one is not
 * reachable, 504 one did not finish in time, 507 out of space). A code missing here is 500.
 * The unit test beside this file fails when a code thrown anywhere is not listed, when a listed
 * code is thrown nowhere, and when a code a client causes maps to 5xx.
 */
import { NubisError, messageOf } from './errors.ts';

export const ERROR_STATUS = {
  // The request alone is wrong.
  QUOTE_INVALID: 400,
  VALIDATION_FAILED: 400,
  UNKNOWN_FIELD: 400,
  BAD_REQUEST: 400,
  // A list's `marker` (the last VM of the previous page) is not among the VMs listed.
  VM_MARKER_NOT_FOUND: 400,
  CLI_NOT_CONFIGURED: 400,
  IMAGE_INVALID: 400,
  QEMU_INVALID_OPTION: 400,
  // A current memory above the VM's maximum or below its floor (compute/memory-spec.ts).
  VM_MEMORY_OUT_OF_RANGE: 400,
  // vCPUs outside 1-64, above the VM's maximum, or a layout whose product is not the maximum (compute/cpu-topology.ts).
  VM_CPUS_INVALID: 400,
  NET_INVALID_ADDRESS: 400,
  NET_INVALID_CIDR: 400,
  NET_INVALID_COMMAND: 400,
  NET_INVALID_MAC: 400,
  NET_INVALID_MTU: 400,
  NET_INVALID_NAME: 400,
  NET_INVALID_PORT_FORWARD: 400,
  NET_INVALID_RULE: 400,
  NET_INVALID_SUBNET: 400,
  NET_INVALID_VNI: 400,
  NET_INVALID_CT_ZONE: 400,
  NET_NAT_NEEDS_GATEWAY: 400,
  SECGROUP_INVALID_RULE: 400,
  POOL_ALLOCATION_UNIT_INVALID: 400,
  POOL_CHUNK_INVALID: 400,
  POOL_DEVICES_INVALID: 400,
  POOL_DEVICE_INVALID: 400,
  POOL_DEVICE_TOO_SMALL: 400,
  POOL_LAYOUT_INVALID: 400,
  POOL_TOO_FEW_DEVICES: 400,
  POOL_KIND_UNSUPPORTED: 400,
  POOL_IO_RANGE: 400,
  VOLUME_IO_RANGE: 400,
  VOLUME_SIZE_INVALID: 400,
  UP_NEEDS_ROOT: 400,
  ROLE_UNKNOWN_PERMISSION: 400,
  ROLE_PLATFORM_ONLY: 400,
  AUTH_TOTP_WRONG: 400,
  AUDIT_OUT_OF_RANGE: 400,
  AUTH_TOTP_SECRET_INVALID: 400,
  AUTH_OIDC_CONFIG_INVALID: 400,
  TLS_INVALID_NAME: 400,
  STORAGE_HOST_NAME_INVALID: 400,
  STORAGE_SOCKET_PATH_TOO_LONG: 400,
  STORAGE_VM_UID_INVALID: 400,
  STORAGE_EXPORT_INVALID: 400,
  TLS_CERT_INVALID: 400,
  TLS_KEY_INVALID: 400,
  TLS_KEY_MISMATCH: 400,
  // Backup search (backup/search/sse-index.ts): a key, token or serialized index of the wrong shape.
  BACKUP_SEARCH_KEY_INVALID: 400,
  BACKUP_SEARCH_TOKEN_INVALID: 400,
  BACKUP_INDEX_INVALID: 400,
  // Backup proofs of retrievability (backup/proof/): a key secret, chunk or challenge that does not parse.
  BACKUP_PROOF_KEY_INVALID: 400,
  BACKUP_CHUNK_INVALID: 400,
  BACKUP_CHALLENGE_INVALID: 400,
  // A backup schedule's --every that is not 1m to 366d in m, h, d or w (control/backup-schedules.ts).
  BACKUP_SCHEDULE_INTERVAL_INVALID: 400,
  // Credentials.
  AUTH_REQUIRED: 401,
  AUTH_INVALID_TOKEN: 401,
  AUTH_TOKEN_REVOKED: 401,
  AUTH_TOKEN_EXPIRED: 401,
  AUTH_TICKET_INVALID: 401,
  AUTH_LOGIN_FAILED: 401,
  AUTH_TOTP_REQUIRED: 401,
  AUTH_OIDC_INVALID: 401,
  AUTH_OIDC_DEVICE_EXPIRED: 401,
  AUTH_OIDC_DEVICE_FAILED: 401,
  AUTH_OIDC_DEVICE_DENIED: 403,
  AUTH_FORBIDDEN: 403,
  AUTH_ORIGIN_REFUSED: 403,
  ACCESS_DENIED: 403,
  TOKEN_TOO_WIDE: 403,
  // No such thing.
  ROUTE_NOT_FOUND: 404,
  VM_NOT_FOUND: 404,
  BACKUP_NOT_FOUND: 404,
  BACKUP_DISK_NOT_FOUND: 404,
  BACKUP_FILE_NOT_FOUND: 404,
  BACKUP_SCHEDULE_NOT_FOUND: 404,
  HOST_NOT_FOUND: 404,
  USAGE_NOT_FOUND: 404,
  IMAGE_NOT_FOUND: 404,
  PROJECT_NOT_FOUND: 404,
  OPERATION_NOT_FOUND: 404,
  VM_DISK_NOT_FOUND: 404,
  VM_SNAPSHOT_NOT_FOUND: 404,
  NET_NOT_FOUND: 404,
  NET_NETWORK_NOT_FOUND: 404,
  NET_NIC_NOT_FOUND: 404,
  NET_LINK_NOT_FOUND: 404,
  NET_GATEWAY_NOT_FOUND: 404,
  NET_PORT_FORWARD_NOT_FOUND: 404,
  SECGROUP_NOT_FOUND: 404,
  SECGROUP_RULE_NOT_FOUND: 404,
  POOL_NOT_FOUND: 404,
  POOL_MEMBER_NOT_FOUND: 404,
  VOLUME_NOT_FOUND: 404,
  DESKTOP_POOL_NOT_FOUND: 404,
  DESKTOP_GRANT_NOT_FOUND: 404,
  STORAGE_JOB_NOT_FOUND: 404,
  STORAGE_HOST_NOT_FOUND: 404,
  STORAGE_VM_SOCKET_NOT_FOUND: 404,
  USER_NOT_FOUND: 404,
  ROLE_NOT_FOUND: 404,
  BINDING_NOT_FOUND: 404,
  TOKEN_NOT_FOUND: 404,
  // The state of a resource is in the way.
  VM_EXISTS: 409,
  VM_NAME_TAKEN: 409,
  PLACEMENT_GROUP_NAME_TAKEN: 409,
  PLACEMENT_GROUP_NOT_FOUND: 404,
  PLACEMENT_GROUP_IN_USE: 409,
  PLACEMENT_GROUP_VIOLATED: 409,
  RESIDENCY_VIOLATED: 422,
  VM_NOT_RESTARTABLE: 422,
  // A disk kind VM snapshots do not cover (a storage-node volume): nubis volume snapshot, or detach it.
  VM_SNAPSHOT_UNSUPPORTED: 422,
  // Backups (control/backups.ts): a backup that cannot be restored as it is, or whose chunks do
  // not open with the project's key (altered, damaged, or another tenant's).
  BACKUP_KEY_INVALID: 422,
  BACKUP_DAMAGED: 422,
  BACKUP_CHUNK_CORRUPT: 422,
  BACKUP_CHUNK_MISSING: 422,
  HA_GROUP_NAME_TAKEN: 409,
  HA_GROUP_NOT_FOUND: 404,
  HA_GROUP_IN_USE: 409,
  VM_INVALID_STATE: 409,
  VM_BUSY: 409,
  VM_CONSOLE_BUSY: 409,
  VM_DISK_EXISTS: 409,
  VM_NO_HOTPLUG_SLOT: 409,
  // Snapshots, templates and clones (control/vm-snapshots.ts, host/vm-snapshot-control.ts).
  VM_SNAPSHOT_NAME_TAKEN: 409,
  // The VM's disks changed since the snapshot (a volume attached or detached): a rollback would not restore it whole.
  VM_SNAPSHOT_MISMATCH: 409,
  // A live migration of a VM with snapshots (they live in its host's files), a template or a linked clone.
  VM_HAS_SNAPSHOTS: 409,
  VM_IS_TEMPLATE: 409,
  VM_NOT_TEMPLATE: 409,
  // A template with linked clones is not deleted (their disks read its own); the message names them.
  VM_TEMPLATE_IN_USE: 409,
  // Fewer vCPUs asked of a running VM: set it while the VM is stopped (host/vm-vcpus.ts says why).
  VM_CPUS_LIVE_DECREASE: 409,
  TRUSTED_LAUNCH_MISMATCH: 409,
  IMAGE_NAME_TAKEN: 409,
  PROJECT_NAME_TAKEN: 409,
  OPERATION_FINISHED: 409,
  PORT_IN_USE: 409,
  NET_NAME_TAKEN: 409,
  NET_SUBNET_OVERLAP: 409,
  NET_VNI_TAKEN: 409,
  NET_ADDRESS_TAKEN: 409,
  NET_IN_USE: 409,
  NET_SUBNET_FULL: 409,
  NET_NOT_PLUMBED: 409,
  NET_NO_NAT: 409,
  NET_PORT_FORWARD_TAKEN: 409,
  NET_LINK_CONFLICT: 409,
  NET_NAMESPACE_EXISTS: 409,
  NET_DUPLICATE_LEASE: 409,
  NET_CT_ZONES_EXHAUSTED: 409,
  SECGROUP_NAME_TAKEN: 409,
  SECGROUP_IN_USE: 409,
  MIGRATION_SAME_HOST: 409,
  MIGRATION_INCOMPATIBLE: 409,
  MIGRATION_LOCAL_DISK: 409,
  MIGRATION_USER_NETWORK: 409,
  MIGRATION_POSTCOPY_DENIED: 409,
  MIGRATION_TLS_REQUIRED: 409,
  MIGRATION_TLS_UNSUPPORTED: 409,
  POOL_EXISTS: 409,
  POOL_IN_USE: 409,
  POOL_NOT_EMPTY: 409,
  POOL_READ_ONLY: 409,
  POOL_NO_REDUNDANCY: 409,
  POOL_DEVICE_DUPLICATE: 409,
  POOL_DEVICE_HAS_DATA: 409,
  POOL_DEVICE_IN_USE: 409,
  VOLUME_EXISTS: 409,
  BACKUP_EXISTS: 409,
  DESKTOP_POOL_EXISTS: 409,
  DESKTOP_POOL_FULL: 409,
  DESKTOP_POOL_IN_USE: 409,
  DESKTOP_POOL_BUSY: 409,
  DESKTOP_NOT_ASSIGNED: 409,
  DESKTOP_NOT_READY: 409,
  DESKTOP_BROKEN: 409,
  VOLUME_IN_USE: 409,
  VOLUME_READ_ONLY: 409,
  VOLUME_SHRINK_REFUSED: 409,
  VOLUME_SHRINK_BELOW_DATA: 409,
  USER_NAME_TAKEN: 409,
  USER_NOT_LOCAL: 409,
  ROLE_NAME_TAKEN: 409,
  ROLE_BUILTIN: 409,
  ROLE_IN_USE: 409,
  ACCESS_LAST_ADMIN: 409,
  TOKEN_NAME_TAKEN: 409,
  AUTH_TOTP_NOT_ENROLLED: 409,
  QUOTA_EXCEEDED: 409,
  CLUSTER_BALANCE_OFF: 409,
  CLUSTER_BALANCE_RUNNING: 409,
  // One key rotation at a time; one that could not rewrap every key keeps the old KEKs.
  KEY_ROTATION_RUNNING: 409,
  KEY_ROTATION_INCOMPLETE: 409,
  // Understood, but nothing can take it.
  NO_HOST_FITS: 422,
  NO_HOSTS: 422,
  HOST_CPU_CONTROLS_UNAVAILABLE: 422,
  NET_NO_UNDERLAY: 422,
  NET_PROBE_TIMEOUT: 422,
  POOL_DEVICE_MISSING: 422,
  DESKTOP_BASE_UNCLONEABLE: 422,
  POOL_DEVICE_UNSUITABLE: 422,
  POOL_DEVICE_UNREACHABLE: 422,
  POOL_DEVICE_UNREADABLE: 422,
  AUTH_OIDC_NOT_CONFIGURED: 422,
  AUTH_OIDC_DEVICE_UNSUPPORTED: 422,
  // A storage node without a key provider cannot encrypt volumes.
  ENCRYPTION_UNAVAILABLE: 422,
  // Too many attempts: wait.
  AUTH_LOGIN_LOCKED: 429,
  CONSOLE_TICKETS_EXHAUSTED: 429,
  TLS_FILE_UNREADABLE: 422,
  TLS_CERT_EXPIRED: 422,
  TLS_CERT_NOT_YET_VALID: 422,
  // A disk image that cannot be opened; search results that do not open with the key given.
  BACKUP_IMAGE_UNREADABLE: 422,
  BACKUP_RESULTS_UNREADABLE: 422,
  BACKUP_FILE_UNREADABLE: 422,
  BACKUP_FILE_TOO_LARGE: 422,
  // Nubis itself failed.
  INTERNAL_ERROR: 500,
  OPERATION_INTERRUPTED: 500,
  OPERATION_CANCELLED: 500,
  STATE_MIGRATION_FAILED: 500,
  IMAGE_BUILD_FAILED: 500,
  IMAGE_CPIO_INVALID_ENTRY: 500,
  QEMU_MISSING: 500,
  QEMU_TOO_OLD: 500,
  UP_FAILED: 500,
  NET_COMMAND_FAILED: 500,
  NET_COMMAND_ABORTED: 500,
  NET_COMMAND_TIMEOUT: 500,
  NET_PROCESS_SIGNAL_FAILED: 500,
  NET_DHCP_START_FAILED: 500,
  NET_DHCP_NOT_RUNNING: 500,
  NET_GATEWAY_LINK_EXHAUSTED: 500,
  POOL_METADATA_CORRUPT: 500,
  POOL_DEVICE_FAILED: 500,
  STORAGE_IO_FAILED: 500,
  STORAGE_JOB_FAILED: 500,
  // A desktop's VM or clone could not be made (the operation names each and why).
  DESKTOP_PROVISION_FAILED: 502,
  STORAGE_HOSTS_FILE_DAMAGED: 500,
  VOLUME_IO_ERROR: 500,
  NBD_TLS_CONFIG: 500,
  AUDIT_NOT_STARTED: 500,
  TLS_CA_DAMAGED: 500,
  AUDIT_TAMPERED: 500,
  KEY_FILE_UNSAFE: 500,
  KEY_FILE_CORRUPT: 500,
  VOLUME_KEY_MALFORMED: 500,
  // The backup store's own block or tag read back is not what a proof needs (a damaged tag file).
  BACKUP_PROOF_READ_FAILED: 500,
  // What Nubis drives failed: a host agent, QEMU, an NBD peer.
  HTTP_ERROR: 502,
  METRICS_UNPARSABLE: 502,
  // The backup store answered a proof that does not parse.
  BACKUP_PROOF_MALFORMED: 502,
  VM_START_FAILED: 502,
  VM_SNAPSHOT_FAILED: 502,
  BACKUP_FAILED: 502,
  BACKUP_STORE_FAILED: 502,
  BACKUP_RESTORE_FAILED: 502,
  // Retention could not delete a backup after a scheduled one (the store failed it): recorded in the schedule's last run.
  BACKUP_PRUNE_FAILED: 502,
  VM_NOT_READY: 502,
  VM_CONSOLE_FAILED: 502,
  MIGRATION_FAILED: 502,
  MIGRATION_DESTINATION_LOST: 502,
  EVACUATION_INCOMPLETE: 502,
  RESTORE_INCOMPLETE: 502,
  QMP_COMMAND_FAILED: 502,
  NET_UNPLUG_FAILED: 502,
  QMP_PROTOCOL: 502,
  QMP_DISCONNECTED: 502,
  QMP_CONNECT_FAILED: 502,
  QMP_ABORTED: 502,
  NBD_PROTOCOL: 502,
  NBD_CONNECT_FAILED: 502,
  NBD_DISCONNECTED: 502,
  NBD_EPERM: 502,
  NBD_EIO: 502,
  NBD_ENOMEM: 502,
  NBD_EINVAL: 502,
  NBD_EOVERFLOW: 502,
  NBD_ENOTSUP: 502,
  NBD_EXPORT_UNKNOWN: 502,
  // Not reachable.
  HOST_UNAVAILABLE: 503,
  STORAGE_UNAVAILABLE: 503,
  // An encrypted volume's key does not unwrap (its KEK is gone or the wrapped key is damaged).
  VOLUME_KEY_UNAVAILABLE: 503,
  BACKUP_STORE_UNREACHABLE: 503,
  API_UNREACHABLE: 503,
  HTTP_UNREACHABLE: 503,
  // The OpenID provider cannot be reached: not the client's credentials, so not a 4xx.
  AUTH_OIDC_UNAVAILABLE: 503,
  IMAGE_KERNEL_UNAVAILABLE: 503,
  IMAGE_IMPORT_FOLDER_MISSING: 503,
  COMMAND_MISSING: 503,
  COMMAND_FAILED: 502,
  COMMAND_TIMEOUT: 504,
  COMMAND_ABORTED: 500,
  POOL_FAULTED: 503,
  POOL_CLOSED: 503,
  NBD_ESHUTDOWN: 503,
  NBD_NOT_LISTENING: 503,
  // Did not finish in time.
  VM_READY_TIMEOUT: 504,
  VM_DETACH_TIMEOUT: 504,
  MIGRATION_TIMEOUT: 504,
  MIGRATION_STALLED: 504,
  MIGRATION_POSTCOPY_PAUSED: 504,
  QMP_TIMEOUT: 504,
  STORAGE_FENCE_TIMEOUT: 504,
  HTTP_TIMEOUT: 504,
  NBD_TIMEOUT: 504,
  // Out of space.
  POOL_FULL: 507,
  POOL_METADATA_FULL: 507,
  NBD_ENOSPC: 507,
} as const satisfies Record<string, number>;

export type ErrorCode = keyof typeof ERROR_STATUS;

/** The HTTP status of `code`; a code not in the contract is a server fault. */
export function httpStatusOf(code: string): number {
  return (ERROR_STATUS as Record<string, number>)[code] ?? 500;
}

/** An error as it travels: a stable code, a sentence, and facts a client may act on. */
export interface WireError {
  code: string;
  message: string;
  details?: Record<string, unknown>;
}

/**
 * Turns anything thrown into a wire error and its status. A NubisError keeps its code; errors of
 * the protocol modules (QMP, NBD: they import nothing of the application, so they are no
 * NubisError) keep theirs when the contract lists them; anything else (a Node `E*` system error,
 * a bug) is `INTERNAL_ERROR` with its message, never a code that means nothing to a client.
 */
export function toWireError(error: unknown): { status: number; body: WireError } {
  // Undo steps that failed while a change was taken back (core/revert.ts) are part of the answer.
  const undoFailures = (error as { undoFailures?: string[] } | undefined)?.undoFailures;
  if (error instanceof NubisError) {
    const details = error.details || undoFailures ? { ...error.details, ...(undoFailures ? { undoFailures } : {}) } : undefined;
    return { status: httpStatusOf(error.code), body: { code: error.code, message: error.message, ...(details ? { details } : {}) } };
  }
  const code = (error as { code?: unknown } | undefined)?.code;
  if (typeof code === 'string' && code in ERROR_STATUS) return { status: httpStatusOf(code), body: { code, message: messageOf(error) } };
  return { status: 500, body: { code: 'INTERNAL_ERROR', message: `Internal error: ${messageOf(error)}` } };
}
