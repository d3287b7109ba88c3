/**
 * Console tickets: how a browser opens a VM's screen or serial console without putting the
 * user's token in a URL (a WebSocket cannot carry an Authorization header from a page, and URLs
 * end up in logs and histories). As Proxmox's VNC tickets: a ticket is random (256 bits), kept
 * here only as its sha256, valid for at most 30 s, good for one connection, and bound to the
 * user, the token (or login session) that asked for it, the VM and the kind of console. Using it
 * re-checks that token: a revoked or expired token, or one that lost vm.console, opens nothing.
 *
 * A ticket for the screen carries the display's one-time VNC password, handed to the VM's agent
 * when the ticket is used (host/vnc-relay.ts sets it in QEMU for that one connection).
 */
import { createHash } from 'node:crypto';
import { newVncPassword } from '../compute/vnc/vnc-auth.ts';
import { NubisError } from '../core/errors.ts';
import { newSecret } from '../core/ids.ts';
import type { Principal } from './authorize.ts';

export type ConsoleKind = 'vnc' | 'serial';

/** What a ticket was issued for: checked again when it is used. */
export interface ConsoleTicketGrant {
  kind: ConsoleKind;
  userId: string;
  tokenId: string;
  vmId: string;
  project: { id: string; name: string };
  /** The one-time VNC password of a `vnc` ticket. */
  vncPassword?: string;
}

/** A ticket as issued: shown once to its caller. */
export interface IssuedConsoleTicket {
  ticket: string;
  expiresAt: string;
  vncPassword?: string;
}

/** The longest a ticket lives, and the default. */
export const CONSOLE_TICKET_MAX_TTL_MS = 30_000;
/** Tickets kept at most (issued, used or expired, until swept): a flood of requests cannot grow memory without bound. */
const TICKETS_KEPT = 10_000;
/** A used or expired ticket is remembered this long past its expiry, so that its refusal says why. */
const REMEMBERED_MS = 60_000;

interface Entry {
  grant: ConsoleTicketGrant;
  expiresAtMs: number;
  usedAtMs?: number;
}

function sha256Hex(text: string): string {
  return createHash('sha256').update(text).digest('hex');
}

/** The tickets of this control plane, in memory (a restart forgets them, which only costs a new ticket). */
export class ConsoleTickets {
  readonly #entries = new Map<string, Entry>();
  readonly #ttlMs: number;
  readonly #now: () => number;

  /** `ttlMs`: how long a ticket lives (default and most 30 s); `now`: the clock (tests move it). */
  constructor(options: { ttlMs?: number; now?: () => number } = {}) {
    this.#ttlMs = Math.min(options.ttlMs ?? CONSOLE_TICKET_MAX_TTL_MS, CONSOLE_TICKET_MAX_TTL_MS);
    this.#now = options.now ?? Date.now;
  }

  /** A new ticket for `principal` to open the `kind` console of a VM (authorization was checked by the caller). */
  issue(principal: Principal, target: { kind: ConsoleKind; vmId: string; project: { id: string; name: string } }): IssuedConsoleTicket {
    this.#sweep();
    if (this.#entries.size >= TICKETS_KEPT)
      throw new NubisError('CONSOLE_TICKETS_EXHAUSTED', 'Too many console tickets are waiting to be used; try again in a minute');
    const ticket = newSecret('nubis_ctk');
    const vncPassword = target.kind === 'vnc' ? newVncPassword() : undefined;
    const expiresAtMs = this.#now() + this.#ttlMs;
    const grant: ConsoleTicketGrant = { ...target, userId: principal.userId, tokenId: principal.tokenId, ...(vncPassword ? { vncPassword } : {}) };
    this.#entries.set(sha256Hex(ticket), { grant, expiresAtMs });
    return { ticket, expiresAt: new Date(expiresAtMs).toISOString(), ...(vncPassword ? { vncPassword } : {}) };
  }

  /**
   * Uses `ticket` for a console of `kind`: its grant, or AUTH_TICKET_INVALID saying why not
   * (unknown, already used, expired, or for the other kind of console). A ticket is spent by
   * its first use, whether or not the checks after it pass.
   */
  redeem(ticket: string, kind: ConsoleKind): ConsoleTicketGrant {
    const entry = this.#entries.get(sha256Hex(ticket));
    const now = this.#now();
    if (!entry) throw new NubisError('AUTH_TICKET_INVALID', 'The console ticket is not valid; ask for a new one (POST /v1/vms/{vm}/console-ticket)');
    if (entry.usedAtMs !== undefined)
      throw new NubisError(
        'AUTH_TICKET_INVALID',
        `The console ticket was already used at ${new Date(entry.usedAtMs).toISOString()}; a ticket opens one console`,
      );
    entry.usedAtMs = now;
    if (entry.expiresAtMs <= now)
      throw new NubisError('AUTH_TICKET_INVALID', `The console ticket expired at ${new Date(entry.expiresAtMs).toISOString()}; ask for a new one`);
    if (entry.grant.kind !== kind)
      throw new NubisError('AUTH_TICKET_INVALID', `The console ticket is for the ${entry.grant.kind} console, not the ${kind} console`);
    return entry.grant;
  }

  /** Tickets held now (used and expired ones are forgotten a minute after their expiry). */
  get size(): number {
    return this.#entries.size;
  }

  #sweep(): void {
    const now = this.#now();
    for (const [hash, entry] of this.#entries) if (entry.expiresAtMs + REMEMBERED_MS <= now) this.#entries.delete(hash);
  }
}
