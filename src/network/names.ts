// Linux interface names are at most 15 bytes (IFNAMSIZ 16 with the NUL). Everything the driver
// names is derived here, so names are short, stable across agent restarts and collision-resistant.
import { createHash } from 'node:crypto';
import { NubisError } from '../core/errors.ts';

/** Longest Linux interface name (include/uapi/linux/if.h: IFNAMSIZ 16, including the NUL). */
export const MAX_INTERFACE_NAME_LENGTH = 15;

/** The fewest hash characters a derived name carries. */
const MIN_HASH_CHARS = 6;

/**
 * A stable interface name for `key`: `stem` followed by hex characters of SHA-256(key), filling
 * the name to 15 characters. When the stem leaves fewer than 6 characters for the hash it is cut
 * to 9 characters, so the result always starts with the stem's first 9 characters (keep prefixes
 * used with `cleanupByPrefix` at 9 characters or fewer).
 */
export function shortName(stem: string, key: string): string {
  const kept = stem.slice(0, MAX_INTERFACE_NAME_LENGTH - MIN_HASH_CHARS);
  const hash = createHash('sha256').update(key).digest('hex');
  return kept + hash.slice(0, MAX_INTERFACE_NAME_LENGTH - kept.length);
}

/** The network's Linux bridge inside a host namespace. */
export function bridgeNameFor(networkKey: string): string {
  return shortName('nbr-', networkKey);
}

/** The network's VXLAN device inside a host namespace. */
export function vxlanNameFor(networkKey: string): string {
  return shortName('nvx-', networkKey);
}

/** The host-side end of the veth that joins a network's DHCP namespace to its bridge. */
export function dhcpLinkNameFor(networkKey: string): string {
  return shortName('ndh-', networkKey);
}

/** A tap device name for a NIC (stable: the same NIC gets the same tap on every host). */
export function tapNameFor(nicKey: string): string {
  return shortName('ntap', nicKey);
}

/**
 * Throws `NET_INVALID_NAME` unless `name` is a usable interface name: 1-15 characters, none of
 * them `/`, `:`, whitespace or NUL, and not `.` or `..` (net/core/dev.c dev_valid_name).
 */
export function assertInterfaceName(name: string): void {
  if (name.length === 0 || Buffer.byteLength(name) > MAX_INTERFACE_NAME_LENGTH || name === '.' || name === '..' || /[/:\s\0]/.test(name)) {
    throw new NubisError('NET_INVALID_NAME', `Interface name ${JSON.stringify(name)} is not valid: use 1-15 characters without '/', ':' or spaces`, {
      details: { name },
    });
  }
}

/** Throws `NET_INVALID_NAME` unless `name` can name a network namespace (a file in /run/netns). */
export function assertNamespaceName(name: string): void {
  if (name.length === 0 || name.length > 200 || name === '.' || name === '..' || /[/\s\0]/.test(name)) {
    throw new NubisError('NET_INVALID_NAME', `Namespace name ${JSON.stringify(name)} is not valid: use 1-200 characters without '/' or spaces`, {
      details: { name },
    });
  }
}
