/**
 * The one owner of every VM in the control plane. Every action on a VM (user actions, create and
 * delete, attach and detach, migrate, and the HA restarts, balancer moves, backups and desktop
 * resets to come) first claims the VM here; the claim is taken synchronously, so two requests can
 * never both pass a check and then both act. What an action meets is one table, below: it is
 * refused with `VM_BUSY` naming what is in progress and its operation, or it waits its turn.
 */
import { NubisError } from '../core/errors.ts';

/** Everything that acts on a VM. */
export type VmActionName =
  | 'create'
  | 'start'
  | 'stop'
  | 'reboot'
  | 'pause'
  | 'resume'
  | 'delete'
  | 'attach'
  | 'detach'
  | 'tune'
  | 'snapshot'
  | 'migrate'
  | 'restart'
  | 'reset';

/** What a new action does when another is in progress or waiting on the same VM. */
export type Meeting = 'queue' | 'refuse';

const LIFECYCLE: VmActionName[] = ['start', 'stop', 'reboot', 'pause', 'resume'];

/**
 * `CONFLICTS[inProgress][requested]`. The rules: a VM being created or deleted takes nothing
 * else but a delete after its create; a migration takes nothing at all (cancel it first: the
 * VM's QEMU is moving and its record changes hands at the end); lifecycle and disk actions wait
 * for each other, one at a time, in the order asked; a migration asked for while anything else
 * is in progress is refused, not queued, since what it checked may no longer hold when its turn
 * comes; an HA restart or a desktop reset is asked for by the control plane itself, which tries
 * again on its next round rather than wait. The README shows the same table.
 */
export const CONFLICTS: Record<VmActionName, Record<VmActionName, Meeting>> = (() => {
  const all = (meeting: Meeting): Record<VmActionName, Meeting> => ({
    create: meeting,
    start: meeting,
    stop: meeting,
    reboot: meeting,
    pause: meeting,
    resume: meeting,
    delete: meeting,
    attach: meeting,
    detach: meeting,
    tune: meeting,
    snapshot: meeting,
    migrate: meeting,
    restart: meeting,
    reset: meeting,
  });
  const busyWithLifecycleOrDisks = { ...all('queue'), create: 'refuse', migrate: 'refuse', restart: 'refuse', reset: 'refuse' } satisfies Record<
    VmActionName,
    Meeting
  >;
  const table = {} as Record<VmActionName, Record<VmActionName, Meeting>>;
  table.create = { ...all('refuse'), delete: 'queue' };
  table.delete = all('refuse');
  table.migrate = all('refuse');
  // An HA restart (the VM's host failed, it boots elsewhere) takes nothing until it ends.
  table.restart = all('refuse');
  // A desktop reset (stop, fresh clone of its disk, start) takes nothing but a delete after it,
  // as a create does; it is asked for by the desktop broker, which tries again rather than wait.
  table.reset = { ...all('refuse'), delete: 'queue' };
  // `tune`: a change of its CPU controls (vm set), which its host applies at once; `snapshot`:
  // taking, rolling back or deleting a snapshot, or making it a template.
  for (const action of [...LIFECYCLE, 'attach', 'detach', 'tune', 'snapshot'] as VmActionName[]) table[action] = busyWithLifecycleOrDisks;
  return table;
})();

interface ClaimEntry {
  action: VmActionName;
  operationId?: string;
}

/** A VM claimed for one action: run the action through it, or release it when it never starts. */
export interface VmClaim {
  readonly vmId: string;
  readonly action: VmActionName;
  /** Names the operation carrying the action, for the refusals of others. */
  setOperation(operationId: string): void;
  /** Runs `work` once every earlier claim on the VM has ended; releases the claim after. */
  run<T>(work: () => Promise<T>): Promise<T>;
  /** Gives the claim up without running (the request was refused after claiming). */
  release(): void;
}

export class VmOwner {
  /** Per VM, the claims in the order taken: the first runs, the rest wait. */
  readonly #claims = new Map<string, ClaimEntry[]>();
  /** Per VM, the end of the last claim's turn. */
  readonly #tails = new Map<string, Promise<unknown>>();

  /**
   * Claims `vmId` for `action`, or throws `VM_BUSY` when an action in progress (or waiting)
   * refuses it. Synchronous on purpose: nothing can come between the check and the claim.
   */
  claim(vmId: string, action: VmActionName, vmName = vmId): VmClaim {
    const entries = this.#claims.get(vmId) ?? [];
    for (const other of entries) {
      if (CONFLICTS[other.action][action] === 'refuse') {
        const operation = other.operationId ? ` (operation ${other.operationId})` : '';
        throw new NubisError(
          'VM_BUSY',
          `VM ${vmName} is busy with ${other.action}${operation}; ${other.action === 'migrate' ? 'wait for it or cancel it' : 'wait for it'} before ${action}`,
          {
            details: { vm: vmName, inProgress: other.action, ...(other.operationId ? { operationId: other.operationId } : {}), requested: action },
          },
        );
      }
    }
    const entry: ClaimEntry = { action };
    entries.push(entry);
    this.#claims.set(vmId, entries);
    let released = false;
    const release = (): void => {
      if (released) return;
      released = true;
      const list = this.#claims.get(vmId) ?? [];
      const index = list.indexOf(entry);
      if (index >= 0) list.splice(index, 1);
      if (list.length === 0) this.#claims.delete(vmId);
    };
    return {
      vmId,
      action,
      setOperation: (operationId) => {
        entry.operationId = operationId;
      },
      run: <T>(work: () => Promise<T>): Promise<T> => {
        const previous = this.#tails.get(vmId) ?? Promise.resolve();
        const turn = previous.then(work, work).finally(release);
        const tail = turn.catch(() => undefined);
        this.#tails.set(vmId, tail);
        void tail.then(() => {
          if (this.#tails.get(vmId) === tail) this.#tails.delete(vmId);
        });
        return turn;
      },
      release,
    };
  }

  /** What is in progress or waiting on `vmId`, first the one running. */
  claimsOf(vmId: string): Array<{ action: VmActionName; operationId?: string }> {
    return (this.#claims.get(vmId) ?? []).map((entry) => ({ ...entry }));
  }

  /** True while any action holds or waits for `vmId`. */
  busy(vmId: string): boolean {
    return this.#claims.has(vmId);
  }
}
