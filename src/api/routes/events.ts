/**
 * GET /v1/events: the cluster-wide change stream as server-sent events (EVENTS-CONTRACT). Every
 * caller with a valid token may open it; each event goes out only if the caller holds the read
 * permission of its type where the resource lives, re-decided with the caller's grants as they
 * are after each access change. The stream ends when the token is revoked or expires.
 */
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import type { AccessControl } from '../../access/access-control.ts';
import { authorize, type Principal } from '../../access/authorize.ts';
import type { Permission } from '../../access/permissions.ts';
import type { ChangeFeed, ChangeType, RecordedChange, ResumePoint } from '../../events/change-feed.ts';
import { ChangeEventBody, EventsQuery } from '../../wire/event-schemas.ts';
import { listErrorResponses } from './common.ts';

/** What the event stream uses. */
export type EventRouteServices = { changes: ChangeFeed; access: AccessControl };

/** Who may see an event of each type: this permission on its project (or the platform). */
const READ_PERMISSION: Record<ChangeType, Permission> = {
  vm: 'vm.read',
  host: 'host.read',
  network: 'network.read',
  pool: 'pool.read',
  volume: 'volume.read',
  operation: 'operation.read',
  migration: 'vm.read',
  desktop: 'desktop.read',
  'desktop-pool': 'desktop.read',
  'backup-schedule': 'backup.read',
};

const KEEP_ALIVE_MS = 15_000;
/** A client this far behind is cut off; it reconnects and resumes from its last event. */
const MAX_BUFFERED_BYTES = 8 * 2 ** 20;

/** Whether `principal` may see `change`. */
export function maySee(principal: Principal, change: RecordedChange): boolean {
  // A desktop's user follows it without desktop.read (a token limited to another project excepted).
  if (change.users?.includes(principal.userId) && (!principal.tokenProjectId || principal.tokenProjectId === change.project?.id)) return true;
  const target = change.project ? { project: change.project } : 'platform';
  return authorize(principal, READ_PERMISSION[change.event.type], target).allowed;
}

/** The event stream route. */
export const eventRoutes: FastifyPluginAsyncTypebox<EventRouteServices> = async (app, services) => {
  app.get(
    '/v1/events',
    {
      config: { access: { on: 'self' } },
      schema: {
        operationId: 'streamEvents',
        tags: ['events'],
        summary:
          'Server-sent events: every change of the resources the caller may see (created, updated, deleted); resumes after Last-Event-ID or ?lastEventId=',
        querystring: EventsQuery,
        response: { 200: { content: { 'text/event-stream': { schema: ChangeEventBody } } }, ...listErrorResponses },
      },
    },
    async (request, reply) => {
      const { changes, access } = services;
      const types = request.query.types ? new Set(request.query.types.split(',')) : undefined;
      const header = request.headers['last-event-id'];
      const resumeFrom = (typeof header === 'string' && header.trim()) || request.query.lastEventId;
      let principal = request.principal!;
      reply.hijack();
      const raw = reply.raw;
      raw.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', connection: 'keep-alive', 'x-accel-buffering': 'no' });
      // A HEAD (does this control plane stream events?) gets the headers and ends: it has no body to wait for.
      if (request.method === 'HEAD') return void raw.end();
      const deliver = (change: RecordedChange): void => {
        if (raw.writableEnded || (types && !types.has(change.event.type)) || !maySee(principal, change)) return;
        raw.write(`id: ${changes.eventId(change.event.seq)}\nevent: change\ndata: ${JSON.stringify(change.event)}\n\n`);
        if (raw.writableLength > MAX_BUFFERED_BYTES) raw.end();
      };
      raw.write(': connected\n\n');
      // Replay and subscribe with no await between: no event can fall in the gap.
      const resume: ResumePoint = resumeFrom ? changes.resumeAfter(resumeFrom) : { events: [] };
      if ('reset' in resume) raw.write(`id: ${changes.lastEventId}\nevent: reset\ndata: ${JSON.stringify({ reason: resume.reset })}\n\n`);
      else for (const change of resume.events) deliver(change);
      const unsubscribe = changes.subscribe(deliver);
      const unwatch = access.watch(
        principal,
        null,
        'platform',
        () => raw.end(),
        (current) => {
          principal = current;
        },
      );
      const keepAlive = setInterval(() => raw.write(': keep-alive\n\n'), KEEP_ALIVE_MS);
      raw.on('close', () => {
        clearInterval(keepAlive);
        unsubscribe();
        unwatch();
      });
    },
  );
};
