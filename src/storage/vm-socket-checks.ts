/**
 * The checks of what names a VM's socket at the storage node: the uid it belongs to (it becomes
 * part of the socket's path and its owner) and the exports it may open. The management API runs
 * them where a request arrives, and the storage node again where it builds a path or a list.
 */
import { isVmUid, VM_UID_FIRST, VM_UID_LAST } from '../compute/vm-user.ts';
import { NubisError } from '../core/errors.ts';

/** The most exports one VM's socket serves (a VM has at most 16 disks). */
export const MAX_VM_EXPORTS = 64;
/** A pool or volume name (storage/pool/pool-names.ts), so an export is exactly `POOL/VOLUME`. */
const EXPORT_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}\/[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/;

/** Shows a value in a message: quoted, cut short, never a whole request. */
function shown(value: unknown): string {
  if (typeof value === 'string') return JSON.stringify(value.length > 70 ? `${value.slice(0, 70)}...` : value);
  if (typeof value === 'number') return String(value);
  return `a value of type ${value === null ? 'null' : typeof value}`;
}

/**
 * A VM's uid as a number: a number, or a string of digits (a URL's path), in the range the
 * control plane gives VMs (compute/vm-user.ts). `STORAGE_VM_UID_INVALID` naming the value otherwise.
 */
export function checkVmUid(value: unknown): number {
  const uid = typeof value === 'string' && /^[0-9]{1,10}$/.test(value) ? Number(value) : value;
  if (!isVmUid(uid)) {
    throw new NubisError(
      'STORAGE_VM_UID_INVALID',
      `The uid ${shown(value)} is not a VM's uid: give the VM's unixUid, a whole number from ${VM_UID_FIRST} (VMs' uids start there; up to ${VM_UID_LAST} and the legacy range above it)`,
      { details: { uid: typeof value === 'string' ? value.slice(0, 40) : String(value) } },
    );
  }
  return uid;
}

/**
 * The exports a VM's socket may open: 1 to 64 distinct names `POOL/VOLUME`, each part a pool or
 * volume name. `STORAGE_EXPORT_INVALID` naming the offending value otherwise.
 */
export function checkVmExports(value: unknown): string[] {
  const invalid = (why: string) => new NubisError('STORAGE_EXPORT_INVALID', why, { details: { exports: shown(value) } });
  if (!Array.isArray(value)) throw invalid(`exports must be a list of POOL/VOLUME names, not ${shown(value)}`);
  if (value.length === 0) throw invalid('exports is empty: a VM socket serves at least one volume (release the socket instead)');
  if (value.length > MAX_VM_EXPORTS) throw invalid(`exports names ${value.length} volumes; a VM socket serves at most ${MAX_VM_EXPORTS}`);
  const seen = new Set<string>();
  for (const name of value) {
    if (typeof name !== 'string' || !EXPORT_NAME.test(name)) {
      throw invalid(
        `The export ${shown(name)} is not POOL/VOLUME: both names 1-63 letters, digits, dots, dashes or underscores, starting with a letter or digit`,
      );
    }
    if (seen.has(name)) throw invalid(`The export ${shown(name)} is named twice; name each volume once`);
    seen.add(name);
  }
  return [...seen];
}

/**
 * The name (certificate common name) a VM's QEMU proves on the storage node's TCP listener:
 * `vm-<uid>.<host>`. Host names have no dots (core/paths.ts), so the name parses back to one pair.
 */
export function vmStorageClientName(host: string, uid: number): string {
  return `vm-${checkVmUid(uid)}.${host}`;
}

/** The host and uid of a name `vmStorageClientName` made; undefined for any other text. */
export function parseVmStorageClientName(name: string): { host: string; uid: number } | undefined {
  const match = /^vm-([0-9]{1,10})\.([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)$/.exec(name);
  if (!match) return undefined;
  const uid = Number(match[1]);
  return isVmUid(uid) ? { host: match[2]!, uid } : undefined;
}
