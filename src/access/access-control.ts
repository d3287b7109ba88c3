/**
 * Access control as one service: who a request is (tokens), what roles exist and who holds them
 * (roles), users and signing in (users), and the connections that outlive a request (consoles,
 * event streams), which are checked again whenever access changes and closed the moment their
 * token is revoked, expires, or loses the permission they were opened with.
 */
import { NubisError } from '../core/errors.ts';
import type { Db } from '../state/database.ts';
import { type AccessTarget, authorize, type Decision, type Principal } from './authorize.ts';
import type { OidcVerifier } from './oidc.ts';
import type { Permission } from './permissions.ts';
import { type ConsoleKind, type ConsoleTicketGrant, ConsoleTickets } from './console-tickets.ts';
import { RoleStore } from './roles.ts';
import { TokenStore } from './tokens.ts';
import { UserStore } from './users.ts';

/** A connection open under a token: re-checked on every access change, closed when refused. */
interface LiveConnection {
  tokenId: string;
  /** Null: the connection needs only a valid token (the event stream filters what it sends). */
  permission: Permission | null;
  target: AccessTarget;
  close(reason: string): void;
  /** Told the principal as it is after an access change that did not close the connection. */
  changed?: (principal: Principal) => void;
  expiryTimer?: NodeJS.Timeout;
}

export class AccessControl {
  readonly tokens: TokenStore;
  readonly roles: RoleStore;
  readonly users: UserStore;
  readonly consoleTickets: ConsoleTickets;
  readonly #live = new Set<LiveConnection>();

  /** `consoleTicketTtlMs`: how long a console ticket lives (at most and by default 30 s). */
  constructor(db: Db, options: { oidc?: OidcVerifier; consoleTicketTtlMs?: number } = {}) {
    // Every access change (a revocation, a role granted or revoked, a user deleted) clears the
    // cached principals and re-checks the open consoles and streams: the stores say so, not each route.
    this.tokens = new TokenStore(db, () => void this.revalidate());
    this.roles = new RoleStore(db, () => this.tokens.invalidate());
    this.users = new UserStore(db, this.tokens, options.oidc);
    this.consoleTickets = new ConsoleTickets({ ttlMs: options.consoleTicketTtlMs });
  }

  /**
   * Who a console ticket stands for, as of now: the ticket is spent, then its token is checked
   * again (revoked, expired, its user deleted: refused). A bearer token sent along with it must
   * be the very token the ticket was issued to. The caller still checks vm.console (the ticket's
   * project) and the VM.
   */
  async redeemConsoleTicket(ticket: string, kind: ConsoleKind, bearer: string | undefined): Promise<{ principal: Principal; grant: ConsoleTicketGrant }> {
    const grant = this.consoleTickets.redeem(ticket, kind);
    if (bearer !== undefined) {
      const presenter = await this.tokens.authenticate(bearer);
      if (presenter.tokenId !== grant.tokenId)
        throw new NubisError(
          'ACCESS_DENIED',
          `The console ticket was issued to another ${presenter.userId === grant.userId ? 'token' : 'user'}; use it with the token that asked for it`,
        );
    }
    const principal = await this.tokens.authenticateId(grant.tokenId);
    if (principal.userId !== grant.userId) throw new NubisError('ACCESS_DENIED', 'The console ticket was issued to another user');
    return { principal, grant };
  }

  /** The decision, or ACCESS_DENIED (403) with its reason: the one gate every entry point passes. */
  check(principal: Principal, permission: Permission, target: AccessTarget): Decision {
    const decision = authorize(principal, permission, target);
    if (!decision.allowed)
      throw new NubisError('ACCESS_DENIED', decision.reason, { details: { permission, on: target === 'platform' ? 'platform' : target.project.name } });
    return decision;
  }

  /**
   * Registers a connection (console, event stream) opened by `principal` under `permission`;
   * it closes when the token expires or any later access change refuses it. A `null` permission
   * asks only that the token stays valid, and `changed` then hears the principal's new grants.
   * Returns the function that forgets it (call it when the connection closes).
   */
  watch(
    principal: Principal,
    permission: Permission | null,
    target: AccessTarget,
    close: (reason: string) => void,
    changed?: (principal: Principal) => void,
  ): () => void {
    const connection: LiveConnection = { tokenId: principal.tokenId, permission, target, close, changed };
    if (principal.expiresAt) {
      const delay = Math.max(0, new Date(principal.expiresAt).getTime() - Date.now());
      // setTimeout holds at most ~24.8 days; a longer token is re-checked at each access change anyway.
      if (delay < 2 ** 31 - 1) {
        connection.expiryTimer = setTimeout(() => this.#end(connection, `Token expired at ${principal.expiresAt}`), delay);
        connection.expiryTimer.unref();
      }
    }
    this.#live.add(connection);
    return () => {
      clearTimeout(connection.expiryTimer);
      this.#live.delete(connection);
    };
  }

  #end(connection: LiveConnection, reason: string): void {
    clearTimeout(connection.expiryTimer);
    this.#live.delete(connection);
    connection.close(reason);
  }

  /** Checks every open connection again (after a revocation, a deleted user, a revoked role); closes the refused ones. */
  async revalidate(): Promise<number> {
    let closed = 0;
    for (const connection of [...this.#live]) {
      let reason: string | undefined;
      try {
        const principal = await this.tokens.authenticateId(connection.tokenId);
        const decision = connection.permission ? authorize(principal, connection.permission, connection.target) : undefined;
        if (decision && !decision.allowed) reason = decision.reason;
        else connection.changed?.(principal);
      } catch (error) {
        reason = (error as Error).message;
      }
      if (reason) {
        this.#end(connection, reason);
        closed += 1;
      }
    }
    return closed;
  }

  /** How many connections are open under access control (for tests and status). */
  get liveConnections(): number {
    return this.#live.size;
  }
}
