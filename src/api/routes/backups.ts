/** Backups of VMs, their restore, and the backup store's housekeeping (control/backups.ts). */
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { Type } from '@sinclair/typebox';
import type { BackupService } from '../../control/backups.ts';
import {
  Backup,
  BackupAudit,
  BackupChallengeRequest,
  BackupCollectRequest,
  BackupCreateRequest,
  BackupFileRestoreRequest,
  BackupListQuery,
  BackupRef,
  BackupRestoreRequest,
  BackupSearchHit,
  BackupSearchRequest,
  RestoredFile,
} from '../../wire/backup-schemas.ts';
import { Accepted, List, ProjectQuery } from '../../wire/schemas.ts';
import { errorResponses, type RouteApp } from './common.ts';

export type BackupRouteServices = { backups: BackupService };

export const backupRoutes: FastifyPluginAsyncTypebox<BackupRouteServices> = async (app, { backups }) => {
  app.get(
    '/v1/backups',
    {
      config: { access: { on: 'project', permission: 'backup.read' } },
      schema: {
        operationId: 'listBackups',
        tags: ['backups'],
        summary: "The project's backups (of one VM with vm), oldest first",
        querystring: BackupListQuery,
        response: { 200: List(Backup), ...errorResponses },
      },
    },
    async (request) => backups.list(request.query),
  );
  app.post(
    '/v1/backups',
    {
      config: { access: { on: 'project', permission: 'backup.create' } },
      schema: {
        operationId: 'createBackup',
        tags: ['backups'],
        summary: "Back a VM's disks up into the backup store, crash-consistent while it runs, sending only chunks the store has not got (operation)",
        querystring: ProjectQuery,
        body: BackupCreateRequest,
        response: { 202: Accepted, ...errorResponses },
      },
    },
    async (request, reply) => reply.status(202).send({ operation: await backups.create(request.body.vm, request.query.project) }),
  );
  app.get(
    '/v1/backups/:backup',
    {
      config: { access: { on: 'project', permission: 'backup.read' } },
      schema: {
        operationId: 'showBackup',
        tags: ['backups'],
        summary: 'One backup: its disks, what it sent and what the store keeps',
        params: BackupRef,
        querystring: ProjectQuery,
        response: { 200: Backup, ...errorResponses },
      },
    },
    async (request) => backups.show(request.params.backup, request.query.project),
  );
  app.delete(
    '/v1/backups/:backup',
    {
      config: { access: { on: 'project', permission: 'backup.delete' } },
      schema: {
        operationId: 'deleteBackup',
        tags: ['backups'],
        summary: 'Delete a backup (its chunks go at the next collection when no other backup uses them)',
        params: BackupRef,
        querystring: ProjectQuery,
        response: { 200: Type.Object({ deleted: Type.String({ maxLength: 16 }) }), ...errorResponses },
      },
    },
    async (request) => backups.remove(request.params.backup, request.query.project),
  );
  app.post(
    '/v1/backups/:backup/verify',
    {
      config: { access: { on: 'project', permission: 'backup.create' } },
      schema: {
        operationId: 'verifyBackup',
        tags: ['backups'],
        summary: "Check every chunk of a backup: present, unaltered in the store, and opening with the project's key (operation)",
        params: BackupRef,
        querystring: ProjectQuery,
        response: { 202: Accepted, ...errorResponses },
      },
    },
    async (request, reply) => reply.status(202).send({ operation: await backups.verify(request.params.backup, request.query.project) }),
  );
  registerRestoreRoutes(app, backups);
  registerAuditRoutes(app, backups);
};

/** Proofs of retrievability, catalog search and the store's garbage collection. */
function registerAuditRoutes(app: RouteApp, backups: BackupService): void {
  app.post(
    '/v1/backups/challenge',
    {
      config: { access: { on: 'project', permission: 'backup.read' } },
      schema: {
        operationId: 'challengeBackups',
        tags: ['backups'],
        summary: "Make the store prove it still holds a backup's data (or every backup's), without reading it back; each outcome is recorded",
        querystring: ProjectQuery,
        body: BackupChallengeRequest,
        response: { 200: List(BackupAudit), ...errorResponses },
      },
    },
    async (request) => backups.challenge(request.body, request.query.project),
  );
  app.get(
    '/v1/backups/:backup/audits',
    {
      config: { access: { on: 'project', permission: 'backup.read' } },
      schema: {
        operationId: 'listBackupAudits',
        tags: ['backups'],
        summary: "A backup's proof-of-retrievability challenges and their outcomes, oldest first",
        params: BackupRef,
        querystring: ProjectQuery,
        response: { 200: List(BackupAudit), ...errorResponses },
      },
    },
    async (request) => backups.audits(request.params.backup, request.query.project),
  );
  app.post(
    '/v1/backups/search',
    {
      config: { access: { on: 'project', permission: 'backup.read' } },
      schema: {
        operationId: 'searchBackups',
        tags: ['backups'],
        summary: "Find the backed-up files whose name has a word, from the backups' encrypted catalogs (the store never sees the word)",
        querystring: ProjectQuery,
        body: BackupSearchRequest,
        response: { 200: List(BackupSearchHit), ...errorResponses },
      },
    },
    async (request) => backups.search(request.body.word, request.query.project),
  );
  app.post(
    '/v1/backup-store/collect',
    {
      config: { access: { on: 'platform', permission: 'backup.collect' } },
      schema: {
        operationId: 'collectBackupStore',
        tags: ['backups'],
        summary: 'Remove the chunks no backup uses any more (those written or found within graceSeconds stay)',
        body: BackupCollectRequest,
        response: {
          200: Type.Object({
            removedChunks: Type.Integer({ format: 'int32', minimum: 0, maximum: 1e9 }),
            freedBytes: Type.Integer({ format: 'int64', minimum: 0, maximum: 1e18 }),
            keptChunks: Type.Integer({ format: 'int32', minimum: 0, maximum: 1e9 }),
          }),
          ...errorResponses,
        },
      },
    },
    async (request) => backups.collect(request.body.graceSeconds ?? 86_400),
  );
}

/** A new VM made of a backup, or one file out of it. */
function registerRestoreRoutes(app: RouteApp, backups: BackupService): void {
  app.post(
    '/v1/backups/:backup/restore',
    {
      config: { access: { on: 'project', permission: 'backup.restore' } },
      schema: {
        operationId: 'restoreBackup',
        tags: ['backups'],
        summary: 'Make a new VM of a backup: its volumes restored into new dir-pool volumes, its settings as backed up (operation)',
        params: BackupRef,
        querystring: ProjectQuery,
        body: BackupRestoreRequest,
        response: { 202: Accepted, ...errorResponses },
      },
    },
    async (request, reply) => reply.status(202).send({ operation: await backups.restore(request.params.backup, request.body, request.query.project) }),
  );
  app.post(
    '/v1/backups/:backup/file-restore',
    {
      config: { access: { on: 'project', permission: 'backup.restore' } },
      schema: {
        operationId: 'restoreBackupFile',
        tags: ['backups'],
        summary: 'One file of a backup (ext2/3/4 or FAT), read offline from its disk, whole, up to 64 MiB',
        params: BackupRef,
        querystring: ProjectQuery,
        body: BackupFileRestoreRequest,
        response: { 200: RestoredFile, ...errorResponses },
      },
    },
    async (request) => backups.restoreFile(request.params.backup, request.body, request.query.project),
  );
}
