/**
 * A host agent in memory, for unit tests of the services that drive agents (VMs, migrations,
 * networks): it keeps the VMs it was told to create, records every call, and fails or holds a
 * call on cue, the way src/storage/pool/member-device.ts lets tests inject failing devices.
 * Never used outside tests: what it does is what a test needs, not what a host does.
 */
import { NubisError } from '../core/errors.ts';
import type { AgentClient, AgentStream, VmStatus } from './contract.ts';

type Method = keyof AgentClient;

export class FakeAgent implements AgentClient {
  readonly hostName: string;
  /** Every call, in order: the method and its arguments. */
  readonly calls: Array<{ method: Method; args: unknown[] }> = [];
  readonly vms = new Map<string, VmStatus>();
  readonly #failures = new Map<Method, Error>();
  readonly #holds = new Map<Method, Promise<void>>();
  /** The open streams' ends, by VM id: the VM's end (a stop, a delete) ends them as QEMU's sockets would. */
  readonly #streams = new Map<string, Set<(code: number, reason: string) => void>>();

  constructor(hostName: string) {
    this.hostName = hostName;
  }

  /** The next call of `method` throws `error`. */
  failNext(method: Method, error: Error): void {
    this.#failures.set(method, error);
  }

  /** Calls of `method` wait until the returned function is called. */
  hold(method: Method): () => void {
    let release!: () => void;
    this.#holds.set(method, new Promise<void>((resolve) => (release = resolve)));
    return () => {
      this.#holds.delete(method);
      release();
    };
  }

  /** Calls of `method` so far. */
  callsOf(method: Method): unknown[][] {
    return this.calls.filter((call) => call.method === method).map((call) => call.args);
  }

  async #enter(method: Method, args: unknown[]): Promise<void> {
    this.calls.push({ method, args });
    await this.#holds.get(method);
    const failure = this.#failures.get(method);
    if (failure) {
      this.#failures.delete(method);
      throw failure;
    }
  }

  #vm(id: string): VmStatus {
    const vm = this.vms.get(id);
    if (!vm) throw new NubisError('VM_NOT_FOUND', `VM ${id} is not on host ${this.hostName}`);
    return vm;
  }

  async #setState(method: Method, id: string, state: VmStatus['state'], args: unknown[] = []): Promise<VmStatus> {
    await this.#enter(method, [id, ...args]);
    const vm = this.#vm(id);
    vm.state = state;
    return { ...vm };
  }

  info: AgentClient['info'] = async () => ({ name: this.hostName, accelerator: 'tcg', acceleratorReason: 'fake', vms: [...this.vms.values()] });
  listVms: AgentClient['listVms'] = async () => [...this.vms.values()].map((vm) => ({ ...vm }));
  createVm: AgentClient['createVm'] = async (spec) => {
    await this.#enter('createVm', [spec]);
    if (this.vms.has(spec.id)) throw new NubisError('VM_EXISTS', `VM ${spec.id} already exists on this host`);
    const vm: VmStatus = { id: spec.id, name: spec.name, state: 'running', pid: 4242, startedAt: new Date().toISOString() };
    this.vms.set(spec.id, vm);
    return { ...vm };
  };
  vmStatus: AgentClient['vmStatus'] = async (id) => ({ ...this.#vm(id) });
  startVm: AgentClient['startVm'] = (id) => this.#setState('startVm', id, 'running');
  stopVm: AgentClient['stopVm'] = (id, request) => this.#setState('stopVm', id, 'stopped', [request]);
  rebootVm: AgentClient['rebootVm'] = (id, request) => this.#setState('rebootVm', id, 'running', [request]);
  pauseVm: AgentClient['pauseVm'] = (id) => this.#setState('pauseVm', id, 'paused');
  resumeVm: AgentClient['resumeVm'] = (id) => this.#setState('resumeVm', id, 'running');
  waitReady: AgentClient['waitReady'] = async (id, timeoutMs) => {
    await this.#enter('waitReady', [id, timeoutMs]);
    const vm = this.#vm(id);
    vm.readyAt = new Date().toISOString();
    vm.guestIps = [];
    return { ...vm };
  };
  deleteVm: AgentClient['deleteVm'] = async (id) => {
    await this.#enter('deleteVm', [id]);
    this.#vm(id);
    this.vms.delete(id);
    this.endStreams(id);
  };
  /**
   * A stream that echoes every frame back, opened a tick later when the VM is here (else ended
   * 4404 as the agent does). The call is recorded with its options (the VNC password).
   */
  openStream: AgentClient['openStream'] = (kind, id, options = {}) => {
    this.calls.push({ method: 'openStream', args: [kind, id, options] });
    let handlers: Parameters<AgentStream['listen']>[0] | undefined;
    let open = false;
    const ends = this.#streams.get(id) ?? new Set();
    this.#streams.set(id, ends);
    const end = (code: number, reason: string) => {
      if (!ends.delete(end)) return;
      open = false;
      handlers?.end(code, reason);
    };
    ends.add(end);
    setImmediate(() => {
      if (!this.vms.has(id)) end(4404, `VM ${id} is not on this host`);
      if (!ends.has(end)) return;
      open = true;
      handlers?.open();
    });
    return {
      send: (data) => setImmediate(() => open && handlers?.data(Buffer.from(data))),
      close: () => setImmediate(() => end(1000, '')),
      listen: (given) => (handlers = given),
    };
  };

  /** Ends the open streams of VM `id` (as its QEMU ending would), with `code`. */
  endStreams(id: string, code = 1000, reason = ''): void {
    for (const end of [...(this.#streams.get(id) ?? [])]) end(code, reason);
  }

  /** How many streams are open to VM `id`. */
  openStreams(id: string): number {
    return this.#streams.get(id)?.size ?? 0;
  }
  consoleLog: AgentClient['consoleLog'] = async (id, lines) => {
    await this.#enter('consoleLog', [id, lines]);
    return [`NUBIS-READY name=${this.#vm(id).name}`];
  };
  attachDisk: AgentClient['attachDisk'] = async (id, disk) => {
    await this.#enter('attachDisk', [id, disk]);
    return { ...this.#vm(id) };
  };
  detachDisk: AgentClient['detachDisk'] = async (id, diskId) => {
    await this.#enter('detachDisk', [id, diskId]);
    return { ...this.#vm(id) };
  };
  takeSnapshot: AgentClient['takeSnapshot'] = async (id, snapshot, withMemory) => {
    await this.#enter('takeSnapshot', [id, snapshot, withMemory]);
    return { disks: [], ...(withMemory ? { memoryBytes: 0 } : {}) };
  };
  rollbackSnapshot: AgentClient['rollbackSnapshot'] = async (id, snapshot, body) => {
    await this.#enter('rollbackSnapshot', [id, snapshot, body]);
    return { ...this.#vm(id) };
  };
  deleteSnapshot: AgentClient['deleteSnapshot'] = (id, snapshot) => this.#enter('deleteSnapshot', [id, snapshot]);
  sealTemplate: AgentClient['sealTemplate'] = (id) => this.#enter('sealTemplate', [id]);
  takeBackup: AgentClient['takeBackup'] = async (id, backup) => {
    await this.#enter('takeBackup', [id, backup]);
    return { disks: [], storedBytes: 0, catalogFiles: 0 };
  };
  pullRestoredDisks: AgentClient['pullRestoredDisks'] = async (id) => {
    await this.#enter('pullRestoredDisks', [id]);
    return { disks: [] };
  };
  setFirewall: AgentClient['setFirewall'] = (id, firewalls) => this.#enter('setFirewall', [id, firewalls]);
  setCpuControls: AgentClient['setCpuControls'] = async (id, controls) => {
    await this.#enter('setCpuControls', [id, controls]);
    return { ...this.#vm(id) };
  };
  setDiskLimits: AgentClient['setDiskLimits'] = async (id, diskId, limits) => {
    await this.#enter('setDiskLimits', [id, diskId, limits]);
    return { ...this.#vm(id) };
  };
  setNicBandwidth: AgentClient['setNicBandwidth'] = async (id, nicId, bandwidth) => {
    await this.#enter('setNicBandwidth', [id, nicId, bandwidth]);
    return { ...this.#vm(id) };
  };
  setMemory: AgentClient['setMemory'] = async (id, settings) => {
    await this.#enter('setMemory', [id, settings]);
    return { ...this.#vm(id) };
  };
  setCpus: AgentClient['setCpus'] = async (id, settings) => {
    await this.#enter('setCpus', [id, settings]);
    return { ...this.#vm(id) };
  };
  memoryReport: AgentClient['memoryReport'] = async (id) => {
    await this.#enter('memoryReport', [id]);
    return undefined;
  };
  prepareIncoming: AgentClient['prepareIncoming'] = async (id, request) => {
    await this.#enter('prepareIncoming', [id, request]);
    const vm: VmStatus = { id, name: request.spec.name, state: 'incoming' };
    this.vms.set(id, vm);
    return { ...vm };
  };
  activateIncoming: AgentClient['activateIncoming'] = (id) => this.#setState('activateIncoming', id, 'running');
  recoverIncoming: AgentClient['recoverIncoming'] = (id, uri) => this.#enter('recoverIncoming', [id, uri]);
  startMirrors: AgentClient['startMirrors'] = (id, request) => this.#enter('startMirrors', [id, request]);
  mirrors: AgentClient['mirrors'] = async (id) => {
    await this.#enter('mirrors', [id]);
    return [];
  };
  abortMirrors: AgentClient['abortMirrors'] = (id) => this.#enter('abortMirrors', [id]);
  migrate: AgentClient['migrate'] = async (id, request) => {
    await this.#enter('migrate', [id, request]);
    return { ...this.#vm(id) };
  };
  migrationStatus: AgentClient['migrationStatus'] = async (id) => {
    await this.#enter('migrationStatus', [id]);
    return { status: 'completed', 'total-time': 100, downtime: 10, ram: { transferred: 2 ** 21, remaining: 0, 'dirty-sync-count': 2 } };
  };
  pauseTimes: AgentClient['pauseTimes'] = async (id) => {
    await this.#enter('pauseTimes', [id]);
    return {};
  };
  startPostcopy: AgentClient['startPostcopy'] = (id) => this.#enter('startPostcopy', [id]);
  cancelMigration: AgentClient['cancelMigration'] = (id) => this.#enter('cancelMigration', [id]);
  sampleDirtyRate: AgentClient['sampleDirtyRate'] = async (id, seconds) => {
    await this.#enter('sampleDirtyRate', [id, seconds]);
    return 0;
  };
  setMigrationParameters: AgentClient['setMigrationParameters'] = (id, parameters) => this.#enter('setMigrationParameters', [id, parameters]);
  pauseMigration: AgentClient['pauseMigration'] = (id) => this.#enter('pauseMigration', [id]);
  resumeMigration: AgentClient['resumeMigration'] = (id, uri) => this.#enter('resumeMigration', [id, uri]);
  ensureDirPool: AgentClient['ensureDirPool'] = async (pool) => {
    await this.#enter('ensureDirPool', [pool]);
    return { path: `/fake/${pool}`, sizeBytes: 2 ** 34, freeBytes: 2 ** 33 };
  };
  dirPool: AgentClient['dirPool'] = async (pool) => ({ path: `/fake/${pool}`, sizeBytes: 2 ** 34, freeBytes: 2 ** 33 });
  removeDirPool: AgentClient['removeDirPool'] = (pool) => this.#enter('removeDirPool', [pool]);
  createDirVolume: AgentClient['createDirVolume'] = async (pool, volume, sizeBytes) => {
    await this.#enter('createDirVolume', [pool, volume, sizeBytes]);
    return { path: `/fake/${pool}/${volume}.qcow2`, sizeBytes, allocatedBytes: 0 };
  };
  copyDirVolume: AgentClient['copyDirVolume'] = async (pool, volume, from, linked) => {
    await this.#enter('copyDirVolume', [pool, volume, from, linked]);
    return { path: `/fake/${pool}/${volume}.qcow2`, sizeBytes: 2 ** 30, allocatedBytes: 0 };
  };
  dirVolume: AgentClient['dirVolume'] = async (pool, volume) => ({ path: `/fake/${pool}/${volume}.qcow2`, sizeBytes: 2 ** 30, allocatedBytes: 0 });
  deleteDirVolume: AgentClient['deleteDirVolume'] = (pool, volume) => this.#enter('deleteDirVolume', [pool, volume]);
  restoreBootDisk: AgentClient['restoreBootDisk'] = async (backup, disk) => {
    await this.#enter('restoreBootDisk', [backup, disk]);
    return { path: `/fake/restores/${backup}-${disk}.qcow2` };
  };
  removeRestoredDisk: AgentClient['removeRestoredDisk'] = (backup, disk) => this.#enter('removeRestoredDisk', [backup, disk]);
  restoreDirVolume: AgentClient['restoreDirVolume'] = async (pool, volume, request) => {
    await this.#enter('restoreDirVolume', [pool, volume, request.backup, request.disk]);
    return { path: `/fake/${pool}/${volume}.qcow2`, sizeBytes: 2 ** 30, allocatedBytes: 0 };
  };
  resizeDirVolume: AgentClient['resizeDirVolume'] = async (pool, volume, sizeBytes) => {
    await this.#enter('resizeDirVolume', [pool, volume, sizeBytes]);
    return { path: `/fake/${pool}/${volume}.qcow2`, sizeBytes, allocatedBytes: 0 };
  };
  applyNetwork: AgentClient['applyNetwork'] = async (spec) => {
    await this.#enter('applyNetwork', [spec]);
    return { bridge: `br-${spec.vni}`, vxlan: `vx-${spec.vni}` };
  };
  removeNetwork: AgentClient['removeNetwork'] = (networkId) => this.#enter('removeNetwork', [networkId]);
  probe: AgentClient['probe'] = async (networkId, request) => {
    await this.#enter('probe', [networkId, request]);
    return { exitCode: 0, stdout: '', stderr: '' };
  };
  shutdown: AgentClient['shutdown'] = (stopVms) => this.#enter('shutdown', [stopVms]);
}
