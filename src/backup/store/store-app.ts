/**
 * The backup store's API: a process of its own (`nubis daemon backup-store`, started by
 * `nubis up`), apart from the control plane and the hosts, serving one folder of chunks and
 * backups (chunk-store.ts) on a unix socket of mode 0600. Its clients are the host agents, which
 * upload and download sealed chunks, and the control plane, which lists, checks, collects and
 * forgets backups. It never receives a key, a plaintext chunk, a file name or a VM name.
 *
 *   PUT    /chunks/:id          a sealed chunk (application/octet-stream)
 *   GET    /chunks/:id          a sealed chunk
 *   POST   /chunks/missing      { ids } -> { missing }: which of these it has not got
 *   PUT    /backups/:id         commits a backup: { createdAt, chunks, manifest (base64) }
 *   GET    /backups             the committed backups
 *   GET    /backups/:id         one, with its sealed manifest
 *   DELETE /backups/:id         forgets one
 *   PUT    /chunks/:id/tags     its proof tags (application/octet-stream), sent before the chunk
 *   PUT    /backups/:id/catalog an encrypted file catalog, sent before the backup is committed
 *   POST   /challenge           { challenge } -> { proof }: proves it holds the challenged blocks
 *   POST   /search              { queries: [{ backup, token }] } -> the catalogs' encrypted entries
 *   POST   /check               { backup? } -> chunks missing or rotten (against their digests)
 *   POST   /collect             { graceSeconds } -> removes chunks no backup names
 */
import { chmod, rm } from 'node:fs/promises';
import Fastify, { type FastifyInstance } from 'fastify';
import { isNubisError, messageOf } from '../../core/errors.ts';
import { toWireError } from '../../core/error-codes.ts';
import { CHUNK_ID } from '../chunk-crypto.ts';
import { BACKUP_ID, ChunkStore, MAX_SEALED_CHUNK_BYTES } from './chunk-store.ts';
import { prove } from '../proof/por.ts';
import { challengeFromJson, proofToJson } from '../proof/por-wire.ts';

/** A catalog of some 200,000 files is about 130 MB of JSON. */
const MAX_CATALOG_BYTES = 512 * 1024 * 1024;

const ChunkParams = {
  type: 'object',
  required: ['id'],
  properties: { id: { type: 'string', pattern: CHUNK_ID.source } },
} as const;
const BackupParams = {
  type: 'object',
  required: ['id'],
  properties: { id: { type: 'string', pattern: BACKUP_ID.source } },
} as const;
const ChunkIds = { type: 'array', maxItems: 262_144, items: { type: 'string', pattern: CHUNK_ID.source } } as const;

/** The store's routes over `store` (without listening, so a test can `inject`). */
export function buildStoreApp(store: ChunkStore): FastifyInstance {
  // A commit names up to 262,144 chunks (1 TiB of 4 MiB chunks): a body of some 17 MiB.
  const app = Fastify({ logger: false, bodyLimit: 32 * 1024 * 1024 });
  app.addContentTypeParser('application/octet-stream', { parseAs: 'buffer', bodyLimit: MAX_SEALED_CHUNK_BYTES }, (_request, body, done) => done(null, body));
  app.setErrorHandler((error, _request, reply) => {
    // Fastify's own refusals (a body too large, a wrong content type) keep their 4xx status.
    const fastifyStatus = isNubisError(error) ? undefined : (error as { statusCode?: number }).statusCode;
    const { status, body } = (error as { validation?: unknown }).validation
      ? { status: 400, body: { code: 'VALIDATION_FAILED', message: messageOf(error) } }
      : fastifyStatus && fastifyStatus >= 400 && fastifyStatus < 500
        ? { status: fastifyStatus, body: { code: 'BAD_REQUEST', message: messageOf(error) } }
        : toWireError(error);
    void reply.status(status).send(body);
  });

  registerChunkRoutes(app, store);
  registerBackupRoutes(app, store);
  return app;
}

/** Sealed chunks, their proof tags, and challenges over them. */
function registerChunkRoutes(app: FastifyInstance, store: ChunkStore): void {
  app.put<{ Params: { id: string }; Body: Buffer }>('/chunks/:id', { schema: { params: ChunkParams } }, async (request) => {
    if (!Buffer.isBuffer(request.body)) throw Object.assign(new Error('A chunk is sent as application/octet-stream'), { validation: true });
    return store.putChunk(request.params.id, request.body);
  });
  app.put<{ Params: { id: string }; Body: Buffer }>('/chunks/:id/tags', { schema: { params: ChunkParams } }, async (request, reply) => {
    if (!Buffer.isBuffer(request.body)) throw Object.assign(new Error('Tags are sent as application/octet-stream'), { validation: true });
    await store.putTags(request.params.id, request.body);
    return reply.status(204).send();
  });
  app.post<{ Body: { challenge: unknown } }>(
    '/challenge',
    { schema: { body: { type: 'object', required: ['challenge'], additionalProperties: false, properties: { challenge: { type: 'object' } } } } },
    async (request) => ({ proof: proofToJson(await prove(challengeFromJson(request.body.challenge), store.proofSource())) }),
  );
  app.put<{ Params: { id: string }; Body: unknown }>(
    '/backups/:id/catalog',
    { bodyLimit: MAX_CATALOG_BYTES, schema: { params: BackupParams, body: { type: 'object' } } },
    async (request, reply) => {
      await store.putCatalog(request.params.id, request.body);
      return reply.status(204).send();
    },
  );
  app.post<{ Body: { queries: Array<{ backup: string; token: string }> } }>(
    '/search',
    {
      schema: {
        body: {
          type: 'object',
          required: ['queries'],
          additionalProperties: false,
          properties: {
            queries: {
              type: 'array',
              maxItems: 100_000,
              items: {
                type: 'object',
                required: ['backup', 'token'],
                additionalProperties: false,
                properties: { backup: { type: 'string', pattern: BACKUP_ID.source }, token: { type: 'string', pattern: '^[A-Za-z0-9_-]{43}$' } },
              },
            },
          },
        },
      },
    },
    async (request) => ({ results: await store.searchCatalogs(request.body.queries) }),
  );
  app.get<{ Params: { id: string } }>('/chunks/:id', { schema: { params: ChunkParams } }, async (request, reply) => {
    const bytes = await store.getChunk(request.params.id);
    return reply.type('application/octet-stream').send(bytes);
  });
  app.post<{ Body: { ids: string[] } }>(
    '/chunks/missing',
    { schema: { body: { type: 'object', required: ['ids'], additionalProperties: false, properties: { ids: ChunkIds } } } },
    async (request) => ({ missing: await store.missing(request.body.ids) }),
  );
}

/** Committed backups, their catalogs, and the store's own checks. */
function registerBackupRoutes(app: FastifyInstance, store: ChunkStore): void {
  app.put<{ Params: { id: string }; Body: { createdAt: string; chunks: string[]; manifest: string } }>(
    '/backups/:id',
    {
      schema: {
        params: BackupParams,
        body: {
          type: 'object',
          required: ['createdAt', 'chunks', 'manifest'],
          additionalProperties: false,
          properties: {
            createdAt: { type: 'string', format: 'date-time', maxLength: 32 },
            chunks: ChunkIds,
            manifest: { type: 'string', maxLength: 16 * 1024 * 1024, pattern: '^[A-Za-z0-9+/]*={0,2}$' },
          },
        },
      },
    },
    async (request) => store.commit(request.params.id, { ...request.body, manifest: Buffer.from(request.body.manifest, 'base64') }),
  );
  app.get('/backups', async () => ({ backups: await store.list() }));
  app.get<{ Params: { id: string } }>('/backups/:id', { schema: { params: BackupParams } }, async (request) => {
    const backup = await store.backup(request.params.id);
    return { ...backup, manifest: backup.manifest.toString('base64') };
  });
  app.delete<{ Params: { id: string } }>('/backups/:id', { schema: { params: BackupParams } }, async (request, reply) => {
    await store.remove(request.params.id);
    return reply.status(204).send();
  });
  app.post<{ Body: { backup?: string } }>(
    '/check',
    { schema: { body: { type: 'object', additionalProperties: false, properties: { backup: { type: 'string', pattern: BACKUP_ID.source } } } } },
    async (request) => store.check(request.body?.backup),
  );
  app.post<{ Body: { graceSeconds: number } }>(
    '/collect',
    {
      schema: {
        body: {
          type: 'object',
          required: ['graceSeconds'],
          additionalProperties: false,
          properties: { graceSeconds: { type: 'integer', minimum: 0, maximum: 31_536_000 } },
        },
      },
    },
    async (request) => store.collect(request.body.graceSeconds),
  );
}

/** Opens the store in `dir` and serves it on the unix socket `socketPath` (mode 0600: root's processes only). */
export async function startBackupStore(options: { dir: string; socketPath: string }): Promise<{ close(): Promise<void> }> {
  const store = new ChunkStore(options.dir);
  await store.open();
  const app = buildStoreApp(store);
  await rm(options.socketPath, { force: true });
  await app.listen({ path: options.socketPath });
  await chmod(options.socketPath, 0o600);
  return { close: () => app.close() };
}
