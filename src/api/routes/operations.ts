/** Operations: the long-running work that 202 answers name, and their event streams. */
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { Type } from '@sinclair/typebox';
import type { OperationManager } from '../../control/operations.ts';
import { Int32, Operation, OperationEvent, OperationStatus, ResourceRef } from '../../wire/schemas.ts';
import { errorResponses, listErrorResponses, type RouteApp } from './common.ts';

/** What the operation routes use. */
export type OperationRouteServices = { operations: OperationManager };

const OperationRef = Type.Object({ id: ResourceRef('Operation id') });

/** The operation routes, in the order the OpenAPI document lists them. */
export const operationRoutes: FastifyPluginAsyncTypebox<OperationRouteServices> = async (app, services) => {
  app.get(
    '/v1/operations',
    {
      schema: {
        operationId: 'listOperations',
        tags: ['operations'],
        summary: 'Recent operations, newest first',
        querystring: Type.Object({ limit: Int32(1, 500, { default: 50 }), status: Type.Optional(OperationStatus) }, { additionalProperties: false }),
        response: { 200: Type.Array(Operation, { maxItems: 500 }), ...listErrorResponses },
      },
    },
    async (request) => services.operations.list(request.query),
  );
  app.get(
    '/v1/operations/:id',
    {
      schema: {
        operationId: 'getOperation',
        tags: ['operations'],
        summary: 'Show an operation',
        params: OperationRef,
        response: { 200: Operation, ...errorResponses },
      },
    },
    async (request) => services.operations.get(request.params.id),
  );
  app.post(
    '/v1/operations/:id/cancel',
    {
      schema: {
        operationId: 'cancelOperation',
        tags: ['operations'],
        summary: 'Cancel a running operation',
        params: OperationRef,
        response: { 202: Operation, ...errorResponses },
      },
    },
    async (request, reply) => reply.status(202).send(await services.operations.cancel(request.params.id)),
  );
  registerEventStream(app, services);
};

/** GET /v1/operations/:id/events: server-sent events, the past ones replayed first. */
function registerEventStream(app: RouteApp, services: OperationRouteServices): void {
  app.get(
    '/v1/operations/:id/events',
    {
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
      await services.operations.get(id);
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
      raw.on('close', unsubscribe);
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
