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

export async function vmView(db: Db, storage: Pick<StorageCatalogue, 'disksOf'>, row: VmsTable): Promise<Vm> {
  const [host, image, project, haGroup] = await Promise.all([
    db.selectFrom('hosts').select(['name', 'accelerator']).where('id', '=', row.host_id).executeTakeFirst(),
    db.selectFrom('images').select('name').where('id', '=', row.image_id).executeTakeFirst(),
    db.selectFrom('projects').select('name').where('id', '=', row.project_id).executeTakeFirst(),
    row.ha_group_id ? db.selectFrom('ha_groups').select('name').where('id', '=', row.ha_group_id).executeTakeFirst() : undefined,
  ]);
  const status = JSON.parse(row.status) as Partial<VmStatus>;
  const spec = JSON.parse(row.spec) as VmSpec;
  const nics = await db
    .selectFrom('nics')
    .innerJoin('networks', 'networks.id', 'nics.network_id')
    .select(['networks.name', 'nics.mac', 'nics.ip'])
    .where('nics.vm_id', '=', row.id)
    .orderBy('nics.device_index')
    .execute();
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
    disks: (await storage.disksOf(row.id)).map((disk) => ({
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
