/**
 * A VM as the API shows it: its record joined with its host, image, project, NICs and disks,
 * and what its host last reported, with the fields that only mean something while it runs
 * (pid, uptime, readiness, guest addresses) left out otherwise.
 */
import type { VmStatus } from '../agent-api/contract.ts';
import type { VmSpec } from '../compute/vm-spec.ts';
import type { Db } from '../state/database.ts';
import type { VmsTable } from '../state/schema.ts';
import type { Vm } from '../wire/schemas.ts';
import type { StorageCatalogue } from './storage.ts';

/** One VM as the API shows it. */
export async function vmView(db: Db, storage: Pick<StorageCatalogue, 'disksOfVms'>, row: VmsTable): Promise<Vm> {
  return (await vmViews(db, storage, [row]))[0];
}

/**
 * Many VMs as the API shows them, with a fixed number of queries whatever their count: the
 * hosts, images, projects, HA groups, NICs and disks they name are read once for all of them.
 */
export async function vmViews(db: Db, storage: Pick<StorageCatalogue, 'disksOfVms'>, rows: VmsTable[]): Promise<Vm[]> {
  if (rows.length === 0) return [];
  const ids = (pick: (row: VmsTable) => string | null) => [...new Set(rows.map(pick).filter((id): id is string => id !== null))];
  const haGroupIds = ids((row) => row.ha_group_id);
  const vmIds = rows.map((row) => row.id);
  const [hosts, images, projects, haGroups, nics, disks] = await Promise.all([
    db
      .selectFrom('hosts')
      .select(['id', 'name', 'accelerator'])
      .where(
        'id',
        'in',
        ids((row) => row.host_id),
      )
      .execute(),
    db
      .selectFrom('images')
      .select(['id', 'name'])
      .where(
        'id',
        'in',
        ids((row) => row.image_id),
      )
      .execute(),
    db
      .selectFrom('projects')
      .select(['id', 'name'])
      .where(
        'id',
        'in',
        ids((row) => row.project_id),
      )
      .execute(),
    haGroupIds.length > 0 ? db.selectFrom('ha_groups').select(['id', 'name']).where('id', 'in', haGroupIds).execute() : [],
    db
      .selectFrom('nics')
      .innerJoin('networks', 'networks.id', 'nics.network_id')
      .select(['nics.vm_id', 'networks.name', 'nics.mac', 'nics.ip'])
      .where('nics.vm_id', 'in', vmIds)
      .orderBy('nics.device_index')
      .execute(),
    storage.disksOfVms(vmIds),
  ]);
  const byId = <T extends { id: string }>(list: T[]) => new Map(list.map((item) => [item.id, item]));
  const [hostById, imageById, projectById, haGroupById] = [byId(hosts), byId(images), byId(projects), byId(haGroups)];
  const nicsByVm = new Map<string, typeof nics>();
  for (const nic of nics) nicsByVm.set(nic.vm_id, [...(nicsByVm.get(nic.vm_id) ?? []), nic]);
  return rows.map((row) =>
    viewOf(row, {
      host: hostById.get(row.host_id),
      image: imageById.get(row.image_id),
      project: projectById.get(row.project_id),
      haGroup: row.ha_group_id ? haGroupById.get(row.ha_group_id) : undefined,
      nics: nicsByVm.get(row.id) ?? [],
      disks: disks.get(row.id) ?? [],
    }),
  );
}

type Related = {
  host?: { name: string; accelerator: string };
  image?: { name: string };
  project?: { name: string };
  haGroup?: { name: string };
  nics: Array<{ name: string; mac: string; ip: string }>;
  disks: Array<{ deviceIndex: number; pool: string; volume: string }>;
};

function viewOf(row: VmsTable, { host, image, project, haGroup, nics, disks }: Related): Vm {
  const status = JSON.parse(row.status) as Partial<VmStatus>;
  const spec = JSON.parse(row.spec) as VmSpec;
  const running = row.actual_state === 'running' || row.actual_state === 'paused';
  return {
    id: row.id,
    name: row.name,
    project: project?.name ?? row.project_id,
    host: host?.name ?? row.host_id,
    image: image?.name ?? row.image_id,
    cpus: row.cpus,
    memoryMb: row.memory_mb,
    state: row.actual_state,
    desiredState: row.desired_state,
    accelerator: host?.accelerator ?? 'unknown',
    ready: running && Boolean(status.readyAt),
    ...(status.pid && running ? { pid: status.pid } : {}),
    ...(status.startedAt && running ? { startedAt: status.startedAt, uptimeSeconds: Math.floor((Date.now() - Date.parse(status.startedAt)) / 1000) } : {}),
    ...(status.readyAt && running ? { readyAt: status.readyAt } : {}),
    guestIps: running ? (status.guestIps ?? []) : [],
    nics: nics.map((nic) => ({ network: nic.name, mac: nic.mac, ip: nic.ip })),
    disks: disks.map((disk) => ({
      device: `vd${String.fromCharCode(97 + disk.deviceIndex)}`,
      volume: `${disk.pool}/${disk.volume}`,
    })),
    publish: spec.nics.flatMap((nic) => nic.forwards ?? []),
    ...(status.lastError ? { lastError: status.lastError } : {}),
    ...(status.crashLogTail && row.actual_state === 'crashed' ? { crashLogTail: status.crashLogTail } : {}),
    allowPostcopy: row.allow_postcopy === 1,
    ha: row.ha === 1,
    haPriority: row.ha_priority,
    ...(haGroup ? { haGroup: haGroup.name } : {}),
    autostart: row.autostart === 1,
    bootOrder: row.boot_order,
    bootDelaySeconds: row.boot_delay_seconds,
    balance: row.balance,
    createdAt: row.created_at,
  };
}
