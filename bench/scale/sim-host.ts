/**
 * One simulated host of bench/scale: the VMs an agent would run, kept in memory and answered at
 * once (no QEMU). The statuses are the contract's `VmStatus` (src/agent-api/contract.ts), shaped
 * as the real agent reports a VM with no guest agent: id, name, state, pid and start time.
 */
import { NubisError } from '../../src/core/errors.ts';
import type { VmStatus } from '../../src/agent-api/contract.ts';
import type { DiskSpec, VmSpec } from '../../src/compute/vm-spec.ts';

/** Fake process ids, unique in the simulated cluster (a real agent reports QEMU's pid). */
let nextPid = 100_000;

/** A VM of a simulated host: what it was created from and what the host reports about it. */
interface SimVm {
  spec: VmSpec;
  status: VmStatus;
}

export class SimHost {
  readonly name: string;
  /** Where its agent API listens: `<dir>/<name>.sock`. */
  readonly socketPath: string;
  /** What it presents to the control plane (only its hash is kept there). */
  readonly agentToken: string;
  /** sha256 (hex) of what the control plane presents to it, learnt at join. */
  controlTokenSha256: string | undefined;
  readonly #vms = new Map<string, SimVm>();
  /** Called with every status that changed (the real agent's change reports). */
  readonly #onChange: (host: SimHost, status: VmStatus) => void;

  constructor(options: { name: string; socketPath: string; agentToken: string; onChange: (host: SimHost, status: VmStatus) => void }) {
    this.name = options.name;
    this.socketPath = options.socketPath;
    this.agentToken = options.agentToken;
    this.#onChange = options.onChange;
  }

  get vmCount(): number {
    return this.#vms.size;
  }

  /** Every VM's status, as a full report and `GET /agent/vms` give them. */
  list(): VmStatus[] {
    return [...this.#vms.values()].map((vm) => vm.status);
  }

  ids(): string[] {
    return [...this.#vms.keys()];
  }

  #vm(id: string): SimVm {
    const vm = this.#vms.get(id);
    if (!vm) throw new NubisError('VM_NOT_FOUND', `VM ${id} is not on host ${this.name}`);
    return vm;
  }

  status(id: string): VmStatus {
    return this.#vm(id).status;
  }

  spec(id: string): VmSpec {
    return this.#vm(id).spec;
  }

  /** Creates and "boots" a VM: running at once, as QEMU would be once started. */
  create(spec: VmSpec): VmStatus {
    if (this.#vms.has(spec.id)) throw new NubisError('VM_EXISTS', `VM ${spec.id} already exists on host ${this.name}`);
    const status: VmStatus = { id: spec.id, name: spec.name, state: 'running', pid: nextPid++, startedAt: new Date().toISOString() };
    this.#vms.set(spec.id, { spec, status });
    this.#onChange(this, status);
    return status;
  }

  /** Sets a VM's state as a lifecycle action would leave it. */
  setState(id: string, state: 'running' | 'stopped' | 'paused', options: { restarted?: boolean } = {}): VmStatus {
    const vm = this.#vm(id);
    const { pid: _pid, startedAt: _startedAt, readyAt: _readyAt, ...rest } = vm.status;
    if (state === 'stopped') vm.status = { ...rest, state };
    else if (options.restarted || vm.status.state === 'stopped') vm.status = { ...rest, state, pid: nextPid++, startedAt: new Date().toISOString() };
    else vm.status = { ...vm.status, state };
    this.#onChange(this, vm.status);
    return vm.status;
  }

  /** The guest "prints its readiness line" at once. */
  ready(id: string): VmStatus {
    const vm = this.#vm(id);
    vm.status = { ...vm.status, readyAt: new Date().toISOString(), guestIps: [] };
    this.#onChange(this, vm.status);
    return vm.status;
  }

  delete(id: string): void {
    this.#vm(id);
    this.#vms.delete(id);
  }

  attachDisk(id: string, disk: DiskSpec): VmStatus {
    const vm = this.#vm(id);
    vm.spec = { ...vm.spec, disks: [...vm.spec.disks, disk] };
    return vm.status;
  }

  detachDisk(id: string, diskId: string): VmStatus {
    const vm = this.#vm(id);
    vm.spec = { ...vm.spec, disks: vm.spec.disks.filter((disk) => disk.id !== diskId) };
    return vm.status;
  }
}
