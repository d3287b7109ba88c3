/**
 * Placement: turns what a VM needs (its size, project, group, disks, networks) into a question
 * for the scheduler (scheduler.ts), asks it, and records every answer with its reasons, so
 * `nubis vm placement` can later show where a VM ran, when, why and on whose action.
 */
import type { Kysely } from 'kysely';
import { NubisError } from '../core/errors.ts';
import type { Db } from '../state/database.ts';
import type { Database, HostsTable, VmsTable } from '../state/schema.ts';
import { highestCpuOf, type VmSpec } from '../compute/vm-spec.ts';
import type { HostChange, HostRegistry, HostView } from './hosts.ts';
import type { PlacementReservation } from './host-usage.ts';
import { formatLabels, parseStoredLabels } from './labels.ts';
import { PlacementGroups } from './placement-groups.ts';
import { Residency } from './residency.ts';
import { HaGroups } from './ha-groups.ts';
import { explainPlacement, type GroupRule, type PlacementDecision, type ScheduleRequest, type SchedulerHost } from './scheduler.ts';

/** What moved a VM to a host. */
export type PlacementAction = 'create' | 'migrate' | 'evacuate' | 'restore' | 'balance' | 'ha-restart' | 'failback';

/** What a VM needs of its host, in the terms of the API. */
export interface PlacementNeeds {
  projectId: string;
  cpus: number;
  memoryMb: number;
  /** The VM placed (absent for a VM not yet recorded): it is not a member of its group's others. */
  vmId?: string;
  /** Only this host (name or id), and why: a `--host` pin or the host of its dir-pool disks. */
  onlyHost?: { ref: string; why: string };
  /** Not these hosts (by id): the source of a migration. */
  avoidHostIds?: string[];
  placementGroupId?: string | null;
  haGroupId?: string | null;
  needsUnderlay?: boolean;
  accelerator?: string;
  /** The host CPUs the VM is pinned to (`--cpu-pin`). */
  cpuPin?: string;
}

/** One placement of a VM, as `nubis vm placement` shows it. */
export interface PlacementEvent {
  at: string;
  host: string;
  action: string;
  actor?: string;
  decision: PlacementDecision;
}

export class PlacementService {
  readonly #db: Db;
  readonly #hosts: HostRegistry;
  readonly groups: PlacementGroups;
  readonly residency: Residency;
  readonly haGroups: HaGroups;

  constructor(deps: { db: Db; hosts: HostRegistry }) {
    this.#db = deps.db;
    this.#hosts = deps.hosts;
    this.groups = new PlacementGroups(deps.db);
    this.residency = new Residency(deps.db);
    this.haGroups = new HaGroups(deps);
  }

  /** Labels and overcommit ratios of a host, refused when its new labels break a project's residency rule. */
  async updateHost(ref: string, change: HostChange): Promise<HostView> {
    return this.#hosts.update(ref, change, (host, labels) =>
      this.residency.checkLabelChange(`host:${host.id}`, labels, `Labelling host ${host.name} ${formatLabels(labels)}`),
    );
  }

  /**
   * Refuses to put the VM `vmId`, running on `hostId`, into the strict group `groupId` when it
   * already breaks the group's rule there (it would have to move first).
   */
  async checkJoin(groupId: string, vm: { id: string; name: string; hostId: string }): Promise<void> {
    const hosts = await this.schedulerHosts();
    const rule = await this.#groupRule(groupId, vm.id);
    const host = hosts.find((h) => h.id === vm.hostId);
    if (!rule.strict || !host || rule.memberHostIds.size === 0) return;
    const decision = explainPlacement(hosts, { cpus: 0, memoryMb: 0, onlyHost: { id: host.id, why: 'it runs there' }, group: rule });
    const refusal = decision.refused.find((r) => r.filter === 'group' || r.filter === 'zone');
    if (refusal) throw new NubisError('PLACEMENT_GROUP_VIOLATED', `VM ${vm.name} cannot join group ${rule.name}: ${refusal.reason}; migrate it first`);
  }

  /**
   * What a recorded VM needs of another host (a migration, a restart elsewhere, a balancing
   * move): its size, group, networks and accelerator, anywhere but where it runs.
   */
  movingNeeds(vm: VmsTable, source: Pick<HostsTable, 'id' | 'accelerator'>, to?: { ref: string; why: string }): PlacementNeeds {
    const spec = JSON.parse(vm.spec) as VmSpec;
    return {
      projectId: vm.project_id,
      cpus: vm.cpus,
      memoryMb: vm.memory_mb,
      vmId: vm.id,
      ...(to ? { onlyHost: to } : {}),
      avoidHostIds: [source.id],
      placementGroupId: vm.placement_group_id,
      haGroupId: vm.ha_group_id,
      needsUnderlay: spec.nics.some((nic) => nic.network !== undefined),
      accelerator: source.accelerator,
      ...(spec.cpuControls?.pin !== undefined ? { cpuPin: spec.cpuControls.pin } : {}),
    };
  }

  /** The hosts as the scheduler sees them. */
  async schedulerHosts(): Promise<SchedulerHost[]> {
    await this.#hosts.refreshPlacement();
    return this.#hosts.schedulerHosts();
  }

  /** The scheduler's question for `needs`, with the project's requirements and the group's rule. */
  async request(needs: PlacementNeeds, hosts: readonly SchedulerHost[]): Promise<ScheduleRequest> {
    const project = await this.#db.selectFrom('projects').select(['name', 'requirements']).where('id', '=', needs.projectId).executeTakeFirstOrThrow();
    const requirements = parseStoredLabels(project.requirements);
    let onlyHost: ScheduleRequest['onlyHost'];
    if (needs.onlyHost) {
      const ref = needs.onlyHost.ref;
      const pinned = hosts.find((host) => host.name === ref || host.id === ref);
      if (!pinned) throw new NubisError('HOST_NOT_FOUND', `No host ${ref}; see nubis host list`);
      onlyHost = { id: pinned.id, why: needs.onlyHost.why };
    }
    return {
      cpus: needs.cpus,
      memoryMb: needs.memoryMb,
      ...(onlyHost ? { onlyHost } : {}),
      ...(needs.avoidHostIds?.length ? { avoidHostIds: new Set(needs.avoidHostIds) } : {}),
      requiredLabels: Object.entries(requirements).map(([key, value]) => ({ key, value, rule: `project ${project.name}'s residency rule` })),
      ...(needs.needsUnderlay ? { needsUnderlay: true } : {}),
      ...(needs.accelerator ? { accelerator: needs.accelerator } : {}),
      ...(needs.cpuPin !== undefined ? { cpuPin: { list: needs.cpuPin, highest: highestCpuOf(needs.cpuPin) } } : {}),
      ...(needs.placementGroupId ? { group: await this.#groupRule(needs.placementGroupId, needs.vmId) } : {}),
      ...(needs.haGroupId ? { haGroup: await this.#haGroup(needs.haGroupId) } : {}),
    };
  }

  async #groupRule(groupId: string, vmId: string | undefined): Promise<GroupRule> {
    const group = await this.#db.selectFrom('placement_groups').selectAll().where('id', '=', groupId).executeTakeFirstOrThrow();
    let members = this.#db.selectFrom('vms').select('host_id').where('placement_group_id', '=', groupId);
    if (vmId) members = members.where('id', '!=', vmId);
    const memberHostIds = new Set((await members.execute()).map((member) => member.host_id));
    return { name: group.name, policy: group.policy, scope: group.scope, strict: group.strict === 1, memberHostIds };
  }

  async #haGroup(groupId: string): Promise<NonNullable<ScheduleRequest['haGroup']>> {
    const group = await this.#db.selectFrom('ha_groups').selectAll().where('id', '=', groupId).executeTakeFirstOrThrow();
    return { name: group.name, hostIds: new Set(JSON.parse(group.hosts) as string[]), restricted: group.restricted === 1 };
  }

  /** Every host's fate for `needs`, changing nothing (`vm create --dry-run`, `nubis schedule explain`). */
  async explain(needs: PlacementNeeds): Promise<PlacementDecision> {
    const hosts = await this.schedulerHosts();
    return explainPlacement(hosts, await this.request(needs, hosts));
  }

  /**
   * The host for `needs` and the decision behind it. Throws `NO_HOST_FITS` naming, for every
   * host, the rule that refused it. With `reserve` (a create), the VM's share of the host is
   * reserved in the same turn as the decision, so that creates placed together never overcommit
   * a host; the caller settles the reservation (recorded, or released).
   */
  async place(
    needs: PlacementNeeds,
    what: string,
    options: { reserve?: boolean } = {},
  ): Promise<{ host: HostView; decision: PlacementDecision; reservation?: PlacementReservation }> {
    const known = await this.schedulerHosts();
    if (known.length === 0) throw new NubisError('NO_HOST_FITS', 'No host has joined yet; start one with nubis up');
    const request = await this.request(needs, known);
    // From here to the reservation nothing waits: the hosts count every share reserved so far.
    const decision = explainPlacement(this.#hosts.schedulerHosts(), request);
    if (!decision.hostId) {
      const reasons = decision.refused.map((refusal) => refusal.reason);
      throw new NubisError('NO_HOST_FITS', `No host can take ${what} (${needs.cpus} vCPUs, ${needs.memoryMb} MiB): ${reasons.join('; ')}`, {
        details: { reasons, refused: decision.refused },
      });
    }
    const reservation = options.reserve ? this.#hosts.reserve(decision.hostId, needs.cpus, needs.memoryMb) : undefined;
    return { host: this.#hosts.placementView(decision.hostId), decision, ...(reservation ? { reservation } : {}) };
  }

  /** Records that `vm` now runs on `host` (in `db`, which may be the transaction that moves it). */
  async record(
    db: Kysely<Database>,
    event: {
      vm: { id: string; name: string; projectId: string };
      host: { id: string; name: string };
      action: PlacementAction;
      actor?: string;
      decision: PlacementDecision;
    },
  ): Promise<void> {
    await db
      .insertInto('placement_events')
      .values({
        vm_id: event.vm.id,
        vm_name: event.vm.name,
        project_id: event.vm.projectId,
        host_id: event.host.id,
        host_name: event.host.name,
        action: event.action,
        actor: event.actor ?? null,
        at: new Date().toISOString(),
        decision: JSON.stringify(event.decision),
      })
      .execute();
  }

  /** Where the VM `vmId` has run, oldest first. */
  async history(vmId: string): Promise<PlacementEvent[]> {
    const rows = await this.#db.selectFrom('placement_events').selectAll().where('vm_id', '=', vmId).orderBy('seq').execute();
    return rows.map((row) => ({
      at: row.at,
      host: row.host_name,
      action: row.action,
      ...(row.actor ? { actor: row.actor } : {}),
      decision: JSON.parse(row.decision) as PlacementDecision,
    }));
  }
}

export function toSchedulerHost(view: HostView): SchedulerHost {
  return {
    id: view.id,
    name: view.name,
    status: view.status,
    labels: view.labels,
    cpus: view.cpus,
    memoryMb: view.memoryMb,
    allocatedCpus: view.allocatedCpus,
    allocatedMemoryMb: view.allocatedMemoryMb,
    cpuOvercommit: view.cpuOvercommit,
    memoryOvercommit: view.memoryOvercommit,
    accelerator: view.accelerator,
    ...(view.underlayIp ? { underlayIp: view.underlayIp } : {}),
  };
}
