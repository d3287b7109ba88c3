/**
 * `vm clone TEMPLATE NAME [--linked]`: a new VM made of a template, on the template's host (its
 * disks are files there). A full clone copies the template's disks (`qemu-img convert`: the
 * clone needs nothing of the template afterwards); a linked clone gets qcow2 overlays whose
 * backing files are the template's disks (copy-on-write: instant, and only what the clone writes
 * takes space), so the template cannot be deleted while it has linked clones. The root disk of a
 * VM booted from an image is made by the host when the clone is created (host/vm-files.ts
 * `createBootOverlay`); each dir-pool volume of the template becomes a volume of the clone named
 * `<clone>-<volume>`, owned by the clone's project (its quota counts its full size). Storage-node
 * volumes are not cloned here (`nubis volume clone` does that), as VM snapshots do not cover them.
 */
import { NubisError } from '../core/errors.ts';
import type { VmSpec } from '../compute/vm-spec.ts';
import type { Db } from '../state/database.ts';
import type { Operation, VmCreateRequest } from '../wire/schemas.ts';
import type { HostRegistry } from './hosts.ts';
import type { StorageCatalogue } from './storage.ts';
import type { VmService } from './vms.ts';
import { networkNamesOf } from './vm-view.ts';

const NAME = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;

/** Makes VM `request.name` of template `templateRef` in `project` (see the file header). */
export async function cloneVm(
  deps: { db: Db; hosts: HostRegistry; storage: StorageCatalogue; vms: VmService },
  templateRef: string,
  request: { name: string; linked?: boolean },
  project?: string,
): Promise<Operation> {
  const { db, storage, vms } = deps;
  const template = await vms.row(templateRef, project);
  if (template.template !== 1)
    throw new NubisError(
      'VM_NOT_TEMPLATE',
      `VM ${template.name} is no template; make it one first (nubis vm stop ${template.name}; nubis vm template ${template.name})`,
    );
  const linked = request.linked ?? false;
  const spec = JSON.parse(template.spec) as VmSpec;
  const projectRef = { id: template.project_id, name: project ?? 'default' };
  const volumes = await storage.disksOf(template.id);
  const copies: Array<{ pool: string; source: string; name: string; sizeBytes: number }> = [];
  for (const { pool, volume } of volumes) {
    if (!(await storage.dirPools.find(pool)))
      throw new NubisError(
        'VM_SNAPSHOT_UNSUPPORTED',
        `Template ${template.name} has storage-node volume ${pool}/${volume}, which vm clone does not copy; clone it with nubis volume clone`,
      );
    const name = `${request.name}-${volume}`;
    if (!NAME.test(name))
      throw new NubisError('VALIDATION_FAILED', `The clone's copy of ${pool}/${volume} would be named ${name}, which is too long; choose a shorter name`);
    const row = await db.selectFrom('volume_owners').select('size_bytes').where('pool', '=', pool).where('volume', '=', volume).executeTakeFirst();
    copies.push({ pool, source: volume, name, sizeBytes: row?.size_bytes ?? 0 });
  }
  if (await db.selectFrom('vms').select('id').where('project_id', '=', template.project_id).where('name', '=', request.name).executeTakeFirst())
    throw new NubisError('VM_NAME_TAKEN', `A VM named ${request.name} exists in project ${projectRef.name}; choose another name or delete it first`);
  const made: typeof copies = [];
  try {
    for (const copy of copies) {
      const undo = await storage.owners.reserve(copy.pool, copy.name, projectRef, copy.sizeBytes);
      try {
        await storage.dirPools.copyVolume(copy.pool, copy.source, copy.name, linked);
      } catch (error) {
        await undo();
        throw error;
      }
      made.push(copy);
    }
    return await vms.create(await requestOf(db, template, spec, copies, request.name, project), {
      ...(spec.boot.kind === 'disk' ? { boot: { kind: 'disk', path: spec.boot.path, format: spec.boot.format, ...(linked ? {} : { copy: true }) } } : {}),
      ...(linked ? { linkedTo: template.id, ...(spec.unixUid !== undefined ? { templateUid: spec.unixUid } : {}) } : {}),
    });
  } catch (error) {
    for (const copy of made.reverse()) {
      await storage.dirPools.deleteVolume(copy.pool, copy.name).catch(() => undefined);
      await storage.owners.forget(copy.pool, copy.name);
    }
    throw error;
  }
}

/** The create request of a clone: the template's image, size and networks, on its host, with the copies as disks. */
async function requestOf(
  db: Db,
  template: Awaited<ReturnType<VmService['row']>>,
  spec: VmSpec,
  copies: Array<{ pool: string; name: string }>,
  name: string,
  project: string | undefined,
): Promise<VmCreateRequest> {
  const image = await db.selectFrom('images').select('name').where('id', '=', template.image_id).executeTakeFirstOrThrow();
  const host = await db.selectFrom('hosts').select('name').where('id', '=', template.host_id).executeTakeFirstOrThrow();
  const networks = await networkNamesOf(db, template.id);
  return {
    name,
    image: image.name,
    cpus: spec.cpus,
    memoryMb: template.memory_mb,
    host: host.name,
    ...(project ? { project } : {}),
    ...(networks.length > 0 ? { networks: networks.map((network) => ({ network })) } : {}),
    ...(copies.length > 0 ? { disks: copies.map((c) => `${c.pool}/${c.name}`) } : {}),
    waitReady: true,
  };
}
