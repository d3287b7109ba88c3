/**
 * Desktop pools (VDI): managing pools needs `desktop.manage` on their project (reading them
 * `desktop.read`); getting a desktop from the broker, leaving it and listing "my desktops" need
 * only a valid token of a user the pool was granted to, so those routes are `self` and the
 * broker decides (it refuses a user without access with the sentence that says who grants it).
 */
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { Type } from '@sinclair/typebox';
import type { FastifyRequest } from 'fastify';
import { NubisError } from '../../core/errors.ts';
import type { DesktopBroker, DesktopUser } from '../../desktop/desktop-broker.ts';
import type { DesktopPools } from '../../desktop/desktop-pools.ts';
import {
  DesktopAssignment,
  DesktopGrantRequest,
  DesktopPool,
  DesktopPoolCreateRequest,
  DesktopPoolName,
  DesktopPoolQuery,
  MyDesktop,
} from '../../wire/desktop-schemas.ts';
import { Accepted, ErrorBody, List, Operation, ProjectQuery, ResourceName } from '../../wire/schemas.ts';
import { errorResponses, listErrorResponses, type RouteApp } from './common.ts';

export type DesktopRouteServices = { pools: DesktopPools; broker: DesktopBroker };

const PoolRef = Type.Object({ pool: DesktopPoolName });
const userErrors = { ...errorResponses, 403: ErrorBody };

/** The project a `project` route was authorized on (the access hook resolved it). */
function accessProjectOf(request: FastifyRequest): { id: string; name: string } {
  if (!request.accessProject) throw new NubisError('VALIDATION_FAILED', 'The project of the request is not known');
  return request.accessProject;
}

/** The caller as the broker sees them: a `self` route has a principal, never a project check. */
function desktopUser(request: FastifyRequest): DesktopUser {
  const principal = request.principal;
  if (!principal) throw new NubisError('AUTH_REQUIRED', 'This request needs a bearer token');
  return principal;
}

/** The project a user route names, within what the caller's token may reach. */
async function userProject(request: FastifyRequest, pools: DesktopPools, name: string | undefined): Promise<{ id: string; name: string }> {
  const project = await pools.project(name ?? 'default');
  const limited = request.principal?.tokenProjectId;
  if (limited && limited !== project.id)
    throw new NubisError('ACCESS_DENIED', `Token ${request.principal?.tokenName} is limited to one project and cannot act on project ${project.name}`);
  return project;
}

export const desktopRoutes: FastifyPluginAsyncTypebox<DesktopRouteServices> = async (app, services) => {
  registerPoolRoutes(app, services);
  registerGrantRoutes(app, services);
  registerBrokerRoutes(app, services);
};

function registerPoolRoutes(app: RouteApp, { pools }: DesktopRouteServices): void {
  app.get(
    '/v1/desktop-pools',
    {
      config: { access: { on: 'list', permission: 'desktop.read' } },
      schema: {
        operationId: 'listDesktopPools',
        tags: ['desktops'],
        summary: 'List desktop pools with their desktops and who holds them',
        querystring: ProjectQuery,
        response: { 200: List(DesktopPool), ...listErrorResponses },
      },
    },
    async (request) => pools.list(request.accessProject, request.visibleProjects),
  );
  app.post(
    '/v1/desktop-pools',
    {
      config: { access: { on: 'project', permission: 'desktop.manage' } },
      schema: {
        operationId: 'createDesktopPool',
        tags: ['desktops'],
        summary: 'Create a desktop pool from a snapshot of a storage-node volume; its spares boot in the operation',
        body: DesktopPoolCreateRequest,
        response: { 202: Accepted, ...errorResponses },
      },
    },
    async (request, reply) => reply.status(202).send({ operation: await pools.create(request.body, accessProjectOf(request)) }),
  );
  app.get(
    '/v1/desktop-pools/:pool',
    {
      config: { access: { on: 'project', permission: 'desktop.read' } },
      schema: {
        operationId: 'getDesktopPool',
        tags: ['desktops'],
        summary: 'Show a desktop pool: its definition, desktops, their states and users, and who may use it',
        params: PoolRef,
        querystring: ProjectQuery,
        response: { 200: DesktopPool, ...errorResponses },
      },
    },
    async (request) => pools.get(request.params.pool, accessProjectOf(request)),
  );
  app.delete(
    '/v1/desktop-pools/:pool',
    {
      config: { access: { on: 'project', permission: 'desktop.manage' } },
      schema: {
        operationId: 'deleteDesktopPool',
        tags: ['desktops'],
        summary: 'Delete a desktop pool with its desktops, their clones and its snapshot (refused while desktops are assigned, unless force)',
        params: PoolRef,
        querystring: DesktopPoolQuery,
        response: { 202: Accepted, ...errorResponses },
      },
    },
    async (request, reply) =>
      reply.status(202).send({ operation: await pools.delete(request.params.pool, accessProjectOf(request), request.query.force ?? false) }),
  );
  app.post(
    '/v1/desktop-pools/:pool/update-base',
    {
      config: { access: { on: 'project', permission: 'desktop.manage' } },
      schema: {
        operationId: 'updateDesktopPoolBase',
        tags: ['desktops'],
        summary: "Snapshot the pool's base again; free desktops are reset onto it, held floating ones at their next reset",
        params: PoolRef,
        querystring: ProjectQuery,
        response: { 202: Accepted, ...errorResponses },
      },
    },
    async (request, reply) => reply.status(202).send({ operation: await pools.updateBase(request.params.pool, accessProjectOf(request)) }),
  );
}

function registerGrantRoutes(app: RouteApp, { pools }: DesktopRouteServices): void {
  app.post(
    '/v1/desktop-pools/:pool/grants',
    {
      config: { access: { on: 'project', permission: 'desktop.manage' } },
      schema: {
        operationId: 'grantDesktopPool',
        tags: ['desktops'],
        summary: 'Let a user (or an OpenID Connect group) get desktops from the pool',
        params: PoolRef,
        body: DesktopGrantRequest,
        response: { 200: DesktopPool, ...errorResponses },
      },
    },
    async (request) => pools.grant(request.params.pool, accessProjectOf(request), request.body),
  );
  app.delete(
    '/v1/desktop-pools/:pool/grants',
    {
      config: { access: { on: 'project', permission: 'desktop.manage' } },
      schema: {
        operationId: 'revokeDesktopPool',
        tags: ['desktops'],
        summary: "Take a user's (or group's) access away; a desktop the user holds is taken back and reset",
        params: PoolRef,
        querystring: DesktopGrantRequest,
        response: { 200: DesktopPool, ...errorResponses },
      },
    },
    async (request) => pools.revoke(request.params.pool, accessProjectOf(request), request.query),
  );
}

function registerBrokerRoutes(app: RouteApp, { pools, broker }: DesktopRouteServices): void {
  app.post(
    '/v1/desktop-pools/:pool/connect',
    {
      config: { access: { on: 'self' } },
      schema: {
        operationId: 'connectDesktop',
        tags: ['desktops'],
        summary: 'Get your desktop of the pool (dedicated: always the same; floating: a free one), booting it if needed',
        params: PoolRef,
        querystring: ProjectQuery,
        response: { 200: DesktopAssignment, ...userErrors },
      },
    },
    async (request) => broker.connect(desktopUser(request), request.params.pool, await userProject(request, pools, request.query.project)),
  );
  app.post(
    '/v1/desktop-pools/:pool/leave',
    {
      config: { access: { on: 'self' } },
      schema: {
        operationId: 'leaveDesktop',
        tags: ['desktops'],
        summary: 'Log off from your desktop of the pool: a floating one is reset to a fresh clone, a dedicated one is kept',
        params: PoolRef,
        querystring: ProjectQuery,
        response: {
          200: Type.Object({ pool: DesktopPoolName, desktop: Type.Optional(ResourceName), operation: Type.Optional(Operation) }),
          ...userErrors,
        },
      },
    },
    async (request) => broker.leave(desktopUser(request), request.params.pool, await userProject(request, pools, request.query.project)),
  );
  app.get(
    '/v1/desktops',
    {
      config: { access: { on: 'self' } },
      schema: {
        operationId: 'listMyDesktops',
        tags: ['desktops'],
        summary: 'My desktops: the pools you may use, with the desktop you hold in each',
        response: { 200: List(MyDesktop), ...listErrorResponses },
      },
    },
    async (request) => broker.myDesktops(desktopUser(request)),
  );
}
