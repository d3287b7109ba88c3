/** Which VM has a volume as its disk: one query for the catalogues of every pool kind. */
import type { Db } from '../state/database.ts';

/** The VM that has volume `pool/volume` as a disk, if one does (a volume is one VM's at a time). */
export function vmUsingVolume(db: Db, pool: string, volume: string): Promise<{ id: string; name: string } | undefined> {
  return db
    .selectFrom('vm_disks')
    .innerJoin('vms', 'vms.id', 'vm_disks.vm_id')
    .select(['vms.id', 'vms.name'])
    .where('pool', '=', pool)
    .where('volume', '=', volume)
    .executeTakeFirst();
}
