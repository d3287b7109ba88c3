/**
 * What templates, linked clones and snapshots forbid, in one place for every service that must
 * refuse it (VM actions, delete, live migration): each check changes nothing and names what to do.
 */
import { NubisError } from '../core/errors.ts';
import type { Db } from '../state/database.ts';
import type { VmsTable } from '../state/schema.ts';

/** A template never runs and never changes: `what` (start, snapshot, ...) is refused. */
export function refuseTemplate(row: Pick<VmsTable, 'name' | 'template'>, what: string): void {
  if (row.template === 1)
    throw new NubisError('VM_IS_TEMPLATE', `VM ${row.name} is a template: it cannot ${what}; make a VM of it with nubis vm clone ${row.name} NAME`);
}

/** A template whose linked clones read its disks is not deleted; the error names them. */
export async function refuseTemplateInUse(db: Db, row: Pick<VmsTable, 'id' | 'name'>): Promise<void> {
  const clones = await db.selectFrom('vms').select('name').where('linked_to', '=', row.id).orderBy('name').execute();
  if (clones.length > 0)
    throw new NubisError(
      'VM_TEMPLATE_IN_USE',
      `Template ${row.name} has linked clones (${clones.map((c) => c.name).join(', ')}) whose disks read its own; delete them first`,
      { details: { clones: clones.map((c) => c.name) } },
    );
}

/**
 * The live migration of a VM with snapshots is refused: its qcow2 internal snapshots and memory
 * files are in the source host's files, and a disk mirror copies only current contents, so they
 * would be lost. A template never runs; a linked clone's disks read its template's files on this host.
 */
export async function refuseMigrationOf(db: Db, vm: Pick<VmsTable, 'id' | 'name' | 'template' | 'linked_to'>): Promise<void> {
  refuseTemplate(vm, 'migrate');
  if (vm.linked_to)
    throw new NubisError('VM_HAS_SNAPSHOTS', `VM ${vm.name} is a linked clone: its disks read its template's files on this host, so it cannot migrate`);
  const snapshots = await db.selectFrom('vm_snapshots').select('name').where('vm_id', '=', vm.id).execute();
  if (snapshots.length > 0)
    throw new NubisError(
      'VM_HAS_SNAPSHOTS',
      `VM ${vm.name} has snapshots (${snapshots.map((s) => s.name).join(', ')}), which live in its host's files and cannot move with it; delete them first (nubis vm snapshot delete ${vm.name} NAME)`,
    );
}
