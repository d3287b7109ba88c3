/**
 * A VM's policies after it exists (post-copy, placement group, HA, autostart), and the
 * scheduler's view of it: where it could go, and where it has been.
 */
import { auditedTransaction } from '../audit/audit-context.ts';
import { notRestartable, type VmSpec } from '../compute/vm-spec.ts';
import { NubisError } from '../core/errors.ts';
import type { Db } from '../state/database.ts';
import type { Vm, VmBalancePolicy } from '../wire/schemas.ts';
import type { HostRegistry } from './hosts.ts';
import type { PlacementEvent, PlacementService } from './placement.ts';
import type { PlacementDecision } from './scheduler.ts';
import type { VmsTable } from '../state/schema.ts';
import { publishChange } from '../events/change-feed.ts';
import { type CpuControlFields, changesCpuControls, cpuControlsAfter } from './vm-cpu-controls.ts';
import { type DiskLimitFields, diskLimitChanges, withDiskLimits } from './vm-disk-limits.ts';
import { type NicBandwidthFields, nicBandwidthChanges, withNicBandwidth } from './vm-nic-bandwidth.ts';
import type { VmOwner } from './vm-owner.ts';
import { setVmCpus } from './vm-vcpus.ts';
import { changesMemory, type MemoryChange, readVmMemoryUsage, setVmMemory } from './vm-memory.ts';

/** What `vm set` changes. */
export interface VmChange extends CpuControlFields, MemoryChange {
  /** The vCPUs present (vm-vcpus.ts). */
  cpus?: number;
  diskLimits?: DiskLimitFields;
  nicBandwidth?: NicBandwidthFields;
  allowPostcopy?: boolean;
  group?: string;
  ha?: boolean;
  haPriority?: number;
  haGroup?: string;
  autostart?: boolean;
  bootOrder?: number;
  bootDelaySeconds?: number;
  balance?: VmBalancePolicy;
}

/** Refuses HA for a VM that could not restart on another host, saying why. */
export function requireRestartable(name: string, spec: VmSpec): void {
  const why = notRestartable(spec);
  if (why) throw new NubisError('VM_NOT_RESTARTABLE', `VM ${name} cannot be highly available: ${why}`);
}

/** `nubis schedule explain`: a VM of a size in a project, or an existing VM to migrate. */
export interface ScheduleQuestion {
  project?: string;
  cpus: number;
  memoryMb: number;
  host?: string;
  group?: string;
  networks?: boolean;
  vm?: string;
}

/** What the policies need of the VM service (its lookups; vms.ts builds this class). */
export interface VmLookup {
  row(ref: string, project?: string): Promise<VmsTable>;
  viewById(id: string): Promise<Vm>;
  projectId(name?: string): Promise<string>;
}

export class VmPolicies {
  readonly #db: Db;
  readonly #hosts: HostRegistry;
  readonly #placement: PlacementService;
  readonly #vms: VmLookup;
  readonly #owner: VmOwner;

  constructor(deps: { db: Db; hosts: HostRegistry; placement: PlacementService; vms: VmLookup; owner: VmOwner }) {
    this.#owner = deps.owner;
    this.#db = deps.db;
    this.#hosts = deps.hosts;
    this.#placement = deps.placement;
    this.#vms = deps.vms;
  }

  /**
   * Changes a VM's policies: whether live migration may use post-copy, and its placement group
   * (`''` leaves its group; joining a strict group is refused where the VM already breaks it).
   */
  async update(ref: string, project: string | undefined, change: VmChange): Promise<Vm> {
    const row = await this.#vms.row(ref, project);
    if (change.ha) requireRestartable(row.name, JSON.parse(row.spec) as VmSpec);
    // First, as the one thing here that can fail on the host: a refusal changes nothing.
    if (changesCpuControls(change) || change.diskLimits || change.nicBandwidth) await this.#tune(row, change);
    if (changesMemory(change)) await setVmMemory({ db: this.#db, hosts: this.#hosts, owner: this.#owner }, row, change);
    if (change.cpus !== undefined) await setVmCpus({ db: this.#db, hosts: this.#hosts, owner: this.#owner }, row, change.cpus);
    const haGroupId = change.haGroup === undefined ? undefined : change.haGroup === '' ? null : (await this.#placement.haGroups.row(change.haGroup)).id;
    let groupId: string | null | undefined;
    if (change.group !== undefined) {
      groupId = change.group === '' ? null : (await this.#placement.groups.row(change.group, project)).id;
      if (groupId) await this.#placement.checkJoin(groupId, { id: row.id, name: row.name, hostId: row.host_id });
    }
    await auditedTransaction(this.#db, (trx) =>
      trx
        .updateTable('vms')
        .set({
          ...(change.allowPostcopy !== undefined ? { allow_postcopy: change.allowPostcopy ? 1 : 0 } : {}),
          ...(groupId !== undefined ? { placement_group_id: groupId } : {}),
          ...(change.ha !== undefined ? { ha: change.ha ? 1 : 0 } : {}),
          ...(change.haPriority !== undefined ? { ha_priority: change.haPriority } : {}),
          ...(haGroupId !== undefined ? { ha_group_id: haGroupId } : {}),
          ...(change.autostart !== undefined ? { autostart: change.autostart ? 1 : 0 } : {}),
          ...(change.bootOrder !== undefined ? { boot_order: change.bootOrder } : {}),
          ...(change.bootDelaySeconds !== undefined ? { boot_delay_seconds: change.bootDelaySeconds } : {}),
          ...(change.balance !== undefined ? { balance: change.balance } : {}),
          updated_at: new Date().toISOString(),
        })
        .where('id', '=', row.id)
        .execute(),
    );
    publishChange(this.#db, 'vm', 'updated', row.id);
    return this.#vms.viewById(row.id);
  }

  /**
   * Changes the VM's resource controls (CPU controls, disk IO limits, NIC bandwidth): everything is checked
   * first, then its host applies each at once (live when it runs, and for every later start), and
   * the control plane's spec follows with what the host took, also when a later one fails. Claimed
   * from the VM's one owner as `tune`, so no start, stop or migration runs meanwhile.
   */
  async #tune(row: VmsTable, change: VmChange): Promise<void> {
    const claim = this.#owner.claim(row.id, 'tune', row.name);
    await claim.run(async () => {
      const current = await this.#db.selectFrom('vms').select(['spec', 'host_id']).where('id', '=', row.id).executeTakeFirstOrThrow();
      let spec = JSON.parse(current.spec) as VmSpec;
      const controls = changesCpuControls(change) ? cpuControlsAfter(spec.cpuControls, change, row) : spec.cpuControls;
      const disks = change.diskLimits ? diskLimitChanges(spec, change.diskLimits, row.name) : [];
      const nics = change.nicBandwidth ? nicBandwidthChanges(spec, change.nicBandwidth, row.name) : [];
      const agent = this.#hosts.agent(await this.#hosts.row(current.host_id));
      try {
        if (changesCpuControls(change)) {
          await agent.setCpuControls(row.id, controls ?? {});
          const { cpuControls: _old, ...rest } = spec;
          spec = controls ? { ...rest, cpuControls: controls } : rest;
        }
        for (const disk of disks) {
          await agent.setDiskLimits(row.id, disk.diskId, disk.limits);
          spec = withDiskLimits(spec, [disk]);
        }
        for (const nic of nics) {
          await agent.setNicBandwidth(row.id, nic.nicId, nic.bandwidth);
          spec = withNicBandwidth(spec, nic);
        }
      } finally {
        await this.#db
          .updateTable('vms')
          .set({ spec: JSON.stringify(spec) })
          .where('id', '=', row.id)
          .execute();
      }
    });
  }

  /** `vm` with its memory as its guest and host see it now, when it runs (one agent call: for one VM shown, not lists). */
  async withMemoryUsage(vm: Vm): Promise<Vm> {
    if (vm.state !== 'running' && vm.state !== 'paused') return vm;
    // The view names its host: no second read of the VM's record.
    const memoryUsage = await readVmMemoryUsage(this.#hosts, vm);
    return memoryUsage ? { ...vm, memoryUsage } : vm;
  }

  /** The scheduler's decision for a VM of a size, or (with `vm`) for migrating that VM, changing nothing. */
  async explainSchedule(question: ScheduleQuestion): Promise<PlacementDecision> {
    const projectId = await this.#vms.projectId(question.project);
    const onlyHost = question.host ? { ref: question.host, why: `--host ${question.host} was asked for` } : undefined;
    if (question.vm) {
      const row = await this.#vms.row(question.vm, question.project);
      return this.#placement.explain(this.#placement.movingNeeds(row, await this.#hosts.row(row.host_id), onlyHost));
    }
    return this.#placement.explain({
      projectId,
      cpus: question.cpus,
      memoryMb: question.memoryMb,
      ...(onlyHost ? { onlyHost } : {}),
      placementGroupId: question.group ? (await this.#placement.groups.row(question.group, question.project)).id : null,
      needsUnderlay: question.networks === true,
    });
  }

  /** Where the VM has run, with every decision. */
  async placementHistory(ref: string, project?: string): Promise<{ vm: string; project: string; events: PlacementEvent[]; count: number }> {
    const row = await this.#vms.row(ref, project);
    const events = await this.#placement.history(row.id);
    return { vm: row.name, project: project ?? 'default', events, count: events.length };
  }
}
