/**
 * The two ordered lanes of one managed VM (`managed-vm.ts`), lifecycle and migration, and the
 * rules between them: which call is refused with `VM_BUSY`, which waits, and which passes. They
 * are enforced here, apart from the VM, so that a unit test can check them without one:
 *
 * - Lifecycle lane: create, start, stop, reboot, pause, resume, attach and detach a disk, delete,
 *   sampling the dirty rate, preparing and activating an incoming migration. While a migration is
 *   in progress here, a lifecycle action fails at once with `VM_BUSY` instead of waiting for it:
 *   a migration lasts minutes (post-copy recovery up to ten), far beyond one agent call, and the
 *   control plane's owner (`src/control/vm-owner.ts`) already refuses actions during a migration,
 *   so one that gets here is out of step, and waiting would only hide that. The steps of the
 *   migration itself are let through: `activateIncoming`, and `delete` of a destination (the
 *   control plane's rollback). A source's `delete` is refused while its stream runs: in post-copy
 *   part of the guest's memory is only here.
 *   "In progress" is, on a destination, from `prepareIncoming` until `activateIncoming` succeeds
 *   (or its QEMU ends); on a source, from `migrateOut` until QEMU's `query-migrate` says the
 *   stream ended (asked each time, in-band QMP being safe on a source, whose guest has all its
 *   pages). Disk mirrors alone do not count: stopping a VM whose disks are being mirrored loses
 *   nothing, and a control plane that died mid-mirror must not leave the VM busy for good.
 * - Migration lane: start the disk mirrors, start the stream, change its parameters, switch to
 *   post-copy, the pre-switchover step (ending the mirrors), cancel, abort the mirrors, and the
 *   post-copy recovery (pause, recover, resume). One at a time among themselves, but never behind
 *   a lifecycle action: a lifecycle action may wait on in-band QMP that a destination QEMU whose
 *   main loop waits for a missing page never answers (README "Post-copy risk"), and the recovery
 *   must still get through. On a destination only the recovery comes here, and it goes
 *   out-of-band with a 10 s timeout, so nothing in this lane waits on in-band QMP there. Nothing
 *   in this lane waits for the migration to progress: `migrateOut` returns once QEMU has started
 *   the stream, and the pre-switchover step is queued when QEMU's event says so. Starting the
 *   mirrors or the stream is refused with `VM_BUSY` while a lifecycle action runs or waits, so a
 *   migration never starts under a stop or a reboot.
 * - Not queued: `migrationStatus`, `diskMirrors`, `pauseTimes` and the status reads. They change
 *   nothing, and the control plane polls them throughout a migration; `pauseTimes` never asks
 *   QEMU at all.
 */
import { NubisError } from '../core/errors.ts';
import { KeyedSerialQueue } from '../core/serial-queue.ts';

const LIFECYCLE = 'lifecycle';
const MIGRATION = 'migration';

export interface VmLanesOptions {
  /** The VM's id and name, for messages. */
  id: string;
  name: () => string;
  /** Source: true while QEMU reports an outgoing migration stream in progress. */
  streamRuns: () => Promise<boolean>;
}

/** The lanes of one VM; every state-changing call of a `ManagedVm` runs in one of them. */
export class VmLanes {
  readonly #options: VmLanesOptions;
  readonly #queue = new KeyedSerialQueue();
  #incoming = false;
  #startingOutgoing = false;
  #removed = false;
  /** Lifecycle actions past their arrival but still in their arrival check, not yet queued. */
  #arriving = 0;

  constructor(options: VmLanesOptions) {
    this.#options = Object.freeze({ ...options });
  }

  /** True from the reservation of an incoming migration here until its activation (or its QEMU's end). */
  get incoming(): boolean {
    return this.#incoming;
  }

  set incoming(value: boolean) {
    this.#incoming = value;
  }

  /** The VM is gone from this host: calls still waiting in either lane fail with `VM_NOT_FOUND`. */
  markRemoved(): void {
    this.#removed = true;
    this.#incoming = false;
  }

  get removed(): boolean {
    return this.#removed;
  }

  /**
   * Runs a lifecycle action after the earlier ones. Refused with `VM_BUSY` while a migration is in
   * progress here, checked on arrival (so a refused call does not first wait in the queue) and
   * again at its turn; `duringIncoming` lets the steps of an incoming migration through.
   */
  lifecycle<T>(action: string, task: () => Promise<T>, options: { duringIncoming?: boolean } = {}): Promise<T> {
    const check = (): Promise<void> => this.#refuseWhileMigrating(action, options.duringIncoming ?? false);
    // Counted from arrival, so that a migration asked after it does not start first.
    this.#arriving++;
    const arrived = check().finally(() => this.#arriving--);
    return arrived.then(() =>
      this.#queue.run(LIFECYCLE, async () => {
        this.#refuseIfRemoved();
        await check();
        return task();
      }),
    );
  }

  /** Runs `task` in the lifecycle lane with no migration check (adoption, discarding leftovers). */
  lifecycleUnchecked<T>(task: () => Promise<T>): Promise<T> {
    return this.#queue.run(LIFECYCLE, task);
  }

  /**
   * Runs a migration-control call after the earlier ones of the migration lane, never behind a
   * lifecycle action. `starts` names a call that starts a migration (mirrors, stream): it is
   * refused with `VM_BUSY` while a lifecycle action runs or waits. `outgoing` marks the VM as
   * migrating away while `task` runs, before QEMU reports the stream.
   */
  migration<T>(task: () => Promise<T>, options: { starts?: string; outgoing?: boolean } = {}): Promise<T> {
    return this.#queue.run(MIGRATION, async () => {
      this.#refuseIfRemoved();
      // Checked and marked before any await, so no lifecycle action can slip in between.
      if (options.starts && (this.#arriving > 0 || this.#queue.busy(LIFECYCLE)))
        throw new NubisError('VM_BUSY', `VM ${this.#options.name()} is busy with another action; ${options.starts} must wait until it ends`);
      if (!options.outgoing) return task();
      this.#startingOutgoing = true;
      try {
        return await task();
      } finally {
        this.#startingOutgoing = false;
      }
    });
  }

  /** Resolves once every lifecycle action asked so far has ended. */
  async settled(): Promise<void> {
    await this.#queue.run(LIFECYCLE, async () => undefined);
  }

  async #refuseWhileMigrating(action: string, duringIncoming: boolean): Promise<void> {
    if (this.#incoming && !duringIncoming)
      throw new NubisError('VM_BUSY', `VM ${this.#options.name()} is migrating to this host; wait for the migration or cancel it before ${action}`);
    if (this.#startingOutgoing || (!this.#incoming && (await this.#options.streamRuns())))
      throw new NubisError('VM_BUSY', `VM ${this.#options.name()} is migrating away from this host; wait for the migration or cancel it before ${action}`);
  }

  /** A call that waited behind this VM's delete finds it gone, as one arriving after it would. */
  #refuseIfRemoved(): void {
    if (this.#removed) throw new NubisError('VM_NOT_FOUND', `VM ${this.#options.id} is not on this host`);
  }
}
