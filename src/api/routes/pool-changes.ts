/**
 * Pools and volumes live on the storage node (or as dir pools on hosts), changed only through
 * the pool routes: their changes go into the change feed from here, one hook for every route,
 * rather than a line in each handler.
 */
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { ChangeFeed } from '../../events/change-feed.ts';
import type { StorageCatalogue } from '../../control/storage.ts';
import type { Db } from '../../state/database.ts';
import type { RouteApp } from './common.ts';

/** How the feed shows a pool and a volume: as their GET routes do. */
export interface StorageViews {
  poolView(pool: string): Promise<unknown>;
  volumeView(pool: string, volume: string): Promise<unknown>;
}

/** Describes pools and volumes to the feed, and publishes what each successful change request changed. */
export function publishStorageChanges(app: RouteApp, services: { db: Db; storage: StorageCatalogue; changes: ChangeFeed }, views: StorageViews): void {
  const { changes, storage, db } = services;
  changes.describe('pool', async (pool) => {
    const resource = await views.poolView(pool).catch(() => undefined);
    return resource === undefined ? undefined : { name: pool, project: null, resource };
  });
  changes.describe('volume', async (id) => {
    const [pool, volume] = id.split('/');
    const resource = await views.volumeView(pool, volume).catch(() => undefined);
    if (resource === undefined) return undefined;
    const projectId = await storage.owners.projectOf(pool, volume);
    const project = await db.selectFrom('projects').select('name').where('id', '=', projectId).executeTakeFirst();
    return { name: id, project: { id: projectId, name: project?.name ?? projectId }, resource };
  });
  app.addHook('onSend', async (request: FastifyRequest, reply: FastifyReply, payload: unknown) => {
    if (request.method !== 'GET' && reply.statusCode < 300) publishFor(changes, request, reply.statusCode, payload);
    return payload;
  });
}

/** The changes a successful request of a pool route made. */
function publishFor(changes: ChangeFeed, request: FastifyRequest, status: number, payload: unknown): void {
  const route = request.routeOptions.url ?? '';
  const params = request.params as { pool?: string; volume?: string };
  const created = status === 201 && typeof payload === 'string' ? (JSON.parse(payload) as { name?: string; pool?: string }) : undefined;
  const project = request.accessProject ? { projectId: request.accessProject.id } : {};
  if (route === '/v1/pools') {
    if (created?.name) changes.publish('pool', 'created', created.name);
    return;
  }
  if (!params.pool) return;
  if (!route.includes('/volumes')) {
    changes.publish('pool', request.method === 'DELETE' ? 'deleted' : 'updated', params.pool);
    return;
  }
  // A volume more or less, or a bigger one, changes the pool's free space too.
  changes.publish('pool', 'updated', params.pool);
  if (created?.name) changes.publish('volume', 'created', `${created.pool ?? params.pool}/${created.name}`, project);
  if (params.volume && !created)
    changes.publish('volume', request.method === 'DELETE' ? 'deleted' : 'updated', `${params.pool}/${params.volume}`, {
      name: `${params.pool}/${params.volume}`,
      ...project,
    });
}
