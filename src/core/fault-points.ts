/**
 * Named places where a test stops a process on purpose, to prove that a crash there loses
 * nothing and leaves nothing half-built (as FreeBSD's fail points and etcd's gofail do).
 * `NUBIS_FAULT_POINTS=vm.create.after-record,...` makes the process, on reaching such a point,
 * write a file named after it into `NUBIS_FAULT_DIR` and wait there for good, so that the test
 * kills it at exactly that moment. Without the variable a fault point does nothing.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';

/** The places a test can stop at (one list, so a typo cannot silently never fire). */
export type FaultPoint =
  | 'vm.create.before-placement'
  | 'vm.create.after-record'
  | 'vm.create.after-qemu-started'
  // storage/service.ts, key rotation: a new KEK is durable / one data key is rewrapped / all are, old KEKs not yet destroyed.
  | 'storage.key-rotate.after-new-kek'
  | 'storage.key-rotate.after-first-rewrap'
  | 'storage.key-rotate.before-destroy'
  // storage/pool/volume-catalog.ts: an encrypted volume's delete is durable, its stale wrapped keys not yet purged.
  | 'storage.volume-delete.before-purge'
  // backup/store/chunk-store.ts: every chunk of a backup is stored, the backup not yet committed.
  | 'backup.commit.before-write'
  // host/backup-views.ts: a running VM's fleecing jobs, exports and NBD server are in its QEMU, its views mounted by a storage daemon.
  | 'backup.agent.after-views-mounted';

export async function faultPoint(name: FaultPoint): Promise<void> {
  const armed = process.env.NUBIS_FAULT_POINTS?.split(',') ?? [];
  if (!armed.includes(name)) return;
  if (process.env.NUBIS_FAULT_DIR) writeFileSync(join(process.env.NUBIS_FAULT_DIR, name), `${process.pid}\n`);
  await new Promise<never>(() => {
    // Never settles: the test kills the process here.
    setInterval(() => undefined, 60_000);
  });
}
