/**
 * VMs as the API shows them: each record joined with its host, image, project, NICs and disks,
 * and what its host last reported, with the fields that only mean something while it runs
 * (pid, uptime, readiness, guest addresses) left out otherwise.
 *
 * A page of VMs costs one query per table, whatever its length (bench/scale lists pages of a
 * thousand): the related rows of every VM of the page are read together, then joined here.
 */
import type { VmStatus } from '../agent-api/contract.ts';
import type { VmSpec } from '../compute/vm-spec.ts';
import { sql } from 'kysely';
import { NubisError } from '../core/errors.ts';
import type { Db } from '../state/database.ts';
import type { VmsTable } from '../state/schema.ts';
import type { Vm } from '../wire/schemas.ts';
import { cpuControlFields } from './vm-cpu-controls.ts';
import { diskLimitFields } from './vm-disk-limits.ts';
import { nicBandwidthFields } from './vm-nic-bandwidth.ts';
import { memoryFields } from './vm-memory.ts';
import { vcpuFieldsOf } from './vm-vcpus.ts';

/** What the VMs of a page refer to, read with one query per table. */
interface Related {
  hosts: Map<string, { name: string; accelerator: string }>;
  images: Map<string, string>;
  projects: Map<string, string>;
  haGroups: Map<string, string>;
  nics: Map<string, Array<{ network: string; mac: string; ip: string }>>;
  disks: Map<string, Array<{ deviceIndex: number; pool: string; volume: string }>>;
}

/** VMs in one answer of the list, at most (a page of a thousand costs six queries and its JSON). */
export const VM_PAGE_MAX = 1000;
/**
 * VMs in one answer when the request does not say: a screenful and then some, answered in a few
 * milliseconds however many VMs there are (a page of a thousand takes tens: bench/scale); the CLI
 * asks for VM_PAGE_MAX a page, to walk the whole list in fewer requests.
 */
export const VM_PAGE_DEFAULT = 100;
/** VMs whose related rows are read together (the longest page of the list). */
const VIEWS_AT_ONCE = VM_PAGE_MAX;

/** One page of the VM list, and whether VMs come after it. */
export interface VmPage {
  vms: Vm[];
  more: boolean;
}

const distinct = (values: Array<string | null>): string[] => [...new Set(values.filter((value): value is string => value !== null))];

/** Groups `rows` by `key`, keeping their order. */
function groupBy<T>(rows: readonly T[], key: (row: T) => string): Map<string, T[]> {
  const groups = new Map<string, T[]>();
  for (const row of rows) {
    const list = groups.get(key(row));
    if (list) list.push(row);
    else groups.set(key(row), [row]);
  }
  return groups;
}

async function readRelated(db: Db, rows: readonly VmsTable[]): Promise<Related> {
  const vmIds = rows.map((row) => row.id);
  const hostIds = distinct(rows.map((row) => row.host_id));
  const imageIds = distinct(rows.map((row) => row.image_id));
  const projectIds = distinct(rows.map((row) => row.project_id));
  const haGroupIds = distinct(rows.map((row) => row.ha_group_id));
  const [hosts, images, projects, haGroups, nics, disks] = await Promise.all([
    db.selectFrom('hosts').select(['id', 'name', 'accelerator']).where('id', 'in', hostIds).execute(),
    db.selectFrom('images').select(['id', 'name']).where('id', 'in', imageIds).execute(),
    db.selectFrom('projects').select(['id', 'name']).where('id', 'in', projectIds).execute(),
    haGroupIds.length > 0 ? db.selectFrom('ha_groups').select(['id', 'name']).where('id', 'in', haGroupIds).execute() : [],
    db
      .selectFrom('nics')
      .innerJoin('networks', 'networks.id', 'nics.network_id')
      .select(['nics.vm_id', 'networks.name', 'nics.mac', 'nics.ip'])
      .where('nics.vm_id', 'in', vmIds)
      .orderBy('nics.vm_id')
      .orderBy('nics.device_index')
      .execute(),
    db.selectFrom('vm_disks').selectAll().where('vm_id', 'in', vmIds).orderBy('vm_id').orderBy('device_index').execute(),
  ]);
  return {
    hosts: new Map(hosts.map((host) => [host.id, host])),
    images: new Map(images.map((image) => [image.id, image.name])),
    projects: new Map(projects.map((project) => [project.id, project.name])),
    haGroups: new Map(haGroups.map((group) => [group.id, group.name])),
    nics: new Map([...groupBy(nics, (nic) => nic.vm_id)].map(([vmId, list]) => [vmId, list.map((nic) => ({ network: nic.name, mac: nic.mac, ip: nic.ip }))])),
    disks: new Map(
      [...groupBy(disks, (disk) => disk.vm_id)].map(([vmId, list]) => [
        vmId,
        list.map((disk) => ({ deviceIndex: disk.device_index, pool: disk.pool, volume: disk.volume })),
      ]),
    ),
  };
}

function toVm(row: VmsTable, related: Related, now: number): Vm {
  const host = related.hosts.get(row.host_id);
  const haGroup = row.ha_group_id ? related.haGroups.get(row.ha_group_id) : undefined;
  const status = JSON.parse(row.status) as Partial<VmStatus>;
  const spec = JSON.parse(row.spec) as VmSpec;
  const running = row.actual_state === 'running' || row.actual_state === 'paused';
  return {
    id: row.id,
    name: row.name,
    project: related.projects.get(row.project_id) ?? row.project_id,
    host: host?.name ?? row.host_id,
    image: related.images.get(row.image_id) ?? row.image_id,
    ...vcpuFieldsOf(spec),
    ...memoryFields(spec),
    state: row.actual_state,
    desiredState: row.desired_state,
    accelerator: host?.accelerator ?? 'unknown',
    ready: running && Boolean(status.readyAt),
    ...(status.pid && running ? { pid: status.pid } : {}),
    ...(status.startedAt && running ? { startedAt: status.startedAt, uptimeSeconds: Math.floor((now - Date.parse(status.startedAt)) / 1000) } : {}),
    ...(status.readyAt && running ? { readyAt: status.readyAt } : {}),
    guestIps: running ? (status.guestIps ?? []) : [],
    nics: related.nics.get(row.id) ?? [],
    disks: (related.disks.get(row.id) ?? []).map((disk) => ({
      device: `vd${String.fromCharCode(97 + disk.deviceIndex)}`,
      volume: `${disk.pool}/${disk.volume}`,
    })),
    publish: spec.nics.flatMap((nic) => nic.forwards ?? []),
    ...(status.lastError ? { lastError: status.lastError } : {}),
    ...(status.crashLogTail && row.actual_state === 'crashed' ? { crashLogTail: status.crashLogTail } : {}),
    allowPostcopy: row.allow_postcopy === 1,
    ha: row.ha === 1,
    haPriority: row.ha_priority,
    ...(haGroup ? { haGroup } : {}),
    autostart: row.autostart === 1,
    bootOrder: row.boot_order,
    bootDelaySeconds: row.boot_delay_seconds,
    balance: row.balance,
    ...cpuControlFields(spec),
    ...diskLimitFields(spec),
    ...nicBandwidthFields(spec),
    ...(spec.tpm ? { tpm: true } : {}),
    ...(spec.firmware ? { firmware: spec.firmware } : {}),
    ...(row.template ? { template: true } : {}),
    ...(row.linked_to ? { linkedTo: row.linked_to } : {}),
    createdAt: row.created_at,
  };
}

/** The views of `rows`, in their order: one query per related table, whatever their number. */
export async function vmViews(db: Db, rows: readonly VmsTable[]): Promise<Vm[]> {
  const views: Vm[] = [];
  // A page at a time: SQLite bounds the parameters of one statement.
  for (let from = 0; from < rows.length; from += VIEWS_AT_ONCE) {
    const chunk = rows.slice(from, from + VIEWS_AT_ONCE);
    const related = await readRelated(db, chunk);
    const now = Date.now();
    for (const row of chunk) views.push(toVm(row, related, now));
  }
  return views;
}

/** The view of one VM. */
export async function vmView(db: Db, row: VmsTable): Promise<Vm> {
  const [view] = await vmViews(db, [row]);
  return view;
}

/**
 * A page of the VMs of `projects` (ids, or `all`), by name then id: `limit` of them after the VM
 * `marker` (its id), with whether more follow. One query for the page (an index range, also deep
 * in the list) and one per related table.
 */
export async function vmPage(db: Db, projects: 'all' | string[], page: { limit: number; marker?: string }): Promise<VmPage> {
  const listed = () => {
    const from = db.selectFrom('vms');
    if (projects === 'all') return from;
    return projects.length > 0 ? from.where('project_id', 'in', projects) : from.where(sql<boolean>`0`);
  };
  let query = listed().selectAll();
  if (page.marker) {
    // Looked up among the VMs listed only: a marker tells nothing of another project's VMs.
    const after = await listed().select(['name', 'id']).where('id', '=', page.marker).executeTakeFirst();
    if (!after)
      throw new NubisError('VM_MARKER_NOT_FOUND', `No VM ${page.marker} among those listed (deleted since the previous page?); list again from the first page`);
    query = query.where((eb) => eb(eb.refTuple('name', 'id'), '>', eb.tuple(after.name, after.id)));
  }
  const rows = await query
    .orderBy('name')
    .orderBy('id')
    .limit(page.limit + 1)
    .execute();
  return { vms: await vmViews(db, rows.slice(0, page.limit)), more: rows.length > page.limit };
}

/** How many VMs there are, and how many of them run, counted in SQL (a summary builds no view). */
/** The names of the networks of VM `vmId`'s NICs, in device order (what a clone or a restore recreates). */
export async function networkNamesOf(db: Db, vmId: string): Promise<string[]> {
  const rows = await db
    .selectFrom('nics')
    .innerJoin('networks', 'networks.id', 'nics.network_id')
    .select('networks.name')
    .where('nics.vm_id', '=', vmId)
    .orderBy('nics.device_index')
    .execute();
  return rows.map((row) => row.name);
}

export async function vmCounts(db: Db): Promise<{ vms: number; running: number }> {
  const row = await db
    .selectFrom('vms')
    .select((eb) => [eb.fn.countAll<number>().as('vms'), eb.fn.sum<number>(sql`actual_state = 'running'`).as('running')])
    .executeTakeFirstOrThrow();
  return { vms: Number(row.vms), running: Number(row.running ?? 0) };
}
