/**
 * The VM service of the control plane: validates and records desired state, places VMs, and
 * turns every lifecycle action into an operation that drives the VM's host agent. Changes to one
 * VM pass through its queue, one at a time.
 */
import type { Transaction } from 'kysely';
import { isNubisError, NubisError, messageOf } from '../core/errors.ts';
import { faultPoint } from '../core/fault-points.ts';
import { projectIdByName, type VisibleProjects } from './projects.ts';
import { enforceQuota } from '../access/quotas.ts';
import { newId } from '../core/ids.ts';
import type { DiskSpec, PortForward, VmSpec } from '../compute/vm-spec.ts';
import type { AgentClient, VmStatus } from '../agent-api/contract.ts';
import type { Db } from '../state/database.ts';
import { writeTransaction } from '../state/write-queue.ts';
import type { Database, HostsTable, ImagesTable, VmsTable } from '../state/schema.ts';
import type { HostRegistry, HostView } from './hosts.ts';
import type { ImageCatalogue } from './images.ts';
import type { OperationManager } from './operations.ts';
import type { NetworkService } from './networks.ts';
import type { SecurityGroupService } from './security-groups.ts';
import type { StorageCatalogue } from './storage.ts';
import type { PlacementNeeds, PlacementService } from './placement.ts';
import type { PlacementDecision } from './scheduler.ts';
import { VmReports } from './vm-reports.ts';
import { requireRestartable, VmPolicies } from './vm-policies.ts';
import { currentUser } from '../audit/audit-context.ts';
import { planDisks } from './vm-disk-plan.ts';
import { type AllocatedNic, type CreatePlan, createSpecOf } from './vm-create-spec.ts';
import { VmUidCounter } from './vm-uids.ts';
import { cpuControlsAfter } from './vm-cpu-controls.ts';
import { maxMemoryOf, memorySpecOf } from './vm-memory.ts';
import { maxCpusOfRequest, vcpuSpecOf } from './vm-vcpus.ts';
import { trustedLaunchFor } from './trusted-launch.ts';
import { checkPortsFree } from './published-ports.ts';
import { VM_PAGE_DEFAULT, VM_PAGE_MAX, type VmPage, vmCounts, vmPage, vmView } from './vm-view.ts';
import type { PlacementReservation } from './host-usage.ts';
import type { VmActionName, VmClaim, VmOwner } from './vm-owner.ts';
import type { OperationContext, OperationTarget } from './operations.ts';
import type { Operation, Vm, VmCreateRequest } from '../wire/schemas.ts';
import { publishChange } from '../events/change-feed.ts';
import { refuseTemplate, refuseTemplateInUse } from './vm-template-rules.ts';

/** How long the guest may take to print its readiness line under TCG on a busy 2-core host. */
const READY_TIMEOUT_MS = 180_000;

/**
 * Whether guests of this image print the NUBIS-READY line. The built-in images do; an imported
 * image is any OS, so for it an operation ends when QEMU runs.
 */
function announcesReadiness(image: ImagesTable): boolean {
  return image.builtin === 1;
}

export type VmAction = 'start' | 'stop' | 'reboot' | 'pause' | 'resume';

/** A clone's differences from a create (control/vm-clones.ts): its root disk made of its template's, and the template it reads. */
export interface VmCloneSource {
  boot?: VmSpec['boot'];
  linkedTo?: string;
  /** A linked clone's template's uid (VmSpec `templateUid`). */
  templateUid?: number;
}

type RecordedCreate = {
  id: string;
  request: VmCreateRequest;
  plan: CreatePlan;
  host: HostView;
  spec: VmSpec;
  decision: PlacementDecision;
  reservation: PlacementReservation;
  linkedTo?: string;
};
export { VM_PAGE_DEFAULT, VM_PAGE_MAX, type VmPage } from './vm-view.ts';

export class VmService {
  readonly #db: Db;
  readonly #hosts: HostRegistry;
  readonly #images: ImageCatalogue;
  readonly #operations: OperationManager;
  readonly #networks: NetworkService;
  readonly #secgroups: SecurityGroupService;
  readonly #storage: StorageCatalogue;
  readonly #owner: VmOwner;
  readonly #placement: PlacementService;
  readonly #uids: VmUidCounter;
  /** What host agents report, applied to the records. */
  readonly reports: VmReports;
  /** Policies of existing VMs and the scheduler's view of them. */
  readonly policies: VmPolicies;

  constructor(deps: {
    db: Db;
    hosts: HostRegistry;
    images: ImageCatalogue;
    operations: OperationManager;
    networks: NetworkService;
    secgroups: SecurityGroupService;
    storage: StorageCatalogue;
    owner: VmOwner;
    placement: PlacementService;
  }) {
    this.#owner = deps.owner;
    this.#placement = deps.placement;
    this.reports = new VmReports({ ...deps, view: (id) => this.#viewById(id), forget: (row, host) => this.#forget(row, host) });
    this.policies = new VmPolicies({ ...deps, vms: this });
    this.#secgroups = deps.secgroups;
    this.#storage = deps.storage;
    this.#db = deps.db;
    this.#hosts = deps.hosts;
    this.#images = deps.images;
    this.#operations = deps.operations;
    this.#networks = deps.networks;
    this.#uids = new VmUidCounter(deps.db);
  }

  /**
   * Runs `work` as an operation under `claim` (taken by the caller before any check, so that the
   * checks hold until the work runs). A failure to start the operation gives the claim back.
   */
  async #operate<T>(
    claim: VmClaim,
    target: OperationTarget,
    work: (op: OperationContext) => Promise<T>,
    record?: { within: (trx: Transaction<Database>) => Promise<void>; committed: () => void },
  ): Promise<Operation> {
    return this.#operations.startClaimed(claim, `vm.${claim.action}`, target, work, record);
  }

  /** Claims the VM of `row` for `action` (`VM_BUSY` when what is in progress refuses it). */
  #claim(row: Pick<VmsTable, 'id' | 'name'>, action: VmActionName): VmClaim {
    return this.#owner.claim(row.id, action, row.name);
  }

  async projectId(name = 'default'): Promise<string> {
    return projectIdByName(this.#db, name);
  }

  async #row(ref: string, project?: string): Promise<VmsTable> {
    const projectId = await this.projectId(project);
    const row = await this.#db
      .selectFrom('vms')
      .selectAll()
      // By name or id, but only within the project: a reference never reaches another project's resource.
      .where('project_id', '=', projectId)
      .where((eb) => eb.or([eb('name', '=', ref), eb('id', '=', ref)]))
      .executeTakeFirst();
    if (!row) throw new NubisError('VM_NOT_FOUND', `No VM ${ref} in project ${project ?? 'default'}; see nubis vm list`);
    return row;
  }

  #view(row: VmsTable): Promise<Vm> {
    return vmView(this.#db, row);
  }

  /**
   * A page of the VMs of `project`, or (without one) of the projects in `visible`, by name then
   * id: `limit` of them (VM_PAGE_DEFAULT unless said, VM_PAGE_MAX at most) after the VM `marker` (the id of the last one of
   * the previous page, as OpenStack's `marker`), with whether more follow.
   */
  async list(options: { project?: string; visible?: VisibleProjects; limit?: number; marker?: string } = {}): Promise<VmPage> {
    const projects = options.project ? [await this.projectId(options.project)] : (options.visible ?? 'all');
    return vmPage(this.#db, projects, { limit: Math.min(options.limit ?? VM_PAGE_DEFAULT, VM_PAGE_MAX), marker: options.marker });
  }

  /** How many VMs there are, and how many of them run (the cluster summary). */
  counts(): Promise<{ vms: number; running: number }> {
    return vmCounts(this.#db);
  }

  /** A VM by id, whatever its project: for the service's own follow-ups, never for a request's reference. */
  async #viewById(id: string): Promise<Vm> {
    return this.#view(await this.#db.selectFrom('vms').selectAll().where('id', '=', id).executeTakeFirstOrThrow());
  }

  async get(ref: string, project?: string): Promise<Vm> {
    return this.#view(await this.#row(ref, project));
  }

  /** The record of VM `ref` in `project` (by name or id, never another project's). */
  row(ref: string, project?: string): Promise<VmsTable> {
    return this.#row(ref, project);
  }

  /** A VM by id, whatever its project: for services' own follow-ups, never for a request's reference. */
  viewById(id: string): Promise<Vm> {
    return this.#viewById(id);
  }

  /**
   * Validates, places and records a new VM, then creates and boots it on its host in an
   * operation. Everything that can be refused is refused before anything is recorded.
   */
  async create(request: VmCreateRequest, clone?: VmCloneSource): Promise<Operation> {
    const plan = await this.#resolveCreate(request);
    await faultPoint('vm.create.before-placement');
    const placed = await this.#placement.place(this.#placementNeeds(request, plan), `VM ${request.name}`, { reserve: true });
    const { host, decision } = placed;
    const reservation = placed.reservation!;
    const id = newId('vm');
    // Claimed before anything is recorded: a VM still `pending` that nobody holds is one whose
    // create was interrupted (reconciled when its host reports).
    let claim: VmClaim | undefined;
    let bound: VmSpec | undefined;
    try {
      claim = this.#claim({ id, name: request.name }, 'create');
      const nics = await this.#allocateNics(id, plan, request.secgroups ?? []);
      const made = createSpecOf({ id, unixUid: await this.#uids.next() }, request, plan, nics, this.#images.filesOf(plan.image));
      const unbound = {
        ...made,
        ...(clone?.boot ? { boot: clone.boot } : {}),
        ...(clone?.templateUid !== undefined ? { templateUid: clone.templateUid } : {}),
      };
      if (request.ha) requireRestartable(request.name, unbound);
      const spec = await this.#storage.bindDisksToHost(unbound, host.name);
      bound = spec;
      let operation: Operation;
      try {
        // The VM is recorded with its create operation: a VM left `pending` by a control plane
        // that stopped always has the operation that says what became of it.
        operation = await this.#operate(
          claim,
          { type: 'vm', id, name: request.name, projectId: plan.projectId },
          (op) => this.#build(op, { id, request, plan, host, spec, nics }),
          {
            within: (trx) => this.#recordNew(trx, { id, request, plan, host, spec, decision, reservation, linkedTo: clone?.linkedTo }),
            committed: () => publishChange(this.#db, 'vm', 'created', id),
          },
        );
      } catch (error) {
        // Not recorded (a quota another create took meanwhile): its addresses and groups go back.
        await this.#networks.releaseNics(id);
        await this.#secgroups.unassign(id);
        throw error;
      }
      reservation.committed();
      return operation;
    } catch (error) {
      // Its share of the host goes back unless its record holds it now; its storage socket closes.
      reservation.release();
      claim?.release();
      if (bound) await this.#storage.releaseVmSocket(bound, host.name).catch(() => undefined);
      throw error;
    }
  }

  /**
   * What a create would do, changing nothing (`vm create --dry-run`): every check a create makes,
   * then the scheduler's decision for every host.
   */
  async planCreate(request: VmCreateRequest): Promise<PlacementDecision> {
    const plan = await this.#resolveCreate(request);
    return this.#placement.explain(this.#placementNeeds(request, plan));
  }

  #placementNeeds(request: VmCreateRequest, plan: CreatePlan): PlacementNeeds {
    return {
      projectId: plan.projectId,
      cpus: maxCpusOfRequest(request),
      memoryMb: maxMemoryOf(request),
      ...(plan.pinnedHost ? { onlyHost: plan.pinnedHost } : {}),
      placementGroupId: plan.placementGroupId,
      haGroupId: plan.haGroupId,
      needsUnderlay: plan.networks.length > 0,
      ...(request.cpuPin !== undefined ? { cpuPin: request.cpuPin } : {}),
    };
  }

  /** Everything a create can be refused for, checked before anything is recorded. */
  async #resolveCreate(request: VmCreateRequest): Promise<CreatePlan> {
    const projectId = await this.projectId(request.project);
    const image = await this.#images.row(request.image);
    vcpuSpecOf(request); // refused before anything is placed or allocated
    cpuControlsAfter(undefined, request, { name: request.name, cpus: maxCpusOfRequest(request) }); // likewise
    memorySpecOf(request); // likewise
    if (await this.#db.selectFrom('vms').select('id').where('project_id', '=', projectId).where('name', '=', request.name).executeTakeFirst()) {
      throw new NubisError(
        'VM_NAME_TAKEN',
        `A VM named ${request.name} exists in project ${request.project ?? 'default'}; choose another name or delete it first`,
      );
    }
    const forwards: PortForward[] = (request.publish ?? []).map((p) => ({
      protocol: p.protocol ?? 'tcp',
      hostAddress: p.hostAddress ?? '127.0.0.1',
      hostPort: p.hostPort,
      guestPort: p.guestPort,
    }));
    await checkPortsFree(this.#db, forwards);
    const networks = await Promise.all(
      (request.networks ?? []).map(async (nic) => ({ row: await this.#networks.row(nic.network, request.project), ip: nic.ip })),
    );
    if (networks.length > 0 && forwards.length > 0) {
      throw new NubisError(
        'VALIDATION_FAILED',
        'Published ports work on the user-mode NIC only; a VM on virtual networks is reached through them (or a network port forward)',
      );
    }
    if ((request.secgroups ?? []).length > 0 && networks.length === 0) {
      throw new NubisError('VALIDATION_FAILED', 'Security groups filter NICs on virtual networks; give the VM a --network too');
    }
    const project = { id: projectId, name: request.project ?? 'default' };
    const diskPlan = await planDisks(request, project, { storage: this.#storage, hosts: this.#hosts });
    // Refused early with nothing allocated; the check that counts is in the transaction that records the VM.
    await enforceQuota(this.#db, projectId, project.name, { vms: 1, cpus: maxCpusOfRequest(request), memoryMb: maxMemoryOf(request) });
    const placementGroupId = request.group ? (await this.#placement.groups.row(request.group, project)).id : null;
    const haGroupId = request.haGroup ? (await this.#placement.haGroups.row(request.haGroup)).id : null;
    const trustedLaunch = await trustedLaunchFor(this.#db, projectId, image.id, request.firmware);
    return { projectId, image, forwards, networks, placementGroupId, haGroupId, trustedLaunch, ...diskPlan };
  }

  /**
   * Addresses (and group memberships) are allocated before the VM is recorded, so a taken or
   * invalid address refuses the request with nothing to undo but the NICs allocated before it.
   */
  async #allocateNics(id: string, plan: CreatePlan, secgroups: string[]): Promise<AllocatedNic[]> {
    const nics: AllocatedNic[] = [];
    try {
      for (const [index, nic] of plan.networks.entries())
        nics.push({ nic: await this.#networks.allocateNic(nic.row, id, index, nic.ip), network: nic.row, firewall: undefined });
      await this.#secgroups.assign(id, plan.projectId, secgroups);
      const firewalls = await this.#secgroups.firewallOf(id);
      for (const allocated of nics) allocated.firewall = firewalls.find((f) => f.nicId === `net${allocated.nic.device_index}`);
      return nics;
    } catch (error) {
      await this.#networks.releaseNics(id);
      await this.#secgroups.unassign(id);
      throw error;
    }
  }

  /** The VM's record, its disks and its placement, in the transaction that records its create operation. */
  async #recordNew(trx: Transaction<Database>, c: RecordedCreate): Promise<void> {
    const { id, request, plan, host, spec } = c;
    const now = new Date().toISOString();
    // The quota check and the record are one transaction: parallel creates cannot pass a quota together.
    await enforceQuota(trx, plan.projectId, request.project ?? 'default', { vms: 1, cpus: maxCpusOfRequest(request), memoryMb: maxMemoryOf(request) });
    await trx
      .insertInto('vms')
      .values({
        id,
        project_id: plan.projectId,
        name: request.name,
        host_id: host.id,
        image_id: plan.image.id,
        cpus: maxCpusOfRequest(request),
        memory_mb: maxMemoryOf(request),
        desired_state: 'running',
        actual_state: 'pending',
        spec: JSON.stringify(spec),
        status: '{}',
        allow_postcopy: request.allowPostcopy === false ? 0 : 1,
        placement_group_id: plan.placementGroupId,
        ha: request.ha ? 1 : 0,
        ha_priority: request.haPriority ?? 0,
        ha_group_id: plan.haGroupId,
        autostart: request.autostart ? 1 : 0,
        boot_order: request.bootOrder ?? 0,
        boot_delay_seconds: request.bootDelaySeconds ?? 0,
        balance: request.balance ?? 'auto',
        unix_uid: spec.unixUid ?? null,
        template: 0,
        linked_to: c.linkedTo ?? null,
        created_at: now,
        updated_at: now,
      })
      .execute();
    await c.reservation.recordIn(trx);
    for (const [index, { pool, volume }] of plan.volumes.entries()) await this.#storage.recordDisk(id, index, pool, volume, trx);
    const actor = currentUser();
    await this.#placement.record(trx, {
      vm: { id, name: request.name, projectId: plan.projectId },
      host,
      action: 'create',
      ...(actor ? { actor } : {}),
      decision: c.decision,
    });
  }

  /** The create operation's work: networks plumbed, QEMU started on the host, the guest ready. */
  async #build(
    op: OperationContext,
    c: { id: string; request: VmCreateRequest; plan: CreatePlan; host: HostView; spec: VmSpec; nics: AllocatedNic[] },
  ): Promise<Vm> {
    const { id, request, plan, host, spec } = c;
    await faultPoint('vm.create.after-record');
    const hostRow = await this.#hosts.row(host.id);
    await op.report('placed', `Placed on host ${host.name} (${host.accelerator})`, 0.1, { host: host.name });
    try {
      for (const { network } of c.nics) {
        await op.report('network', `Plumbing network ${network.name} (VNI ${network.vni})`, 0.2);
        await this.#networks.sync(network.id, op.signal);
      }
      const status = await this.#hosts.agent(hostRow).createVm(spec, { timeoutMs: 60_000, signal: op.signal });
      await this.reports.applyStatus(hostRow.id, status);
      await faultPoint('vm.create.after-qemu-started');
      await op.report('started', `QEMU is running (pid ${status.pid})`, 0.4, { pid: status.pid });
    } catch (error) {
      // The host has nothing of it (the agent removes a VM that never started): forget it too.
      await this.#forget({ id, project_id: plan.projectId }, hostRow).catch((undoError) =>
        op.report('undo', `Could not undo everything: ${messageOf(undoError)}`, 0.4),
      );
      throw error;
    }
    // The other members of its groups now let the new VM in.
    if ((request.secgroups ?? []).length > 0) await this.#secgroups.refreshProject(plan.projectId);
    if (request.waitReady && announcesReadiness(plan.image)) await this.#waitReady(hostRow, id, request.name, op);
    return this.#viewById(id);
  }

  async #waitReady(
    host: HostsTable,
    id: string,
    _name: string,
    op: { report: (stage: string, message: string, progress: number, data?: unknown) => Promise<void>; signal: AbortSignal },
  ): Promise<void> {
    await op.report('booting', 'Waiting for the guest to print its readiness line', 0.5);
    const status = await this.#hosts.agent(host).waitReady(id, READY_TIMEOUT_MS, { timeoutMs: READY_TIMEOUT_MS + 10_000, signal: op.signal });
    await this.reports.applyStatus(host.id, status);
    const seconds = status.startedAt && status.readyAt ? ((Date.parse(status.readyAt) - Date.parse(status.startedAt)) / 1000).toFixed(1) : '?';
    await op.report('ready', `Guest ready after ${seconds} s (${(status.guestIps ?? []).join(', ') || 'no address'})`, 0.95, { guestIps: status.guestIps });
  }

  /** One lifecycle action on the VM's host agent, with a deadline past the guest's own. */
  #runAction(agent: AgentClient, id: string, action: VmAction, stop: { force: boolean; timeoutSeconds: number }, signal: AbortSignal): Promise<VmStatus> {
    const options = { timeoutMs: (stop.timeoutSeconds + 30) * 1000, signal };
    switch (action) {
      case 'start':
        return agent.startVm(id, options);
      case 'stop':
        return agent.stopVm(id, stop, options);
      case 'reboot':
        return agent.rebootVm(id, stop, options);
      case 'pause':
        return agent.pauseVm(id, options);
      case 'resume':
        return agent.resumeVm(id, options);
    }
  }

  /** Runs a lifecycle action on a VM as an operation. */
  async act(ref: string, action: VmAction, options: { project?: string; force?: boolean; timeoutSeconds?: number } = {}): Promise<Operation> {
    const row = await this.#row(ref, options.project);
    if (action !== 'stop') refuseTemplate(row, action);
    return this.#operate(this.#claim(row, action), { type: 'vm', id: row.id, name: row.name, projectId: row.project_id }, async (op) => {
      const host = await this.#hosts.row(row.host_id);
      if (action === 'start' || action === 'stop') {
        await this.#db
          .updateTable('vms')
          .set({ desired_state: action === 'start' ? 'running' : 'stopped' })
          .where('id', '=', row.id)
          .execute();
        publishChange(this.#db, 'vm', 'updated', row.id);
      }
      await op.report(action, `${action} on host ${host.name}`, 0.2);
      const status = await this.#runAction(
        this.#hosts.agent(host),
        row.id,
        action,
        { force: options.force ?? false, timeoutSeconds: options.timeoutSeconds ?? 30 },
        op.signal,
      );
      await this.reports.applyStatus(host.id, status);
      const image = await this.#images.row(row.image_id);
      if ((action === 'start' || action === 'reboot') && announcesReadiness(image)) await this.#waitReady(host, row.id, row.name, op);
      return this.#viewById(row.id);
    });
  }

  /** Attaches a volume to a VM (hot-plugged when it runs) as an operation. */
  async attachVolume(ref: string, volumeRef: string, project?: string): Promise<Operation> {
    const row = await this.#row(ref, project);
    refuseTemplate(row, 'have volumes attached');
    const [pool, volume] = volumeRef.split('/');
    if (!pool || !volume) throw new NubisError('VALIDATION_FAILED', `Write the volume as POOL/VOLUME, not ${volumeRef}`);
    const claim = this.#claim(row, 'attach');
    let deviceIndex: number;
    try {
      await this.#storage.owners.requireIn(pool, volume, { id: row.project_id, name: project ?? 'default' });
      await this.#storage.checkDiskFree(pool, volume);
      deviceIndex = Math.max(-1, ...(await this.#storage.disksOf(row.id)).map((d) => d.deviceIndex)) + 1;
      // Recorded first, so a second attach of the same volume is refused while this one runs.
      await this.#storage.recordDisk(row.id, deviceIndex, pool, volume);
    } catch (error) {
      claim.release();
      throw error;
    }
    return this.#operate(claim, { type: 'vm', id: row.id, name: row.name, projectId: row.project_id }, async (op) => {
      const host = await this.#hosts.row(row.host_id);
      const { disk: unbound, hostId } = await this.#storage.diskFor(pool, volume, `disk${deviceIndex}`);
      if (hostId && hostId !== host.id) {
        await this.#storage.forgetDisks(row.id, deviceIndex);
        throw new NubisError(
          'VALIDATION_FAILED',
          `Volume ${pool}/${volume} lives on ${(await this.#hosts.row(hostId)).name}, VM ${row.name} on ${host.name}; a dir-pool volume attaches on its own host only`,
        );
      }
      // The VM's storage socket serves the new volume from here on, beside the ones it has.
      const before = await this.#specOf(row.id);
      let disk: DiskSpec;
      try {
        disk = (await this.#storage.bindDisksToHost({ ...before, disks: [...before.disks, unbound] }, host.name)).disks.at(-1)!;
        await op.report('attaching', `Attaching ${pool}/${volume} on host ${host.name}`, 0.3);
        await this.#hosts.agent(host).attachDisk(row.id, disk, { signal: op.signal });
      } catch (error) {
        await this.#storage.forgetDisks(row.id, deviceIndex);
        await this.#storage
          .syncVmSocket(before, host.name, { ...before, disks: [...before.disks, unbound] })
          .catch((undoError: unknown) => op.report('undo', `The storage node may still serve ${pool}/${volume} to the VM: ${messageOf(undoError)}`, 0.3));
        throw error;
      }
      await this.#updateSpec(row.id, (spec) => ({ ...spec, disks: [...spec.disks, disk] }));
      return this.#viewById(row.id);
    });
  }

  /** The spec recorded for a VM. */
  async #specOf(id: string): Promise<VmSpec> {
    return JSON.parse((await this.#db.selectFrom('vms').select('spec').where('id', '=', id).executeTakeFirstOrThrow()).spec) as VmSpec;
  }

  /** Detaches a volume from a VM (the guest must release it when it runs) as an operation. */
  async detachVolume(ref: string, volumeRef: string, project?: string): Promise<Operation> {
    const row = await this.#row(ref, project);
    refuseTemplate(row, 'have volumes detached');
    const attached = (await this.#storage.disksOf(row.id)).find((d) => `${d.pool}/${d.volume}` === volumeRef);
    if (!attached) throw new NubisError('VM_DISK_NOT_FOUND', `Volume ${volumeRef} is not attached to VM ${row.name}; see nubis vm show ${row.name}`);
    return this.#operate(this.#claim(row, 'detach'), { type: 'vm', id: row.id, name: row.name, projectId: row.project_id }, async (op) => {
      const host = await this.#hosts.row(row.host_id);
      const diskId = `disk${attached.deviceIndex}`;
      await op.report('detaching', `Detaching ${volumeRef} on host ${host.name}`, 0.3);
      try {
        await this.#hosts.agent(host).detachDisk(row.id, diskId, { timeoutMs: 60_000, signal: op.signal });
      } catch (error) {
        // An earlier detach whose storage step failed left the disk gone from the host: carry on.
        if (!isNubisError(error, 'VM_DISK_NOT_FOUND')) throw error;
      }
      // The VM's storage socket stops serving the volume before it is free for another VM.
      const keep = (spec: VmSpec): VmSpec => ({ ...spec, disks: spec.disks.filter((d) => d.id !== diskId) });
      const before = await this.#specOf(row.id);
      await this.#storage.syncVmSocket(keep(before), host.name, before);
      await this.#storage.forgetDisks(row.id, attached.deviceIndex);
      await this.#updateSpec(row.id, keep);
      return this.#viewById(row.id);
    });
  }

  async #updateSpec(id: string, change: (spec: VmSpec) => VmSpec): Promise<void> {
    const row = await this.#db.selectFrom('vms').select('spec').where('id', '=', id).executeTakeFirstOrThrow();
    await this.#db
      .updateTable('vms')
      .set({ spec: JSON.stringify(change(JSON.parse(row.spec) as VmSpec)) })
      .where('id', '=', id)
      .execute();
    publishChange(this.#db, 'vm', 'updated', id);
  }

  /** Stops the VM if needed and removes it from its host and from the records. */
  async delete(ref: string, project?: string): Promise<Operation> {
    const claimed = await this.#row(ref, project);
    await refuseTemplateInUse(this.#db, claimed);
    return this.#operate(this.#claim(claimed, 'delete'), { type: 'vm', id: claimed.id, name: claimed.name, projectId: claimed.project_id }, async (op) => {
      // Read again: a delete queued behind a create runs once the create has ended.
      const row = await this.#db.selectFrom('vms').selectAll().where('id', '=', claimed.id).executeTakeFirst();
      if (!row) return { deleted: claimed.id };
      const host = await this.#hosts.row(row.host_id);
      await op.report('stopping', `Stopping and removing on host ${host.name}`, 0.3);
      // Its snapshots go with it: the folder holds the root disk's and the memory, volumes keep theirs otherwise.
      for (const { id } of await this.#db.selectFrom('vm_snapshots').select('id').where('vm_id', '=', row.id).execute())
        await this.#hosts
          .agent(host)
          .deleteSnapshot(row.id, id, { signal: op.signal })
          .catch(() => undefined);
      try {
        await this.#hosts.agent(host).deleteVm(row.id, { timeoutMs: 60_000, signal: op.signal });
      } catch (error) {
        if ((error as { code?: string }).code !== 'VM_NOT_FOUND') throw error;
      }
      await this.#forget(row, host);
      return { deleted: row.id };
    });
  }

  /**
   * Drops the record of a VM its host no longer has, and everything it held: its name, its
   * addresses and forwards, its groups, its volumes, its share of the host; networks only it
   * used on that host are unplugged there.
   */
  async #forget(row: Pick<VmsTable, 'id' | 'project_id'>, host: HostsTable): Promise<void> {
    const networkIds = [...new Set((await this.#networks.nicsOf(row.id)).map((nic) => nic.network_id))];
    // Its storage socket first: a failure leaves the record, and the next try releases it.
    const recorded = await this.#db.selectFrom('vms').select('spec').where('id', '=', row.id).executeTakeFirst();
    if (recorded) await this.#storage.releaseVmSocket(JSON.parse(recorded.spec) as VmSpec, host.name);
    // One transaction: a crash mid-way leaves the VM whole or gone, never an address without a VM.
    await writeTransaction(this.#db, async (trx) => {
      await this.#networks.dropForwardsOf(row.id, trx);
      await this.#networks.releaseNics(row.id, trx);
      await this.#secgroups.unassign(row.id, trx);
      await this.#storage.forgetDisks(row.id, undefined, trx);
      await trx.deleteFrom('vms').where('id', '=', row.id).execute();
    });
    publishChange(this.#db, 'vm', 'deleted', row.id, { projectId: row.project_id });
    await this.#secgroups.refreshProject(row.project_id);
    for (const networkId of networkIds) {
      await this.#networks.unplugHost(networkId, host);
      await this.#networks.sync(networkId);
    }
  }

  /** The last lines of the VM's serial console, from its host. */
  async log(ref: string, lines: number, project?: string): Promise<string[]> {
    const row = await this.#row(ref, project);
    const host = await this.#hosts.row(row.host_id);
    return this.#hosts.agent(host).consoleLog(row.id, lines);
  }

  /** Where to attach to the VM's console: its host agent and the VM id. */
  async consoleTarget(ref: string, project?: string): Promise<{ host: HostsTable; vmId: string }> {
    const row = await this.#row(ref, project);
    return { host: await this.#hosts.row(row.host_id), vmId: row.id };
  }
}
