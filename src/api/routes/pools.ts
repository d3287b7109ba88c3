/**
 * Storage: pools and volumes, of the storage node (san) or as qcow2 files on hosts (dir). The
 * routes pass storage-node requests on to the storage node and dir requests to the dir catalogue.
 */
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { Type, type Static } from '@sinclair/typebox';
import type { DirPoolCatalogue } from '../../control/dir-pools.ts';
import type { OperationManager } from '../../control/operations.ts';
import type { StorageCatalogue } from '../../control/storage.ts';
import type { ProjectRef } from '../../control/volume-owners.ts';
import type { VmOwner } from '../../control/vm-owner.ts';
import { parseStoredLabels } from '../../control/labels.ts';
import { poolLabels, type Residency } from '../../control/residency.ts';
import { NubisError } from '../../core/errors.ts';
import type { Db } from '../../state/database.ts';
import type { ChangeFeed } from '../../events/change-feed.ts';
import { publishStorageChanges } from './pool-changes.ts';
import { parseSize } from '../../storage/size.ts';
import {
  Accepted,
  ErrorBody,
  Int32,
  List,
  Pool,
  PoolCreateRequest,
  PoolReplaceRequest,
  ProjectQuery,
  ResourceName,
  Size,
  Volume,
  VolumeCreateRequest,
} from '../../wire/schemas.ts';
import { errorResponses, listErrorResponses, type RouteApp } from './common.ts';

/** What the pool routes use: the storage catalogue, the database for who uses a volume, operations for jobs. */
export type PoolRouteServices = { db: Db; storage: StorageCatalogue; operations: OperationManager; residency: Residency; changes: ChangeFeed; owner: VmOwner };

const PoolRef = Type.Object({ pool: ResourceName });
const VolumeRef = Type.Object({ pool: ResourceName, volume: ResourceName });
const poolPath = (pool: string): string => `/storage/pools/${encodeURIComponent(pool)}`;
type PoolBody = Static<typeof Pool>;
type VolumeBody = Static<typeof Volume>;

/** The lookups that the pool routes share. */
interface PoolLookups {
  dirPools: DirPoolCatalogue;
  isDir(pool: string): Promise<boolean>;
  refuseForDir(pool: string, what: string): Promise<void>;
  volumeView(pool: string, volume: VolumeBody): Promise<VolumeBody>;
}

/** Builds the shared lookups over the plugin's services, once per plugin. */
function poolLookups(services: PoolRouteServices): PoolLookups {
  const volumeView = async (pool: string, volume: VolumeBody): Promise<VolumeBody> => {
    const user = await services.storage.vmOf(pool, volume.name);
    return { ...volume, pool, ...(user ? { usedBy: user.name } : {}) };
  };
  // A pool name refers to a storage-node pool or to a host-based dir pool (one namespace).
  const dirPools = services.storage.dirPools;
  const isDir = async (pool: string): Promise<boolean> => (await dirPools.find(pool)) !== undefined;
  const refuseForDir = async (pool: string, what: string): Promise<void> => {
    if (await isDir(pool)) throw new NubisError('POOL_KIND_UNSUPPORTED', `${pool} is a dir pool (qcow2 files on hosts): ${what} is for storage-node pools`);
  };
  return { dirPools, isDir, refuseForDir, volumeView };
}

/** The pool routes, in the order the OpenAPI document lists them. */
export const poolRoutes: FastifyPluginAsyncTypebox<PoolRouteServices> = async (app, services) => {
  const lookups = poolLookups(services);
  publishStorageChanges(app, services, {
    poolView: (pool) => poolView(services, lookups, pool),
    volumeView: (pool, volume) => volumeShown(services, lookups, pool, volume),
  });
  registerPoolRoutes(app, services, lookups);
  registerPoolJobRoutes(app, services, lookups);
  registerVolumeRoutes(app, services, lookups);
  registerVolumeCreateRoute(app, services, lookups);
  registerVolumeChangeRoutes(app, services, lookups);
};

/** A storage-node pool as the API shows it: its kind, and its labels kept by the control plane. */
async function withLabels(db: Db, pool: PoolBody): Promise<PoolBody> {
  return { ...pool, kind: 'san', labels: await poolLabels(db, pool.name) };
}

/** A pool as GET /v1/pools/:pool shows it. */
async function poolView(services: PoolRouteServices, { dirPools, isDir }: PoolLookups, pool: string): Promise<PoolBody> {
  return (await isDir(pool))
    ? ((await dirPools.show(pool)) as PoolBody)
    : withLabels(services.db, await services.storage.call<PoolBody>({ method: 'GET', path: poolPath(pool) }));
}

/** A volume as GET /v1/pools/:pool/volumes/:volume shows it. */
async function volumeShown(services: PoolRouteServices, { dirPools, isDir, volumeView }: PoolLookups, pool: string, volume: string): Promise<VolumeBody> {
  return (await isDir(pool))
    ? ((await dirPools.showVolume(pool, volume)) as VolumeBody)
    : volumeView(pool, await services.storage.call<VolumeBody>({ method: 'GET', path: `${poolPath(pool)}/volumes/${volume}` }));
}

/** Listing, creating, showing and deleting pools. */
function registerPoolRoutes(app: RouteApp, services: PoolRouteServices, lookups: PoolLookups): void {
  const { dirPools, isDir } = lookups;
  app.get(
    '/v1/pools',
    {
      config: { access: { on: 'platform', permission: 'pool.read' } },
      schema: {
        operationId: 'listPools',
        tags: ['storage'],
        summary: 'List storage pools (storage-node and host dir pools) with health and capacity',
        response: { 200: List(Pool), ...listErrorResponses, 503: ErrorBody },
      },
    },
    async () => [
      ...(await Promise.all((await services.storage.call<PoolBody[]>({ method: 'GET', path: '/storage/pools' })).map((pool) => withLabels(services.db, pool)))),
      ...((await dirPools.list()) as PoolBody[]),
    ],
  );
  app.post(
    '/v1/pools',
    {
      config: { access: { on: 'platform', permission: 'pool.manage' } },
      schema: {
        operationId: 'createPool',
        tags: ['storage'],
        summary: 'Create a pool: over devices with a RAID layout (san), or a folder of qcow2 files on hosts (dir)',
        body: PoolCreateRequest,
        response: { 201: Pool, ...errorResponses },
      },
    },
    async (request, reply) => {
      const { kind, hosts, ...san } = request.body;
      if (kind === 'dir') {
        if (san.layout || san.devices) throw new NubisError('VALIDATION_FAILED', 'A dir pool takes hosts, not a layout or devices');
        const sanNames = (await services.storage.call<PoolBody[]>({ method: 'GET', path: '/storage/pools' }).catch(() => [] as PoolBody[])).map((p) => p.name);
        return reply.status(201).send((await dirPools.create(san.name, hosts ?? [], sanNames.includes(san.name))) as PoolBody);
      }
      if (hosts) throw new NubisError('VALIDATION_FAILED', 'A storage-node pool takes devices, not hosts (hosts are for --kind dir)');
      if (!san.layout || !san.devices) throw new NubisError('VALIDATION_FAILED', 'A storage-node pool needs a layout and at least one device');
      if (await isDir(san.name)) throw new NubisError('POOL_EXISTS', `A pool named ${san.name} exists; choose another name`);
      return reply.status(201).send({ ...(await services.storage.call<PoolBody>({ method: 'POST', path: '/storage/pools', body: san })), kind: 'san' });
    },
  );
  app.get(
    '/v1/pools/:pool',
    {
      config: { access: { on: 'platform', permission: 'pool.read' } },
      schema: {
        operationId: 'getPool',
        tags: ['storage'],
        summary: 'Show a pool: state, capacity, members with error counters (a dir pool: a member per host)',
        params: PoolRef,
        response: { 200: Pool, ...errorResponses },
      },
    },
    async (request) => poolView(services, lookups, request.params.pool),
  );
  app.delete(
    '/v1/pools/:pool',
    {
      config: { access: { on: 'platform', permission: 'pool.manage' } },
      schema: {
        operationId: 'deletePool',
        tags: ['storage'],
        summary: 'Delete an empty pool',
        params: PoolRef,
        response: { 204: Type.Null(), ...errorResponses },
      },
    },
    async (request, reply) => {
      await services.storage.checkUnused(request.params.pool);
      if (await isDir(request.params.pool)) await dirPools.delete(request.params.pool);
      else {
        await services.storage.call({ method: 'DELETE', path: poolPath(request.params.pool) });
        await services.db.deleteFrom('pool_labels').where('pool', '=', request.params.pool).execute();
      }
      return reply.status(204).send(null);
    },
  );
}

/** Scrub and member replacement: storage-node jobs that run on as operations. */
function registerPoolJobRoutes(app: RouteApp, services: PoolRouteServices, { refuseForDir }: PoolLookups): void {
  app.post(
    '/v1/pools/:pool/scrub',
    {
      config: { access: { on: 'platform', permission: 'pool.manage' } },
      schema: {
        operationId: 'scrubPool',
        tags: ['storage'],
        summary: 'Read everything, find silent corruption by checksum and repair it (operation)',
        params: PoolRef,
        body: Type.Object({ maxMbPerSec: Type.Optional(Int32(1, 1000000)) }, { additionalProperties: false }),
        response: { 202: Accepted, ...errorResponses },
      },
      preValidation: async (request) => {
        request.body ??= {};
      },
    },
    async (request, reply) => {
      await refuseForDir(request.params.pool, 'scrub');
      await services.storage.call({ method: 'GET', path: poolPath(request.params.pool) });
      const body = request.body as { maxMbPerSec?: number };
      const operation = await services.operations.start('pool.scrub', { type: 'pool', id: request.params.pool, name: request.params.pool }, (op) =>
        services.storage.runJob(
          `${poolPath(request.params.pool)}/scrub`,
          { ...(body.maxMbPerSec ? { maxBytesPerSec: body.maxMbPerSec * 2 ** 20 } : {}) },
          op,
          'scrubbing',
        ),
      );
      return reply.status(202).send({ operation });
    },
  );
  app.post(
    '/v1/pools/:pool/replace',
    {
      config: { access: { on: 'platform', permission: 'pool.manage' } },
      schema: {
        operationId: 'replacePoolMember',
        tags: ['storage'],
        summary: 'Replace a member and rebuild onto the new device, online (operation)',
        params: PoolRef,
        body: PoolReplaceRequest,
        response: { 202: Accepted, ...errorResponses },
      },
    },
    async (request, reply) => {
      await refuseForDir(request.params.pool, 'replace');
      await services.storage.call({ method: 'GET', path: poolPath(request.params.pool) });
      const { member, device, maxMbPerSec, force } = request.body;
      const body = { member, device, ...(maxMbPerSec ? { maxBytesPerSec: maxMbPerSec * 2 ** 20 } : {}), ...(force ? { force } : {}) };
      // The storage node vets the device before it starts the job: a bad one is this request's 4xx.
      const job = await services.storage.startJob(`${poolPath(request.params.pool)}/replace`, body);
      const operation = await services.operations.start('pool.replace', { type: 'pool', id: request.params.pool, name: request.params.pool }, (op) =>
        services.storage.followJob(job, op, 'rebuilding'),
      );
      return reply.status(202).send({ operation });
    },
  );
}

/** Listing, creating, showing and deleting volumes. */
function registerVolumeRoutes(app: RouteApp, services: PoolRouteServices, { dirPools, isDir, volumeView }: PoolLookups): void {
  app.get(
    '/v1/pools/:pool/volumes',
    {
      config: { access: { on: 'list', permission: 'volume.read' } },
      schema: {
        operationId: 'listVolumes',
        tags: ['storage'],
        summary: 'List the volumes of a pool (those of the given project, or of every project the caller may see)',
        params: PoolRef,
        querystring: ProjectQuery,
        response: { 200: List(Volume), ...errorResponses },
      },
    },
    async (request) => {
      const { pool } = request.params;
      const visible = await services.storage.owners.visibleIn(pool, request.accessProject ? [request.accessProject.id] : (request.visibleProjects ?? []));
      const volumes = (await isDir(pool))
        ? ((await dirPools.listVolumes(pool)) as VolumeBody[])
        : await Promise.all((await services.storage.call<VolumeBody[]>({ method: 'GET', path: `${poolPath(pool)}/volumes` })).map((v) => volumeView(pool, v)));
      return volumes.filter((volume) => visible(volume.name));
    },
  );
  app.get(
    '/v1/pools/:pool/volumes/:volume',
    {
      config: { access: { on: 'project', permission: 'volume.read' } },
      schema: {
        operationId: 'getVolume',
        tags: ['storage'],
        summary: 'Show a volume',
        params: VolumeRef,
        querystring: ProjectQuery,
        response: { 200: Volume, ...errorResponses },
      },
    },
    async (request) =>
      ((await services.storage.owners.requireIn(request.params.pool, request.params.volume, projectOf(request))) ?? (await isDir(request.params.pool)))
        ? ((await dirPools.showVolume(request.params.pool, request.params.volume)) as VolumeBody)
        : volumeView(
            request.params.pool,
            await services.storage.call<VolumeBody>({ method: 'GET', path: `${poolPath(request.params.pool)}/volumes/${request.params.volume}` }),
          ),
  );
  app.delete(
    '/v1/pools/:pool/volumes/:volume',
    {
      config: { access: { on: 'project', permission: 'volume.delete' } },
      schema: {
        operationId: 'deleteVolume',
        tags: ['storage'],
        summary: 'Delete a volume no VM uses (its space returns to the pool)',
        params: VolumeRef,
        querystring: ProjectQuery,
        response: { 204: Type.Null(), ...errorResponses },
      },
    },
    async (request, reply) => {
      await services.storage.owners.requireIn(request.params.pool, request.params.volume, projectOf(request));
      await services.storage.checkUnused(request.params.pool, request.params.volume);
      if (await isDir(request.params.pool)) await dirPools.deleteVolume(request.params.pool, request.params.volume);
      else await services.storage.call({ method: 'DELETE', path: `${poolPath(request.params.pool)}/volumes/${request.params.volume}` });
      await services.storage.owners.forget(request.params.pool, request.params.volume);
      return reply.status(204).send(null);
    },
  );
}

/** Creating a volume: its bytes reserved against the project's quota first. */
function registerVolumeCreateRoute(app: RouteApp, services: PoolRouteServices, { dirPools, isDir, volumeView }: PoolLookups): void {
  app.post(
    '/v1/pools/:pool/volumes',
    {
      config: { access: { on: 'project', permission: 'volume.create' } },
      schema: {
        operationId: 'createVolume',
        tags: ['storage'],
        summary: 'Create a volume: thin on a storage-node pool, a qcow2 file on a dir pool (on `host`)',
        params: PoolRef,
        querystring: ProjectQuery,
        body: VolumeCreateRequest,
        response: { 201: Volume, ...errorResponses },
      },
    },
    async (request, reply) => {
      const { host, ...body } = request.body;
      const { pool } = request.params;
      const dir = await isDir(pool);
      if (!dir && host) throw new NubisError('VALIDATION_FAILED', `${pool} is a storage-node pool, reachable from every host: drop --host`);
      if (dir && body.encrypted) {
        throw new NubisError(
          'POOL_KIND_UNSUPPORTED',
          `${pool} is a dir pool: encrypted volumes are made on storage-node pools for now; drop --encrypted or pick such a pool`,
        );
      }
      const project = projectOf(request);
      const onHost = dir ? await dirPools.hostOf(pool, host) : undefined;
      await services.residency.checkVolume(project.id, project.name, {
        pool,
        ...(onHost ? { hostName: onHost.name, hostLabels: parseStoredLabels(onHost.labels) } : {}),
      });
      const created = await withOwnership(services, pool, body.name, project, parseSize(body.size), async () =>
        dir
          ? ((await dirPools.createVolume(pool, body.name, parseSize(body.size), host)) as VolumeBody)
          : volumeView(pool, await services.storage.call<VolumeBody>({ method: 'POST', path: `${poolPath(pool)}/volumes`, body })),
      );
      return reply.status(201).send(created);
    },
  );
}

/** Snapshots, clones and resizes of a volume. */
function registerVolumeChangeRoutes(app: RouteApp, services: PoolRouteServices, { dirPools, isDir, refuseForDir, volumeView }: PoolLookups): void {
  for (const action of ['snapshot', 'clone'] as const) {
    app.post(
      `/v1/pools/:pool/volumes/:volume/${action}`,
      {
        config: { access: { on: 'project', permission: action === 'snapshot' ? 'volume.snapshot' : 'volume.create' } },
        schema: {
          operationId: `${action}Volume`,
          tags: ['storage'],
          summary: action === 'snapshot' ? 'Take a read-only copy-on-write snapshot, instantly' : 'Make a writable copy-on-write clone, instantly',
          params: VolumeRef,
          querystring: ProjectQuery,
          body: Type.Object({ name: ResourceName }, { additionalProperties: false }),
          response: { 201: Volume, ...errorResponses },
        },
      },
      async (request, reply) => {
        const { pool, volume } = request.params;
        const project = projectOf(request);
        await services.storage.owners.requireIn(pool, volume, project);
        await refuseForDir(pool, action);
        const source = await services.storage.call<VolumeBody>({ method: 'GET', path: `${poolPath(pool)}/volumes/${volume}` });
        // A snapshot or clone counts its full size against the quota, as Cinder counts snapshot gigabytes.
        const copy = await withOwnership(services, pool, request.body.name, project, source.sizeBytes, async () =>
          volumeView(
            pool,
            await services.storage.call<VolumeBody>({ method: 'POST', path: `${poolPath(pool)}/volumes/${volume}/${action}`, body: request.body }),
          ),
        );
        return reply.status(201).send(copy);
      },
    );
  }
  app.post(
    '/v1/pools/:pool/volumes/:volume/resize',
    {
      config: { access: { on: 'project', permission: 'volume.resize' } },
      schema: {
        operationId: 'resizeVolume',
        tags: ['storage'],
        summary: 'Grow or shrink a volume (never below its data, nor under a VM; a dir volume only grows, live under its running VM)',
        params: VolumeRef,
        querystring: ProjectQuery,
        body: Type.Object({ size: Size }, { additionalProperties: false }),
        response: { 200: Volume, ...errorResponses },
      },
    },
    async (request) => {
      const project = projectOf(request);
      await services.storage.owners.requireIn(request.params.pool, request.params.volume, project);
      const undo = await services.storage.owners.resize(request.params.pool, request.params.volume, project, parseSize(request.body.size));
      try {
        return await resizeOnStorage(request.params.pool, request.params.volume, request.body.size);
      } catch (error) {
        await undo();
        throw error;
      }
    },
  );
  async function resizeOnStorage(pool: string, volume: string, size: string): Promise<VolumeBody> {
    const vm = await services.storage.vmOf(pool, volume);
    if (await isDir(pool)) {
      const grow = async () => (await dirPools.resizeVolume(pool, volume, parseSize(size))) as VolumeBody;
      // A VM's disk grows as an action of the VM's one owner: never during its migration (which
      // copies the file), in turn with its starts and stops. Its agent grows it live if it runs.
      return vm ? services.owner.claim(vm.id, 'tune', vm.name).run(grow) : grow();
    }
    if (vm) {
      const current = await services.storage.call<VolumeBody>({ method: 'GET', path: `${poolPath(pool)}/volumes/${volume}` });
      if (parseSize(size) < current.sizeBytes)
        throw new NubisError('VOLUME_IN_USE', `Volume ${pool}/${volume} is a disk of VM ${vm.name}, and a disk never shrinks under a VM; detach it first`);
    }
    return volumeView(pool, await services.storage.call<VolumeBody>({ method: 'POST', path: `${poolPath(pool)}/volumes/${volume}/resize`, body: { size } }));
  }
}

/** The project a volume route acts in (the access hook resolved and checked it). */
function projectOf(request: { accessProject?: ProjectRef }): ProjectRef {
  if (!request.accessProject) throw new NubisError('AUTH_REQUIRED', 'This request needs a bearer token');
  return request.accessProject;
}

/**
 * Makes a volume for `project`: its bytes are reserved against the quota first (atomically),
 * then the storage makes it; a refusal by the storage gives the reservation back.
 */
async function withOwnership(
  services: PoolRouteServices,
  pool: string,
  volume: string,
  project: ProjectRef,
  sizeBytes: number,
  make: () => Promise<VolumeBody>,
): Promise<VolumeBody> {
  const undo = await services.storage.owners.reserve(pool, volume, project, sizeBytes);
  try {
    return await make();
  } catch (error) {
    await undo();
    throw error;
  }
}
