/** Operations: the long-running work that 202 answers name, and their event streams. */
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { Type } from '@sinclair/typebox';
import type { FastifyRequest } from 'fastify';
import type { AccessControl } from '../../access/access-control.ts';
import type { AccessTarget } from '../../access/authorize.ts';
import type { Permission } from '../../access/permissions.ts';
import type { OperationManager } from '../../control/operations.ts';
import { checkResource } from '../access-hook.ts';
import { Int32, Operation, OperationEvent, OperationStatus, ResourceName, ResourceRef } from '../../wire/schemas.ts';
import { errorResponses, listErrorResponses, type RouteApp } from './common.ts';

/** What the operation routes use. */
export type OperationRouteServices = { operations: OperationManager; access: AccessControl };

/** Checks `permission` on the project of operation `request.params.id` (the platform for a platform operation). */
async function checkOperation(services: OperationRouteServices, request: FastifyRequest, permission: Permission): Promise<AccessTarget> {
  const project = await services.operations.projectOf((request.params as { id: string }).id);
  const target: AccessTarget = project ? { project } : 'platform';
  checkResource(services.access, request, permission, target);
  return target;
}

const OperationRef = Type.Object({ id: ResourceRef('Operation id') });

/** The operation routes, in the order the OpenAPI document lists them. */
export const operationRoutes: FastifyPluginAsyncTypebox<OperationRouteServices> = async (app, services) => {
  app.get(
    '/v1/operations',
    {
      config: { access: { on: 'list', permission: 'operation.read' } },
      schema: {
        operationId: 'listOperations',
        tags: ['operations'],
        summary: 'Recent operations, newest first',
        querystring: Type.Object(
          { limit: Int32(1, 500, { default: 50 }), status: Type.Optional(OperationStatus), project: Type.Optional(ResourceName) },
          { additionalProperties: false },
        ),
        response: { 200: Type.Array(Operation, { maxItems: 500 }), ...listErrorResponses },
      },
    },
    async (request) => services.operations.list({ ...request.query, projectIds: request.accessProject ? [request.accessProject.id] : request.visibleProjects }),
  );
  app.get(
    '/v1/operations/:id',
    {
      config: { access: { on: 'resource', permission: 'operation.read' } },
      schema: {
        operationId: 'getOperation',
        tags: ['operations'],
        summary: 'Show an operation',
        params: OperationRef,
        response: { 200: Operation, ...errorResponses },
      },
    },
    async (request) => {
      await checkOperation(services, request, 'operation.read');
      return services.operations.get(request.params.id);
    },
  );
  app.post(
    '/v1/operations/:id/cancel',
    {
      config: { access: { on: 'resource', permission: 'operation.cancel' } },
      schema: {
        operationId: 'cancelOperation',
        tags: ['operations'],
        summary: 'Cancel a running operation',
        params: OperationRef,
        response: { 202: Operation, ...errorResponses },
      },
    },
    async (request, reply) => {
      await checkOperation(services, request, 'operation.cancel');
      return reply.status(202).send(await services.operations.cancel(request.params.id));
    },
  );
  registerEventStream(app, services);
};

/** GET /v1/operations/:id/events: server-sent events, the past ones replayed first. */
function registerEventStream(app: RouteApp, services: OperationRouteServices): void {
  app.get(
    '/v1/operations/:id/events',
    {
      config: { access: { on: 'resource', permission: 'operation.read' } },
      schema: {
        operationId: 'streamOperationEvents',
        tags: ['operations'],
        summary: 'Server-sent events: every event of the operation, then `end` with the final operation',
        params: OperationRef,
        response: { 200: { content: { 'text/event-stream': { schema: OperationEvent } } }, ...errorResponses },
      },
    },
    async (request, reply) => {
      const { id } = request.params;
      const target = await checkOperation(services, request, 'operation.read');
      reply.hijack();
      const raw = reply.raw;
      raw.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', connection: 'keep-alive' });
      const send = (event: string, data: unknown): void => void raw.write(`event: ${event}\ndata: ${JSON.stringify(data)}\n\n`);
      let lastSeq = 0;
      const backlog: Array<{ event?: OperationEvent; finished?: unknown }> = [];
      let replaying = true;
      const deliver = (update: { event?: OperationEvent; finished?: unknown }): void => {
        if (update.event && update.event.seq > lastSeq) {
          lastSeq = update.event.seq;
          send('progress', update.event);
        }
        if (update.finished) {
          send('end', update.finished);
          raw.end();
        }
      };
      // Subscribe before replaying, so an event between the two is not lost.
      const unsubscribe = services.operations.subscribe(id, (update) => (replaying ? backlog.push(update) : deliver(update)));
      // A stream outlives the request: revoking its token (or the permission) ends it at once.
      const unwatch = services.access.watch(request.principal!, 'operation.read', target, () => raw.end());
      raw.on('close', () => {
        unsubscribe();
        unwatch();
      });
      for (const event of await services.operations.events(id)) deliver({ event });
      replaying = false;
      for (const update of backlog.splice(0)) deliver(update);
      const operation = await services.operations.get(id);
      if (operation.status !== 'running' && !raw.writableEnded) {
        send('end', operation);
        raw.end();
      }
    },
  );
}
