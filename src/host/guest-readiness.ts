/**
 * Readiness of a VM's guest: the `NUBIS-READY` line it prints on its serial console in each boot,
 * watched with `fs.watch` on the serial log, and the callers waiting for it.
 */
import { READINESS_PATTERN, waitForSerialLine } from '../compute/serial-log.ts';
import { messageOf } from '../core/errors.ts';

export interface GuestReadinessOptions {
  serialLog: string;
  /** How long a guest may take to print its readiness line before it is reported not ready. */
  timeoutMs: number;
  /** The guest printed its line, with the IPv4 addresses it reported. */
  onReady: (guestIps: string[]) => void;
  /** A watch that ended without the line (a timeout), for the log. */
  onGiveUp: (message: string) => void;
}

/** Watches one VM's serial log for the readiness line of its current boot. */
export class GuestReadiness {
  readonly #options: GuestReadinessOptions;
  #watch: AbortController | undefined;
  readonly #waiters = new Set<() => void>();

  constructor(options: GuestReadinessOptions) {
    this.#options = Object.freeze({ ...options });
  }

  /** Watches for the line from `fromOffset` of the serial log on (a new boot), ending any earlier watch. */
  async watch(fromOffset: number): Promise<void> {
    this.#watch?.abort();
    const controller = new AbortController();
    this.#watch = controller;
    try {
      const match = await waitForSerialLine(this.#options.serialLog, READINESS_PATTERN, {
        fromOffset,
        timeoutMs: this.#options.timeoutMs,
        signal: controller.signal,
      });
      this.#options.onReady(match[2] === 'none' ? [] : match[2].split(','));
    } catch (error) {
      if (!controller.signal.aborted) this.#options.onGiveUp(messageOf(error));
    } finally {
      if (this.#watch === controller) this.#watch = undefined;
      this.changed();
    }
  }

  /** Ends the watch (QEMU ended, the VM is deleted or let go). */
  abort(): void {
    this.#watch?.abort();
  }

  /** Readiness or QEMU's life changed: every waiting caller looks again. */
  changed(): void {
    for (const waiter of this.#waiters) waiter();
  }

  /**
   * Waits until `settle` returns a result (resolve) or an error (reject), asking it again on every
   * change; rejects with `onTimeout()` after `timeoutMs`.
   */
  wait<T>(timeoutMs: number, settle: () => T | Error | undefined, onTimeout: () => Error): Promise<T> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#waiters.delete(waiter);
        reject(onTimeout());
      }, timeoutMs);
      const waiter = (): void => {
        const outcome = settle();
        if (outcome === undefined) return;
        clearTimeout(timer);
        this.#waiters.delete(waiter);
        if (outcome instanceof Error) reject(outcome);
        else resolve(outcome);
      };
      this.#waiters.add(waiter);
      waiter();
    });
  }
}
