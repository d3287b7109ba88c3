/**
 * Users and signing in: local users with a scrypt password and an optional TOTP second factor,
 * and users from an OpenID Connect provider (their groups map to roles through group bindings).
 * Signing in hands out a session token (kind `session`) that `logout` revokes.
 */
import { auditedTransaction } from '../audit/audit-context.ts';
import { NubisError } from '../core/errors.ts';
import { newId } from '../core/ids.ts';
import type { Db } from '../state/database.ts';
import type { UsersTable } from '../state/schema.ts';
import type { Principal } from './authorize.ts';
import type { OidcVerifier } from './oidc.ts';
import { DECOY_PASSWORD_HASH, hashPassword, verifyPassword } from './passwords.ts';
import { isLastPlatformAdmin } from './roles.ts';
import type { TokenStore, TokenView } from './tokens.ts';
import { newTotpSecret, totpUri, verifyTotp, verifyTotpStep } from './totp.ts';

export interface UserView {
  name: string;
  source: 'local' | 'oidc';
  totp: boolean;
  createdAt: string;
}

/** How long a session from `login` lasts unless the request asks for less. */
export const SESSION_HOURS = 12;
/** Failed sign-ins of one user name tolerated per window before it is locked for the window. */
const FAILED_LOGIN_LIMIT = 5;
const FAILED_LOGIN_WINDOW_MS = 15 * 60_000;
const FAILED_LOGIN_NAMES_KEPT = 10_000;

export class UserStore {
  readonly #db: Db;
  readonly #tokens: TokenStore;
  readonly #oidc: OidcVerifier | undefined;
  /** Recent failed sign-ins by user name: a guesser is slowed to a few tries per window. */
  readonly #failures = new Map<string, number[]>();

  constructor(db: Db, tokens: TokenStore, oidc?: OidcVerifier) {
    this.#db = db;
    this.#tokens = tokens;
    this.#oidc = oidc;
  }

  async row(name: string): Promise<UsersTable> {
    const row = await this.#db.selectFrom('users').selectAll().where('name', '=', name).executeTakeFirst();
    if (!row) throw new NubisError('USER_NOT_FOUND', `No user ${name}; see nubis user list`);
    return row;
  }

  async list(): Promise<UserView[]> {
    return (await this.#db.selectFrom('users').selectAll().orderBy('name').execute()).map(userView);
  }

  async create(name: string, password?: string): Promise<UserView> {
    if (await this.#db.selectFrom('users').select('id').where('name', '=', name).executeTakeFirst())
      throw new NubisError('USER_NAME_TAKEN', `A user named ${name} exists`);
    const row: UsersTable = {
      id: newId('usr'),
      name,
      password_hash: password === undefined ? null : await hashPassword(password),
      totp_secret: null,
      totp_enabled: 0,
      totp_last_step: null,
      oidc_subject: null,
      source: 'local',
      created_at: new Date().toISOString(),
    };
    await auditedTransaction(this.#db, (trx) => trx.insertInto('users').values(row).execute());
    return userView(row);
  }

  /** Deletes a user with its role bindings, and revokes every token it has. */
  async delete(name: string): Promise<void> {
    const user = await this.row(name);
    if (await isLastPlatformAdmin(this.#db, user.id))
      throw new NubisError('ACCESS_LAST_ADMIN', `${name} is the last platform admin; grant admin to another user first`);
    await auditedTransaction(this.#db, async (trx) => {
      await trx.deleteFrom('role_bindings').where('subject_type', '=', 'user').where('subject', '=', user.id).execute();
      await trx.updateTable('tokens').set({ revoked_at: new Date().toISOString() }).where('user_id', '=', user.id).where('revoked_at', 'is', null).execute();
      await trx.deleteFrom('users').where('id', '=', user.id).execute();
    });
    this.#tokens.invalidate();
  }

  /** Sets a local user's password; the user's sessions end (their tokens made by name stay). */
  async setPassword(name: string, password: string): Promise<void> {
    const user = await this.row(name);
    if (user.source !== 'local') throw new NubisError('USER_NOT_LOCAL', `${name} signs in through OpenID Connect and has no password here`);
    const sessions = await this.#db
      .selectFrom('tokens')
      .select('id')
      .where('user_id', '=', user.id)
      .where('kind', '=', 'session')
      .where('revoked_at', 'is', null)
      .execute();
    const passwordHash = await hashPassword(password);
    await auditedTransaction(this.#db, (trx) => trx.updateTable('users').set({ password_hash: passwordHash }).where('id', '=', user.id).execute());
    await this.#tokens.revoke(sessions.map((s) => s.id));
  }

  /**
   * Signs a local user in: password (always verified, also for an unknown name, so timing does
   * not tell which names exist), then the TOTP code when the user enrolled one. One message for
   * every wrong name or password.
   */
  async login(request: { user: string; password: string; totp?: string; hours?: number }): Promise<{ token: TokenView; secret: string }> {
    const user = await this.#checkPassword(request.user, request.password);
    if (user.totp_enabled && user.totp_secret) {
      if (!request.totp)
        throw new NubisError('AUTH_TOTP_REQUIRED', `${user.name} has a second factor: send the 6-digit code of the authenticator app (--totp)`);
      const step = verifyTotpStep(user.totp_secret, request.totp);
      // RFC 6238 5.2: a code is accepted once; a code seen (or one older than it) is refused.
      if (step === undefined || (user.totp_last_step !== null && step <= user.totp_last_step)) {
        this.#recordFailure(request.user);
        throw new NubisError('AUTH_LOGIN_FAILED', 'Wrong or already used one-time code; wait for the next code of the authenticator app');
      }
      await this.#db.updateTable('users').set({ totp_last_step: step }).where('id', '=', user.id).execute();
    }
    this.#failures.delete(request.user);
    return this.#session(user, new Date(Date.now() + Math.min(request.hours ?? SESSION_HOURS, SESSION_HOURS) * 3_600_000));
  }

  /** Proves a local user's current password (for changing it); failures count towards the lock as sign-ins do. */
  async verifyCurrentPassword(name: string, password: string): Promise<void> {
    await this.#checkPassword(name, password);
  }

  async #checkPassword(name: string, password: string): Promise<UsersTable> {
    this.#refuseLocked(name);
    const user = await this.#db.selectFrom('users').selectAll().where('name', '=', name).executeTakeFirst();
    const passwordOk = await verifyPassword(password, user?.password_hash ?? DECOY_PASSWORD_HASH);
    if (!user || !passwordOk || user.source !== 'local') {
      this.#recordFailure(name);
      throw new NubisError('AUTH_LOGIN_FAILED', 'Wrong user name or password');
    }
    return user;
  }

  /** Signs in with an ID token of the configured OpenID Connect provider; the user is made on first sign-in. */
  async loginOidc(idToken: string): Promise<{ token: TokenView; secret: string; groups: string[] }> {
    if (!this.#oidc) throw new NubisError('AUTH_OIDC_NOT_CONFIGURED', 'OpenID Connect is not configured; start Nubis with --oidc-issuer and --oidc-client-id');
    const identity = await this.#oidc.verifyIdToken(idToken);
    const subject = `${this.#oidc.issuer} ${identity.subject}`;
    let user = await this.#db.selectFrom('users').selectAll().where('name', '=', identity.username).executeTakeFirst();
    if (user && user.source !== 'oidc')
      throw new NubisError('AUTH_OIDC_INVALID', `A local user named ${identity.username} exists; an OpenID Connect identity cannot take it over`);
    // The name is the provider's preferred_username, which its users may change (OIDC Core 5.7): the
    // account stays bound to the subject that first signed in with it.
    if (user && user.oidc_subject !== subject)
      throw new NubisError('AUTH_OIDC_INVALID', `User ${identity.username} belongs to another identity of the provider; ask an admin to delete it first`);
    if (!user) {
      const created: UsersTable = {
        id: newId('usr'),
        name: identity.username,
        password_hash: null,
        totp_secret: null,
        totp_enabled: 0,
        totp_last_step: null,
        oidc_subject: subject,
        source: 'oidc',
        created_at: new Date().toISOString(),
      };
      await auditedTransaction(this.#db, (trx) => trx.insertInto('users').values(created).execute());
      user = created;
    }
    // The session ends with the ID token it came from (at most SESSION_HOURS from now).
    const until = new Date(Math.min(identity.expiresAt.getTime(), Date.now() + SESSION_HOURS * 3_600_000));
    const session = await this.#session(user, until, identity.groups);
    return { ...session, groups: identity.groups };
  }

  async #session(user: UsersTable, expiresAt: Date, groups?: string[]): Promise<{ token: TokenView; secret: string }> {
    const owner: Principal = { userId: user.id, userName: user.name, tokenId: '', tokenName: 'login', grants: [], tokenProjectId: null, tokenRole: null };
    return this.#tokens.create(owner, { name: `session-${new Date().toISOString().slice(0, 19)}`, kind: 'session', expiresAt, groups });
  }

  /** Starts TOTP enrolment: a new secret (shown once, as an otpauth:// URI), active after `confirmTotp`. */
  async enrollTotp(userId: string): Promise<{ secret: string; uri: string }> {
    const user = await this.#db.selectFrom('users').selectAll().where('id', '=', userId).executeTakeFirstOrThrow();
    if (user.source !== 'local') throw new NubisError('USER_NOT_LOCAL', `${user.name} signs in through OpenID Connect; its provider handles second factors`);
    const secret = newTotpSecret();
    await auditedTransaction(this.#db, (trx) => trx.updateTable('users').set({ totp_secret: secret, totp_enabled: 0 }).where('id', '=', userId).execute());
    return { secret, uri: totpUri(secret, user.name) };
  }

  /** Turns TOTP on once the user proves the authenticator app has the secret. */
  async confirmTotp(userId: string, code: string): Promise<void> {
    const user = await this.#db.selectFrom('users').selectAll().where('id', '=', userId).executeTakeFirstOrThrow();
    if (!user.totp_secret) throw new NubisError('AUTH_TOTP_NOT_ENROLLED', 'Start with nubis user totp enable, then confirm with a code');
    if (!verifyTotp(user.totp_secret, code)) throw new NubisError('AUTH_TOTP_WRONG', 'The code does not match; use the current code of the authenticator app');
    await auditedTransaction(this.#db, (trx) => trx.updateTable('users').set({ totp_enabled: 1 }).where('id', '=', userId).execute());
  }

  #refuseLocked(name: string): void {
    const recent = (this.#failures.get(name) ?? []).filter((at) => Date.now() - at < FAILED_LOGIN_WINDOW_MS);
    this.#failures.set(name, recent);
    if (recent.length >= FAILED_LOGIN_LIMIT)
      throw new NubisError(
        'AUTH_LOGIN_LOCKED',
        `Too many failed sign-ins for ${name}; try again in ${Math.ceil((recent[0] + FAILED_LOGIN_WINDOW_MS - Date.now()) / 60_000)} minutes`,
      );
  }

  #recordFailure(name: string): void {
    // Guessed names are attacker-chosen: the table forgets the oldest beyond a bound, not growing without end.
    if (this.#failures.size >= FAILED_LOGIN_NAMES_KEPT) this.#failures.delete(this.#failures.keys().next().value as string);
    this.#failures.set(name, [...(this.#failures.get(name) ?? []), Date.now()].slice(-FAILED_LOGIN_LIMIT));
  }
}

function userView(row: UsersTable): UserView {
  return { name: row.name, source: row.source, totp: row.totp_enabled === 1, createdAt: row.created_at };
}
