/**
 * The unprivileged user a VM's processes (QEMU, swtpm) run as. Every VM has a uid of its own, and
 * a group of the same number, so that its files (runtime folder, sockets, console log, own disks,
 * TPM state) belong to it alone and no other VM's process can open them.
 *
 * The control plane gives each VM its uid when it is created (one counter for the cluster, kept
 * in the database beside the VM), and the uid travels in the VM's spec to whichever host runs it,
 * so a VM keeps its uid across restarts, migrations and HA restarts.
 *
 * The range sits above what systemd gives containers (524288 to 0x6FFFFFFF) and below its
 * reserved ranges near 2^31, far from login accounts (1000 to 60000) and dynamic users; the
 * uids need no passwd entry (the kernel checks numbers; `ps` shows them as numbers).
 */
import { NubisError } from '../core/errors.ts';

/** The first uid a VM gets. */
export const VM_UID_FIRST = 0x7000_0000;
/** The last uid the cluster's counter hands out. */
export const VM_UID_LAST = 0x7dff_ffff;
/**
 * Above the counter's range: the uids of VMs whose spec was written before VMs had users (agents
 * of an older version kept it), derived from the VM's id, so they are stable but may collide.
 */
const LEGACY_UID_FIRST = VM_UID_LAST + 1;
const LEGACY_UID_COUNT = 0x01fc_ffff;
/**
 * The group every VM's processes are also in, for the host devices all of them need and no other
 * user may open (/dev/userfaultfd, which post-copy migration uses). Above every VM uid.
 */
export const VMS_GID = 0x7ffd_0000;

/** The uid and gid a VM's processes run as. */
export interface VmUser {
  uid: number;
  gid: number;
}

/** True for a uid a VM may run as (never root, a login account or a system user). */
export function isVmUid(uid: unknown): uid is number {
  return typeof uid === 'number' && Number.isInteger(uid) && uid >= VM_UID_FIRST && uid < LEGACY_UID_FIRST + LEGACY_UID_COUNT;
}

/**
 * The user VM `spec` runs as, checked again where the process is started (the spec comes over the
 * wire): a uid out of the VM range is refused rather than run as.
 */
export function vmUserOf(spec: { id: string; unixUid?: number }): VmUser {
  const uid = spec.unixUid ?? legacyUidOf(spec.id);
  if (!isVmUid(uid))
    throw new NubisError('VALIDATION_FAILED', `VM ${spec.id} asks to run as uid ${String(uid)}, which is not a VM uid (${VM_UID_FIRST} to ${VM_UID_LAST})`);
  return { uid, gid: uid };
}

/** A stable uid from a VM id (FNV-1a), for a spec that predates VM users. */
function legacyUidOf(id: string): number {
  let hash = 0x811c9dc5;
  for (const byte of Buffer.from(id)) hash = Math.imul(hash ^ byte, 0x01000193) >>> 0;
  return LEGACY_UID_FIRST + (hash % LEGACY_UID_COUNT);
}
