/** The audit log: entries (a project's for its owners, all for the platform admin), signed heads, verification, proofs, export. */
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { Type } from '@sinclair/typebox';
import type { AuditLog, PublishedHead } from '../../audit/audit-log.ts';
import { listAuditEntries } from '../../audit/audit-store.ts';
import { NubisError } from '../../core/errors.ts';
import type { Db } from '../../state/database.ts';
import { AuditEntry, AuditExport, AuditVerifyReport, ConsistencyProof, InclusionProof, TreeHead, UserName } from '../../wire/access-schemas.ts';
import { Int32, List, ResourceName, Timestamp } from '../../wire/schemas.ts';
import { errorResponses, listErrorResponses } from './common.ts';

export type AuditRouteServices = { db: Db; audit: AuditLog; publishFile?: string };

export const auditRoutes: FastifyPluginAsyncTypebox<AuditRouteServices> = async (app, services) => {
  registerEntryRoutes(app, services);
  registerProofRoutes(app, services);
};

type RouteApp = Parameters<FastifyPluginAsyncTypebox>[0];

/** Entries, heads and verification. */
function registerEntryRoutes(app: RouteApp, { db, audit, publishFile }: AuditRouteServices): void {
  app.get(
    '/v1/audit',
    {
      config: { access: { on: 'list', permission: 'audit.read' } },
      schema: {
        operationId: 'listAudit',
        tags: ['audit'],
        summary: 'Audit entries, newest first: of a project (its owners), or all (the platform admin)',
        querystring: Type.Object(
          { project: Type.Optional(ResourceName), user: Type.Optional(UserName), since: Type.Optional(Timestamp), limit: Int32(1, 1000, { default: 100 }) },
          { additionalProperties: false },
        ),
        response: { 200: List(AuditEntry), ...errorResponses },
      },
    },
    async (request) =>
      listAuditEntries(db, {
        user: request.query.user,
        since: request.query.since,
        limit: request.query.limit,
        projectIds: request.accessProject ? [request.accessProject.id] : (request.visibleProjects ?? []),
      }),
  );
  app.get(
    '/v1/audit/heads',
    {
      config: { access: { on: 'platform', permission: 'audit.verify' } },
      schema: {
        operationId: 'listAuditHeads',
        tags: ['audit'],
        summary: 'The signed tree heads, oldest first',
        response: { 200: Type.Array(TreeHead, { maxItems: 10_000_000 }), ...listErrorResponses },
      },
    },
    async () => audit.heads(),
  );
  app.post(
    '/v1/audit/verify',
    {
      config: { access: { on: 'platform', permission: 'audit.verify', audit: false } },
      schema: {
        operationId: 'verifyAudit',
        tags: ['audit'],
        summary: 'Recompute the tree and check every signed head, and a head kept elsewhere (given, or the published file)',
        body: Type.Object({ head: Type.Optional(TreeHead) }, { additionalProperties: false }),
        response: { 200: AuditVerifyReport, ...errorResponses },
      },
      preValidation: async (request) => {
        request.body ??= {};
      },
    },
    async (request) => {
      let external = request.body.head as PublishedHead | undefined;
      if (!external && publishFile && existsSync(publishFile)) external = JSON.parse(await readFile(publishFile, 'utf8')) as PublishedHead;
      return audit.verify(external);
    },
  );
}

/** Inclusion and consistency proofs, and the export for offline verification. */
function registerProofRoutes(app: RouteApp, { audit }: AuditRouteServices): void {
  app.get(
    '/v1/audit/entries/:seq/proof',
    {
      config: { access: { on: 'platform', permission: 'audit.verify' } },
      schema: {
        operationId: 'getAuditInclusionProof',
        tags: ['audit'],
        summary: 'Inclusion proof of an entry in a signed tree (RFC 9162 2.1.3)',
        params: Type.Object({ seq: Int32(1, 2 ** 31 - 1) }),
        querystring: Type.Object({ treeSize: Type.Optional(Int32(1, 2 ** 31 - 1)) }, { additionalProperties: false }),
        response: { 200: InclusionProof, ...errorResponses },
      },
    },
    async (request) => audit.inclusionProof(request.params.seq, request.query.treeSize),
  );
  app.get(
    '/v1/audit/consistency',
    {
      config: { access: { on: 'platform', permission: 'audit.verify' } },
      schema: {
        operationId: 'getAuditConsistencyProof',
        tags: ['audit'],
        summary: 'Consistency proof between two tree sizes (RFC 9162 2.1.4): the larger tree extends the smaller',
        querystring: Type.Object({ from: Int32(1, 2 ** 31 - 1), to: Int32(1, 2 ** 31 - 1) }, { additionalProperties: false }),
        response: { 200: ConsistencyProof, ...errorResponses },
      },
    },
    async (request) => {
      if (request.query.from > request.query.to)
        throw new NubisError('AUDIT_OUT_OF_RANGE', `from (${request.query.from}) must not exceed to (${request.query.to})`);
      return audit.consistencyProof(request.query.from, request.query.to);
    },
  );
  app.get(
    '/v1/audit/export',
    {
      config: { access: { on: 'platform', permission: 'audit.verify' } },
      schema: {
        operationId: 'exportAudit',
        tags: ['audit'],
        summary: 'The whole log, its heads and public key, for offline verification (docs/AUDIT-VERIFY.md)',
        response: { 200: AuditExport, ...listErrorResponses },
      },
    },
    async () => audit.export(),
  );
}
