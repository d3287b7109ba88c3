/**
 * API tokens: who a bearer token belongs to, what it may do, and until when. Only the sha256
 * of a secret is stored; the secret is shown once. A token acts as its user, narrowed to one
 * project and/or one role's permissions; it is never wider than its user (checked when it is
 * made, and again on every request by intersection in authorize()).
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { auditedTransaction } from '../audit/audit-context.ts';
import { NubisError } from '../core/errors.ts';
import { newId, newSecret } from '../core/ids.ts';
import type { Db } from '../state/database.ts';
import type { TokensTable } from '../state/schema.ts';
import { type Grant, type Principal, projectsWith } from './authorize.ts';
import { ALL_PERMISSIONS, PERMISSIONS, type Permission, scopeOf } from './permissions.ts';

export function sha256Hex(text: string): string {
  return createHash('sha256').update(text).digest('hex');
}

/** A token as its owner sees it: never the secret. */
export interface TokenView {
  id: string;
  name: string;
  user: string;
  kind: 'api' | 'session';
  project?: string;
  role?: string;
  createdAt: string;
  expiresAt?: string;
  revokedAt?: string;
  lastUsedAt?: string;
}

/** What `create` accepts: a name, and the limits that make the token narrower than its user. */
export interface TokenRequest {
  name: string;
  projectId?: string;
  roleId?: string;
  expiresAt?: Date;
  kind?: 'api' | 'session';
  groups?: string[];
}

/** How long last_used_at may lag: one write a minute per token, not one per request. */
const LAST_USED_RESOLUTION_MS = 60_000;
/** Principals kept between requests, at most (the table is cleared beyond it). */
const PRINCIPALS_CACHED = 10_000;

/** Bearer tokens: authentication of requests, and the tokens users make and revoke. */
export class TokenStore {
  readonly #db: Db;
  /**
   * Principals by token hash, so a request does not read its token, user and grants again. Every
   * change that could alter one (a revocation, a grant or revocation of a role, a user deleted, a
   * custom role deleted) passes through this process's stores and clears the table (`invalidate`),
   * so a change takes effect at the next request; expiry is checked on every hit.
   */
  readonly #principals = new Map<string, { principal: Principal; lastUsedAt: string }>();

  /** Told after every access change (AccessControl re-checks the open consoles and streams). */
  readonly #changed: () => void;

  constructor(db: Db, changed: () => void = () => undefined) {
    this.#db = db;
    this.#changed = changed;
  }

  /** Access changed: forgets the cached principals and says so. */
  invalidate(): void {
    this.#principals.clear();
    this.#changed();
  }

  /** Records that a token was used, at most once a minute per token (LAST_USED_RESOLUTION_MS). */
  async #touch(tokenId: string, lastUsedAt: string | null): Promise<string> {
    if (lastUsedAt && Date.now() - new Date(lastUsedAt).getTime() <= LAST_USED_RESOLUTION_MS) return lastUsedAt;
    const now = new Date().toISOString();
    await this.#db.updateTable('tokens').set({ last_used_at: now }).where('id', '=', tokenId).execute();
    return now;
  }

  /**
   * The principal a bearer secret stands for, or AUTH_* naming why not: unknown, revoked (and
   * when), expired (and when), or a token of a deleted user.
   */
  async authenticate(secret: string | undefined): Promise<Principal> {
    if (!secret)
      throw new NubisError(
        'AUTH_REQUIRED',
        'This request needs a bearer token: send Authorization: Bearer <token> (nubis login gives one; the first admin token is in the data folder, file admin-token)',
      );
    const hash = sha256Hex(secret);
    const cached = this.#principals.get(hash);
    if (cached && (!cached.principal.expiresAt || new Date(cached.principal.expiresAt) > new Date())) {
      cached.lastUsedAt = await this.#touch(cached.principal.tokenId, cached.lastUsedAt);
      return cached.principal;
    }
    const token = await this.#db
      .selectFrom('tokens')
      .leftJoin('users', 'users.id', 'tokens.user_id')
      .selectAll('tokens')
      .select('users.name as user_name')
      .where('secret_sha256', '=', hash)
      .executeTakeFirst();
    // The lookup is by hash; comparing again in constant time keeps a timing side channel off the stored hashes.
    if (!token || !timingSafeEqual(Buffer.from(token.secret_sha256), Buffer.from(hash)))
      throw new NubisError('AUTH_INVALID_TOKEN', 'The bearer token is not valid; sign in again with nubis login (or use a token from nubis token create)');
    const principal = await this.#principalIfValid(token, token.user_name);
    if (this.#principals.size >= PRINCIPALS_CACHED) this.#principals.clear();
    this.#principals.set(hash, { principal, lastUsedAt: new Date().toISOString() });
    return principal;
  }

  /** The principal of token `id` as of now: for connections that outlive a request (a console re-checks it). */
  async authenticateId(id: string): Promise<Principal> {
    const token = await this.#db
      .selectFrom('tokens')
      .leftJoin('users', 'users.id', 'tokens.user_id')
      .selectAll('tokens')
      .select('users.name as user_name')
      .where('tokens.id', '=', id)
      .executeTakeFirst();
    if (!token) throw new NubisError('AUTH_INVALID_TOKEN', 'The token no longer exists');
    return this.#principalIfValid(token, token.user_name);
  }

  /** The principal of a token and its user's name (null: the user was deleted), or why not. */
  async #principalIfValid(token: TokensTable, userName: string | null): Promise<Principal> {
    if (!token.user_id)
      throw new NubisError('AUTH_INVALID_TOKEN', 'The bearer token is not valid; sign in again with nubis login (or use a token from nubis token create)');
    if (token.revoked_at)
      throw new NubisError('AUTH_TOKEN_REVOKED', `Token ${token.name} was revoked at ${token.revoked_at}; sign in again or make a new token`);
    const now = new Date();
    if (token.expires_at && new Date(token.expires_at) <= now)
      throw new NubisError('AUTH_TOKEN_EXPIRED', `Token ${token.name} expired at ${token.expires_at}; sign in again or make a new token`);
    if (userName === null) throw new NubisError('AUTH_INVALID_TOKEN', `The user of token ${token.name} no longer exists`);
    const user = { id: token.user_id, name: userName };
    await this.#touch(token.id, token.last_used_at);
    const principal = await this.principalOf(token, user);
    return token.expires_at ? { ...principal, expiresAt: token.expires_at } : principal;
  }

  /** The principal of a token row (its user's grants, then the token's own limits). */
  async principalOf(token: TokensTable, user: { id: string; name: string }): Promise<Principal> {
    const groups = token.groups ? (JSON.parse(token.groups) as string[]) : [];
    const grants = await this.grantsOf(user.id, groups);
    let tokenRole: Principal['tokenRole'] = null;
    if (token.role_id) {
      const role = await this.#db.selectFrom('roles').select(['name', 'permissions']).where('id', '=', token.role_id).executeTakeFirst();
      // A token limited to a role that was deleted since can do nothing.
      tokenRole = { name: role?.name ?? '(deleted role)', permissions: new Set(role ? (JSON.parse(role.permissions) as string[]) : []) };
    }
    return {
      userId: user.id,
      userName: user.name,
      tokenId: token.id,
      tokenName: token.name,
      grants,
      tokenProjectId: token.project_id,
      tokenRole,
      ...(groups.length > 0 ? { groups } : {}),
    };
  }

  /** The grants of a user: its own bindings and those of its OpenID Connect groups. */
  async grantsOf(userId: string, groups: readonly string[] = []): Promise<Grant[]> {
    const rows = await this.#db
      .selectFrom('role_bindings')
      .innerJoin('roles', 'roles.id', 'role_bindings.role_id')
      .select(['role_bindings.subject_type', 'role_bindings.subject', 'role_bindings.project_id', 'roles.name', 'roles.permissions'])
      .where((eb) =>
        eb.or([
          eb.and([eb('role_bindings.subject_type', '=', 'user'), eb('role_bindings.subject', '=', userId)]),
          ...(groups.length > 0 ? [eb.and([eb('role_bindings.subject_type', '=', 'group'), eb('role_bindings.subject', 'in', [...groups])])] : []),
        ]),
      )
      .execute();
    return rows.map((row) => ({
      role: row.name,
      projectId: row.project_id,
      permissions: new Set(JSON.parse(row.permissions) as string[]),
      via: row.subject_type === 'user' ? 'user' : (`group:${row.subject}` as const),
    }));
  }

  /**
   * Makes a token for `owner`; the secret is returned once. Refused (TOKEN_TOO_WIDE) when its
   * role holds a permission its user does not hold where the token acts.
   */
  async create(owner: Principal, request: TokenRequest): Promise<{ token: TokenView; secret: string }> {
    if (request.roleId || request.projectId) this.#refuseWider(owner, request, await this.#rolePermissions(request.roleId));
    const taken = await this.#db
      .selectFrom('tokens')
      .select('id')
      .where('user_id', '=', owner.userId)
      .where('name', '=', request.name)
      .where('revoked_at', 'is', null)
      .where('kind', '=', request.kind ?? 'api')
      .executeTakeFirst();
    if (taken && (request.kind ?? 'api') === 'api')
      throw new NubisError(
        'TOKEN_NAME_TAKEN',
        `You have a token named ${request.name}; revoke it first (nubis token revoke ${request.name}) or pick another name`,
      );
    // A token made from a session of an OpenID Connect user carries the session's groups (its
    // roles come partly from them), and ends no later than the session: the groups are as the
    // provider said at sign-in, and are not trusted beyond that sign-in's lifetime.
    const groups = request.groups ?? (owner.groups && owner.groups.length > 0 ? [...owner.groups] : undefined);
    let expiresAt = request.expiresAt;
    if (groups && !request.groups && owner.expiresAt && (!expiresAt || expiresAt > new Date(owner.expiresAt))) expiresAt = new Date(owner.expiresAt);
    const secret = newSecret('nubis_tok');
    const row: TokensTable = {
      id: newId('tok'),
      name: request.name,
      secret_sha256: sha256Hex(secret),
      role: 'user',
      created_at: new Date().toISOString(),
      user_id: owner.userId,
      kind: request.kind ?? 'api',
      project_id: request.projectId ?? null,
      role_id: request.roleId ?? null,
      groups: groups ? JSON.stringify(groups) : null,
      expires_at: expiresAt?.toISOString() ?? null,
      revoked_at: null,
      last_used_at: null,
    };
    await auditedTransaction(this.#db, (trx) => trx.insertInto('tokens').values(row).execute());
    return { token: (await this.#views([row]))[0], secret };
  }

  async #rolePermissions(roleId: string | undefined): Promise<string[] | undefined> {
    if (!roleId) return undefined;
    const role = await this.#db.selectFrom('roles').select('permissions').where('id', '=', roleId).executeTakeFirstOrThrow();
    return JSON.parse(role.permissions) as string[];
  }

  /** A token never holds what its owner lacks: each permission of its role must be the owner's where the token acts. */
  #refuseWider(owner: Principal, request: TokenRequest, rolePermissions: string[] | undefined): void {
    const wanted = rolePermissions?.includes(ALL_PERMISSIONS) ? (Object.keys(PERMISSIONS) as Permission[]) : (rolePermissions as Permission[] | undefined);
    if (request.projectId && owner.tokenProjectId && owner.tokenProjectId !== request.projectId)
      throw new NubisError('TOKEN_TOO_WIDE', `Token ${owner.tokenName} is limited to one project; a token made with it cannot act on another`);
    const missing = (wanted ?? []).filter((permission) => {
      const where = projectsWith(owner, permission);
      if (where === 'all') return false;
      if (scopeOf(permission) === 'platform') return true;
      return request.projectId ? !where.includes(request.projectId) : true;
    });
    if (missing.length > 0)
      throw new NubisError(
        'TOKEN_TOO_WIDE',
        `A token cannot hold more than its user: you lack ${missing.slice(0, 8).join(', ')}${missing.length > 8 ? ', ...' : ''} ${request.projectId ? 'in that project' : 'on the platform'}; pick a narrower role or a project`,
        { details: { missing } },
      );
  }

  /** The tokens of one user (or of everyone), sessions included, newest first. */
  async list(userId?: string): Promise<TokenView[]> {
    let query = this.#db.selectFrom('tokens').selectAll().where('user_id', 'is not', null).orderBy('created_at', 'desc');
    if (userId) query = query.where('user_id', '=', userId);
    return this.#views(await query.execute());
  }

  /** The token of `userId` named `ref` (or with id `ref`) that is not revoked. */
  async find(userId: string | undefined, ref: string): Promise<TokensTable> {
    let query = this.#db
      .selectFrom('tokens')
      .selectAll()
      .where((eb) => eb.or([eb('id', '=', ref), eb('name', '=', ref)]))
      .where('revoked_at', 'is', null)
      .where('user_id', 'is not', null);
    if (userId) query = query.where('user_id', '=', userId);
    const token = await query.orderBy('created_at', 'desc').executeTakeFirst();
    if (!token) throw new NubisError('TOKEN_NOT_FOUND', `No active token ${ref}; see nubis token list`);
    return token;
  }

  /** Revokes tokens by id; they are refused from the next request on (and open consoles close). */
  async revoke(ids: readonly string[]): Promise<void> {
    if (ids.length === 0) return;
    await auditedTransaction(this.#db, (trx) =>
      trx
        .updateTable('tokens')
        .set({ revoked_at: new Date().toISOString() })
        .where('id', 'in', [...ids])
        .where('revoked_at', 'is', null)
        .execute(),
    );
    // After the commit: a request between a clearing and the commit would cache the old state again.
    this.invalidate();
  }

  async #views(rows: TokensTable[]): Promise<TokenView[]> {
    const users = new Map((await this.#db.selectFrom('users').select(['id', 'name']).execute()).map((u) => [u.id, u.name]));
    const projects = new Map((await this.#db.selectFrom('projects').select(['id', 'name']).execute()).map((p) => [p.id, p.name]));
    const roles = new Map((await this.#db.selectFrom('roles').select(['id', 'name']).execute()).map((r) => [r.id, r.name]));
    return rows.map((row) => ({
      id: row.id,
      name: row.name,
      user: users.get(row.user_id ?? '') ?? '(deleted)',
      kind: row.kind,
      ...(row.project_id ? { project: projects.get(row.project_id) ?? row.project_id } : {}),
      ...(row.role_id ? { role: roles.get(row.role_id) ?? row.role_id } : {}),
      createdAt: row.created_at,
      ...(row.expires_at ? { expiresAt: row.expires_at } : {}),
      ...(row.revoked_at ? { revokedAt: row.revoked_at } : {}),
      ...(row.last_used_at ? { lastUsedAt: row.last_used_at } : {}),
    }));
  }
}
