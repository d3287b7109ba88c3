/**
 * Roles (built-in and custom: named sets of permissions) and role bindings: a role held by a
 * user, or by the members of an OpenID Connect group, on one project or on the platform.
 */
import { auditedTransaction } from '../audit/audit-context.ts';
import { NubisError } from '../core/errors.ts';
import { newId } from '../core/ids.ts';
import type { Db } from '../state/database.ts';
import { ALL_PERMISSIONS, BUILTIN_ROLES, isPermission, PERMISSIONS } from './permissions.ts';

export interface RoleView {
  name: string;
  description: string;
  permissions: string[];
  builtin: boolean;
}

export interface BindingView {
  id: string;
  /** A user name, or `group:NAME` for an OpenID Connect group. */
  subject: string;
  role: string;
  /** The project, or absent for the whole platform. */
  project?: string;
  createdAt: string;
}

/** Who a binding is for: a user (by id) or an OpenID Connect group (by name). */
export type BindingSubject = { type: 'user'; id: string; name: string } | { type: 'group'; name: string };

export class RoleStore {
  readonly #db: Db;
  /** Told after every change of who holds what (the token store forgets its cached principals). */
  readonly #changed: () => void;

  constructor(db: Db, changed: () => void = () => undefined) {
    this.#db = db;
    this.#changed = changed;
  }

  /** Writes the built-in roles as this release defines them (at every start: a release may change them). */
  async ensureBuiltin(): Promise<void> {
    const now = new Date().toISOString();
    for (const role of BUILTIN_ROLES) {
      const values = { description: role.description, permissions: JSON.stringify(role.permissions), builtin: 1 };
      await this.#db
        .insertInto('roles')
        .values({ id: `role-${role.name}`, name: role.name, created_at: now, ...values })
        .onConflict((oc) => oc.column('name').doUpdateSet(values))
        .execute();
    }
  }

  async list(): Promise<RoleView[]> {
    const rows = await this.#db.selectFrom('roles').selectAll().orderBy('builtin', 'desc').orderBy('name').execute();
    return rows.map((row) => ({
      name: row.name,
      description: row.description,
      permissions: JSON.parse(row.permissions) as string[],
      builtin: row.builtin === 1,
    }));
  }

  async id(name: string): Promise<string> {
    const row = await this.#db.selectFrom('roles').select('id').where('name', '=', name).executeTakeFirst();
    if (!row) throw new NubisError('ROLE_NOT_FOUND', `No role ${name}; see nubis role list`);
    return row.id;
  }

  /** Creates a custom role; each permission must be one Nubis knows (see nubis role list --permissions). */
  async create(request: { name: string; description?: string; permissions: string[] }): Promise<RoleView> {
    const unknown = request.permissions.filter((permission) => !isPermission(permission) && permission !== ALL_PERMISSIONS);
    if (unknown.length > 0)
      throw new NubisError('ROLE_UNKNOWN_PERMISSION', `Unknown permission ${unknown.join(', ')}; the permissions are listed by nubis role permissions`, {
        details: { unknown },
      });
    if (await this.#db.selectFrom('roles').select('id').where('name', '=', request.name).executeTakeFirst())
      throw new NubisError('ROLE_NAME_TAKEN', `A role named ${request.name} exists`);
    const permissions = [...new Set(request.permissions)].sort();
    await auditedTransaction(this.#db, (trx) =>
      trx
        .insertInto('roles')
        .values({
          id: newId('role'),
          name: request.name,
          description: request.description ?? '',
          permissions: JSON.stringify(permissions),
          builtin: 0,
          created_at: new Date().toISOString(),
        })
        .execute(),
    );
    return { name: request.name, description: request.description ?? '', permissions, builtin: false };
  }

  /** Deletes a custom role that nobody holds. */
  async delete(name: string): Promise<void> {
    const row = await this.#db.selectFrom('roles').select(['id', 'builtin']).where('name', '=', name).executeTakeFirst();
    if (!row) throw new NubisError('ROLE_NOT_FOUND', `No role ${name}; see nubis role list`);
    if (row.builtin) throw new NubisError('ROLE_BUILTIN', `Role ${name} is built in and cannot be deleted`);
    const held = await this.#db.selectFrom('role_bindings').select('id').where('role_id', '=', row.id).executeTakeFirst();
    if (held) throw new NubisError('ROLE_IN_USE', `Role ${name} is held; revoke it first (nubis access list)`);
    await auditedTransaction(this.#db, (trx) => trx.deleteFrom('roles').where('id', '=', row.id).execute());
    this.#changed();
  }

  /**
   * Grants `role` to `subject` on a project (or the platform when `projectId` is null). The
   * platform-only role `admin` cannot be held on a project.
   */
  async grant(subject: BindingSubject, roleName: string, projectId: string | null): Promise<void> {
    const roleId = await this.id(roleName);
    const builtin = BUILTIN_ROLES.find((role) => role.name === roleName);
    if (projectId && builtin?.heldOn === 'platform')
      throw new NubisError('ROLE_PLATFORM_ONLY', `Role ${roleName} is held on the whole platform only; grant it without --project`);
    const subjectKey = subject.type === 'user' ? subject.id : subject.name;
    if (await this.#binding(subject, roleId, projectId)) return;
    await auditedTransaction(this.#db, (trx) =>
      trx
        .insertInto('role_bindings')
        .values({
          id: newId('bnd'),
          subject_type: subject.type,
          subject: subjectKey,
          role_id: roleId,
          project_id: projectId,
          created_at: new Date().toISOString(),
        })
        .execute(),
    );
    this.#changed();
  }

  /** Revokes a binding; BINDING_NOT_FOUND when there is none. The last platform admin stays. */
  async revoke(subject: BindingSubject, roleName: string, projectId: string | null): Promise<void> {
    const binding = await this.#binding(subject, await this.id(roleName), projectId);
    const who = subject.type === 'user' ? subject.name : `group ${subject.name}`;
    if (!binding) throw new NubisError('BINDING_NOT_FOUND', `${who} does not hold role ${roleName} there; see nubis access list`);
    if (roleName === 'admin' && projectId === null && subject.type === 'user' && (await isLastPlatformAdmin(this.#db, subject.id)))
      throw new NubisError('ACCESS_LAST_ADMIN', `${subject.name} is the last platform admin; grant admin to another user first`);
    await auditedTransaction(this.#db, (trx) => trx.deleteFrom('role_bindings').where('id', '=', binding.id).execute());
    this.#changed();
  }

  /** The binding of `role` to `subject` on `projectId` (null: the platform), if there is one. */
  #binding(subject: BindingSubject, roleId: string, projectId: string | null): Promise<{ id: string } | undefined> {
    const query = this.#db
      .selectFrom('role_bindings')
      .select('id')
      .where('subject_type', '=', subject.type)
      .where('subject', '=', subject.type === 'user' ? subject.id : subject.name)
      .where('role_id', '=', roleId);
    return (projectId ? query.where('project_id', '=', projectId) : query.where('project_id', 'is', null)).executeTakeFirst();
  }

  /** Bindings, optionally of one project (`null`: platform bindings only) or of one user. */
  async bindings(filter: { projectId?: string | null; userId?: string } = {}): Promise<BindingView[]> {
    let query = this.#db
      .selectFrom('role_bindings')
      .innerJoin('roles', 'roles.id', 'role_bindings.role_id')
      .leftJoin('projects', 'projects.id', 'role_bindings.project_id')
      .leftJoin('users', (join) => join.onRef('users.id', '=', 'role_bindings.subject').on('role_bindings.subject_type', '=', 'user'))
      .select([
        'role_bindings.id',
        'role_bindings.subject_type',
        'role_bindings.subject',
        'roles.name as role',
        'projects.name as project',
        'users.name as user_name',
        'role_bindings.created_at',
      ])
      .orderBy('role_bindings.created_at');
    if (filter.projectId !== undefined)
      query = filter.projectId === null ? query.where('role_bindings.project_id', 'is', null) : query.where('role_bindings.project_id', '=', filter.projectId);
    if (filter.userId) query = query.where('role_bindings.subject_type', '=', 'user').where('role_bindings.subject', '=', filter.userId);
    return (await query.execute()).map((row) => ({
      id: row.id,
      subject: row.subject_type === 'user' ? (row.user_name ?? row.subject) : `group:${row.subject}`,
      role: row.role,
      ...(row.project ? { project: row.project } : {}),
      createdAt: row.created_at,
    }));
  }
}

/**
 * Whether `userId` is the only user holding the platform role admin: removing that binding (or
 * the user) would leave nobody who can manage Nubis.
 */
export async function isLastPlatformAdmin(db: Db, userId: string): Promise<boolean> {
  const admins = await db
    .selectFrom('role_bindings')
    .select('subject')
    .where('role_id', '=', 'role-admin')
    .where('subject_type', '=', 'user')
    .where('project_id', 'is', null)
    .execute();
  return admins.length === 1 && admins[0].subject === userId;
}

/** Every permission with its scope and meaning, for `nubis role permissions`. */
export function permissionCatalogue(): Array<{ name: string; scope: 'project' | 'platform'; description: string }> {
  return Object.entries(PERMISSIONS).map(([name, [scope, description]]) => ({ name, scope, description }));
}
