/** Users, roles, the permission catalogue, and who holds which role where (grants). */
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { Type } from '@sinclair/typebox';
import type { FastifyRequest } from 'fastify';
import type { AccessControl } from '../../access/access-control.ts';
import { permissionCatalogue, type BindingSubject } from '../../access/roles.ts';
import { NubisError } from '../../core/errors.ts';
import type { Db } from '../../state/database.ts';
import { Binding, GrantRequest, Password, PermissionInfo, Role, RoleCreateRequest, User, UserCreateRequest, UserName } from '../../wire/access-schemas.ts';
import { List, ResourceName } from '../../wire/schemas.ts';
import { checkResource } from '../access-hook.ts';
import { errorResponses, listErrorResponses, type RouteApp } from './common.ts';

/** `desktops` forgets a deleted user's desktop grants and takes their desktops back. */
export type UserRouteServices = { db: Db; access: AccessControl; desktops?: { forgetUser(userId: string, userName: string): Promise<void> } };

/** The routes under /v1/users, /v1/roles, /v1/permissions and /v1/access. */
export const userRoutes: FastifyPluginAsyncTypebox<UserRouteServices> = async (app, services) => {
  registerUserRoutes(app, services);
  registerRoleRoutes(app, services);
  registerGrantRoutes(app, services);
};

function registerUserRoutes(app: RouteApp, { access, desktops }: UserRouteServices): void {
  app.get(
    '/v1/users',
    {
      config: { access: { on: 'platform', permission: 'user.read' } },
      schema: { operationId: 'listUsers', tags: ['access'], summary: 'List users', response: { 200: List(User), ...listErrorResponses } },
    },
    async () => access.users.list(),
  );
  app.post(
    '/v1/users',
    {
      config: { access: { on: 'platform', permission: 'user.manage' } },
      schema: {
        operationId: 'createUser',
        tags: ['access'],
        summary: 'Create a local user',
        body: UserCreateRequest,
        response: { 201: User, ...errorResponses },
      },
    },
    async (request, reply) => reply.status(201).send(await access.users.create(request.body.name, request.body.password)),
  );
  app.delete(
    '/v1/users/:user',
    {
      config: { access: { on: 'platform', permission: 'user.manage' } },
      schema: {
        operationId: 'deleteUser',
        tags: ['access'],
        summary: 'Delete a user, its role bindings, tokens and desktop grants (its open consoles close, a desktop it held is reset)',
        params: Type.Object({ user: UserName }),
        response: { 204: Type.Null(), ...errorResponses },
      },
    },
    async (request, reply) => {
      const { id } = await access.users.row(request.params.user);
      await access.users.delete(request.params.user);
      await desktops?.forgetUser(id, request.params.user);
      return reply.status(204).send(null);
    },
  );
  app.put(
    '/v1/users/:user/password',
    {
      config: { access: { on: 'self' } },
      schema: {
        operationId: 'setUserPassword',
        tags: ['access'],
        summary: "Set a password: your own (with the current one), or anyone's with user.manage; the user's sessions end",
        params: Type.Object({ user: UserName }),
        body: Type.Object({ password: Password, currentPassword: Type.Optional(Type.String({ maxLength: 1024 })) }, { additionalProperties: false }),
        response: { 204: Type.Null(), ...errorResponses },
      },
    },
    async (request, reply) => {
      const principal = request.principal!;
      if (request.params.user !== principal.userName) checkResource(access, request, 'user.manage', 'platform');
      else if ((await access.users.row(principal.userName)).password_hash !== null) {
        // Changing one's own password proves the old one: a stolen session alone cannot lock its
        // owner out. A user without one yet (the first admin) sets it with its token alone.
        if (!request.body.currentPassword) throw new NubisError('AUTH_LOGIN_FAILED', 'Give your current password (currentPassword) to set a new one');
        await access.users.verifyCurrentPassword(principal.userName, request.body.currentPassword);
      }
      await access.users.setPassword(request.params.user, request.body.password);
      return reply.status(204).send(null);
    },
  );
}

function registerRoleRoutes(app: RouteApp, { access }: UserRouteServices): void {
  app.get(
    '/v1/roles',
    {
      config: { access: { on: 'self' } },
      schema: {
        operationId: 'listRoles',
        tags: ['access'],
        summary: 'Built-in and custom roles with their permissions',
        response: { 200: List(Role), ...listErrorResponses },
      },
    },
    async () => access.roles.list(),
  );
  app.post(
    '/v1/roles',
    {
      config: { access: { on: 'platform', permission: 'role.manage' } },
      schema: {
        operationId: 'createRole',
        tags: ['access'],
        summary: 'Create a custom role: a named set of permissions',
        body: RoleCreateRequest,
        response: { 201: Role, ...errorResponses },
      },
    },
    async (request, reply) => reply.status(201).send(await access.roles.create(request.body)),
  );
  app.delete(
    '/v1/roles/:role',
    {
      config: { access: { on: 'platform', permission: 'role.manage' } },
      schema: {
        operationId: 'deleteRole',
        tags: ['access'],
        summary: 'Delete a custom role nobody holds',
        params: Type.Object({ role: ResourceName }),
        response: { 204: Type.Null(), ...errorResponses },
      },
    },
    async (request, reply) => {
      await access.roles.delete(request.params.role);
      return reply.status(204).send(null);
    },
  );
  app.get(
    '/v1/permissions',
    {
      config: { access: { on: 'self' } },
      schema: {
        operationId: 'listPermissions',
        tags: ['access'],
        summary: 'Every permission, where it applies and what it allows',
        response: { 200: List(PermissionInfo), ...listErrorResponses },
      },
    },
    async () => permissionCatalogue(),
  );
}

/**
 * The subject and place of a grant request, checked: on a project it needs project.members
 * there, on the platform user.manage.
 */
async function grantTarget(
  { db, access }: UserRouteServices,
  request: FastifyRequest,
  body: { user?: string; group?: string; project?: string },
): Promise<{ subject: BindingSubject; projectId: string | null }> {
  if ((body.user === undefined) === (body.group === undefined)) throw new NubisError('VALIDATION_FAILED', 'Give exactly one of user and group');
  let projectId: string | null = null;
  if (body.project) {
    const project = await db.selectFrom('projects').select(['id', 'name']).where('name', '=', body.project).executeTakeFirst();
    checkResource(access, request, 'project.members', { project: project ?? { id: '', name: body.project } });
    if (!project) throw new NubisError('PROJECT_NOT_FOUND', `No project ${body.project}`);
    projectId = project.id;
  } else checkResource(access, request, 'user.manage', 'platform');
  if (body.group) return { subject: { type: 'group', name: body.group }, projectId };
  const user = await access.users.row(body.user as string);
  return { subject: { type: 'user', id: user.id, name: user.name }, projectId };
}

function registerGrantRoutes(app: RouteApp, services: UserRouteServices): void {
  const { db, access } = services;
  app.get(
    '/v1/access',
    {
      config: { access: { on: 'list', permission: 'project.read' } },
      schema: {
        operationId: 'listAccess',
        tags: ['access'],
        summary: 'Who holds which role where: of a project, of a user, or everything you may see',
        querystring: Type.Object({ project: Type.Optional(ResourceName), user: Type.Optional(UserName) }, { additionalProperties: false }),
        response: { 200: List(Binding), ...errorResponses },
      },
    },
    async (request) => {
      const userId = request.query.user ? (await access.users.row(request.query.user)).id : undefined;
      if (request.accessProject) return access.roles.bindings({ projectId: request.accessProject.id, userId });
      const visible = request.visibleProjects ?? [];
      const all = await access.roles.bindings({ userId });
      if (visible === 'all') return all;
      const names = new Set(
        (
          await db
            .selectFrom('projects')
            .select('name')
            .where('id', 'in', visible.length > 0 ? visible : [''])
            .execute()
        ).map((p) => p.name),
      );
      return all.filter((binding) => binding.project !== undefined && names.has(binding.project));
    },
  );
  app.post(
    '/v1/access/grants',
    {
      config: { access: { on: 'self' } },
      schema: {
        operationId: 'grantRole',
        tags: ['access'],
        summary: 'Grant a role to a user or an OpenID Connect group, on a project (needs project.members there) or the platform',
        body: GrantRequest,
        response: { 204: Type.Null(), ...errorResponses },
      },
    },
    async (request, reply) => {
      const { subject, projectId } = await grantTarget(services, request, request.body);
      await access.roles.grant(subject, request.body.role, projectId);
      return reply.status(204).send(null);
    },
  );
  app.delete(
    '/v1/access/grants',
    {
      config: { access: { on: 'self' } },
      schema: {
        operationId: 'revokeRole',
        tags: ['access'],
        summary: 'Revoke a role (consoles opened under it close)',
        querystring: GrantRequest,
        response: { 204: Type.Null(), ...errorResponses },
      },
    },
    async (request, reply) => {
      const { subject, projectId } = await grantTarget(services, request, request.query);
      await access.roles.revoke(subject, request.query.role, projectId);
      return reply.status(204).send(null);
    },
  );
}
