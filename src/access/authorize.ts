/**
 * The one authorization check. Every entry point (REST routes, the event stream, the console
 * WebSocket, lists that filter by project) asks `authorize()` and gets a decision with its reason;
 * nothing else decides who may do what. A later move to an external engine (OpenFGA, Cedar)
 * replaces this module and principal.ts, nothing more (docs/ACCESS.md).
 */
import { ALL_PERMISSIONS, type Permission, scopeOf } from './permissions.ts';

/** A role held by the principal: its permissions, on one project or (projectId null) on the platform. */
export interface Grant {
  role: string;
  projectId: string | null;
  permissions: ReadonlySet<string>;
  /** How the grant reached the principal: the user's own binding, or an OpenID Connect group's. */
  via: 'user' | `group:${string}`;
}

/** Who is asking: a user acting through one token, which may be narrower than the user. */
export interface Principal {
  userId: string;
  userName: string;
  tokenId: string;
  tokenName: string;
  grants: readonly Grant[];
  /** A token limited to one project acts only there. */
  tokenProjectId: string | null;
  /** A token limited to a role: only these permissions, intersected with the user's. */
  tokenRole: { name: string; permissions: ReadonlySet<string> } | null;
  /** When the token stops working (ISO), if it expires. */
  expiresAt?: string;
  /** The OpenID Connect groups the token carries (from the ID token it was signed in with). */
  groups?: readonly string[];
}

/** What a permission is checked on: one project, or the platform. */
export type AccessTarget = { project: { id: string; name: string } } | 'platform';

export interface Decision {
  allowed: boolean;
  permission: Permission;
  /** A sentence: why it is allowed (which role), or what is missing and where. */
  reason: string;
}

function grantsPermission(permissions: ReadonlySet<string>, permission: Permission): boolean {
  return permissions.has(ALL_PERMISSIONS) || permissions.has(permission);
}

function targetText(target: AccessTarget): string {
  return target === 'platform' ? 'the platform' : `project ${target.project.name}`;
}

/**
 * Decides whether `principal` holds `permission` on `target`. A grant on the platform reaches
 * every project; a grant on a project reaches that project, and never a platform permission.
 * The token then narrows it: to its project, and to its role's permissions.
 */
export function authorize(principal: Principal, permission: Permission, target: AccessTarget): Decision {
  const where = targetText(target);
  const deny = (reason: string): Decision => ({ allowed: false, permission, reason });
  if (principal.tokenProjectId !== null && (target === 'platform' || target.project.id !== principal.tokenProjectId)) {
    return deny(`Token ${principal.tokenName} is limited to one project and cannot act on ${where}; use a token without that limit`);
  }
  if (principal.tokenRole && !grantsPermission(principal.tokenRole.permissions, permission)) {
    return deny(`Token ${principal.tokenName} is limited to role ${principal.tokenRole.name}, which lacks ${permission}`);
  }
  // A project permission asked of the platform ("in every project") is granted by platform grants only.
  const applicable = principal.grants.filter((grant) => {
    if (grant.projectId === null) return true;
    return target !== 'platform' && scopeOf(permission) === 'project' && grant.projectId === target.project.id;
  });
  const granting = applicable.find((grant) => grantsPermission(grant.permissions, permission));
  if (granting) {
    const on = granting.projectId === null ? 'the platform' : where;
    return { allowed: true, permission, reason: `${principal.userName} holds role ${granting.role} on ${on}` };
  }
  const held = applicable.map((grant) => grant.role);
  const heldText = held.length > 0 ? `roles held there: ${[...new Set(held)].join(', ')}` : 'no role held there';
  const ask = scopeOf(permission) === 'platform' ? 'ask a platform admin' : 'ask an owner of the project or a platform admin';
  return deny(`${principal.userName} lacks permission ${permission} on ${where} (${heldText}); ${ask} to grant a role that has it`);
}

/**
 * The projects in which `principal` holds `permission`: `all` when a platform grant gives it
 * everywhere (and the token is not limited to one project), else the ids. For lists that show
 * what a principal may see across projects.
 */
export function projectsWith(principal: Principal, permission: Permission): 'all' | string[] {
  if (principal.tokenRole && !grantsPermission(principal.tokenRole.permissions, permission)) return [];
  const granting = principal.grants.filter((grant) => grantsPermission(grant.permissions, permission));
  if (granting.some((grant) => grant.projectId === null)) return principal.tokenProjectId === null ? 'all' : [principal.tokenProjectId];
  const ids = [...new Set(granting.map((grant) => grant.projectId as string))];
  return principal.tokenProjectId === null ? ids : ids.filter((id) => id === principal.tokenProjectId);
}
