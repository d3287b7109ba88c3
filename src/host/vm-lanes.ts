/**
 * The two ordered lanes of one managed VM, lifecycle and migration, and the rules between them:
 * which call is refused with `VM_BUSY`, which waits, and which passes. What the rules are and why
 * is written in the header of `managed-vm.ts`; this file only enforces them, so that a unit test
 * can check them without a VM.
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
