import { storageHttpStatus } from '../storage/error-status.ts';

/**
 * The one table from error codes to HTTP statuses. A code missing here is a server fault (500);
 * every error a client can cause must be listed.
 */
const statusByCode: Record<string, number> = {
  VALIDATION_FAILED: 400,
  UNKNOWN_FIELD: 400,
  INVALID_SIZE: 400,
  IMAGE_INVALID: 400,
  IMAGE_KERNEL_UNAVAILABLE: 503,
  CLI_NOT_CONFIGURED: 400,
  AUTH_REQUIRED: 401,
  AUTH_INVALID_TOKEN: 401,
  AUTH_FORBIDDEN: 403,
  VM_NOT_FOUND: 404,
  HOST_NOT_FOUND: 404,
  IMAGE_NOT_FOUND: 404,
  PROJECT_NOT_FOUND: 404,
  OPERATION_NOT_FOUND: 404,
  ROUTE_NOT_FOUND: 404,
  VM_EXISTS: 409,
  VM_NAME_TAKEN: 409,
  IMAGE_NAME_TAKEN: 409,
  PROJECT_NAME_TAKEN: 409,
  HOST_NAME_TAKEN: 409,
  VM_INVALID_STATE: 409,
  VM_BUSY: 409,
  VM_CONSOLE_BUSY: 409,
  OPERATION_FINISHED: 409,
  PORT_IN_USE: 409,
  NO_HOST_FITS: 422,
  NET_INVALID_SUBNET: 400,
  NET_INVALID_ADDRESS: 400,
  NET_INVALID_VNI: 400,
  NET_NOT_FOUND: 404,
  NET_NAME_TAKEN: 409,
  NET_SUBNET_OVERLAP: 409,
  NET_VNI_TAKEN: 409,
  NET_ADDRESS_TAKEN: 409,
  NET_IN_USE: 409,
  NET_SUBNET_FULL: 409,
  NET_NOT_PLUMBED: 409,
  NET_INVALID_CIDR: 400,
  NET_NO_UNDERLAY: 422,
  SECGROUP_NOT_FOUND: 404,
  SECGROUP_RULE_NOT_FOUND: 404,
  SECGROUP_NAME_TAKEN: 409,
  SECGROUP_IN_USE: 409,
  SECGROUP_INVALID_RULE: 400,
  HOST_UNAVAILABLE: 503,
  HOST_OFFLINE: 503,
  VM_START_FAILED: 502,
  VM_READY_TIMEOUT: 504,
  VM_NOT_READY: 502,
  VOLUME_IN_USE: 409,
  VM_DISK_NOT_FOUND: 404,
  VM_DISK_EXISTS: 409,
  VM_NO_HOTPLUG_SLOT: 409,
  VM_DETACH_TIMEOUT: 504,
  STORAGE_UNAVAILABLE: 503,
};

/** The HTTP status for an error code. Storage codes follow the storage node's own table. */
export function httpStatusOf(code: string): number {
  if (statusByCode[code] !== undefined) return statusByCode[code];
  if (/^(POOL|VOLUME|STORAGE)_/.test(code)) return storageHttpStatus(code);
  return 500;
}
