/** Backup schedules with retention, one per VM (control/backup-schedules.ts, control/backup-scheduler.ts). */
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { Type } from '@sinclair/typebox';
import type { AccessControl } from '../../access/access-control.ts';
import { prunes } from '../../control/backup-prune.ts';
import type { BackupSchedules } from '../../control/backup-schedules.ts';
import { BackupSchedule, BackupScheduleRequest } from '../../wire/backup-schemas.ts';
import { List, ProjectQuery, ResourceName, VmRef } from '../../wire/schemas.ts';
import { errorResponses } from './common.ts';

export type BackupScheduleRouteServices = { schedules: BackupSchedules; access: AccessControl };

export const backupScheduleRoutes: FastifyPluginAsyncTypebox<BackupScheduleRouteServices> = async (app, { schedules, access }) => {
  app.get(
    '/v1/backup-schedules',
    {
      config: { access: { on: 'project', permission: 'backup.read' } },
      schema: {
        operationId: 'listBackupSchedules',
        tags: ['backups'],
        summary: "The project's backup schedules, by VM name, each with its next run and how its last run ended",
        querystring: ProjectQuery,
        response: { 200: List(BackupSchedule), ...errorResponses },
      },
    },
    async (request) => schedules.list(request.query.project),
  );
  app.put(
    '/v1/backup-schedules/:vm',
    {
      config: { access: { on: 'project', permission: 'backup.create' } },
      schema: {
        operationId: 'setBackupSchedule',
        tags: ['backups'],
        summary: "Make or replace a VM's backup schedule: a backup every interval, then its backups pruned by the retention rules",
        params: VmRef,
        querystring: ProjectQuery,
        body: BackupScheduleRequest,
        response: { 200: BackupSchedule, 201: BackupSchedule, ...errorResponses },
      },
    },
    async (request, reply) => {
      // Retention deletes backups, scheduled or not: who sets it must be allowed to delete them too.
      if (prunes(request.body.retention ?? {})) access.check(request.principal!, 'backup.delete', { project: request.accessProject! });
      const { schedule, created } = await schedules.set(request.params.vm, request.body, request.query.project);
      return reply.status(created ? 201 : 200).send(schedule);
    },
  );
  app.get(
    '/v1/backup-schedules/:vm',
    {
      config: { access: { on: 'project', permission: 'backup.read' } },
      schema: {
        operationId: 'showBackupSchedule',
        tags: ['backups'],
        summary: "A VM's backup schedule: its interval, retention rules, next run, the run under way and the last run's outcome",
        params: VmRef,
        querystring: ProjectQuery,
        response: { 200: BackupSchedule, ...errorResponses },
      },
    },
    async (request) => schedules.show(request.params.vm, request.query.project),
  );
  app.delete(
    '/v1/backup-schedules/:vm',
    {
      config: { access: { on: 'project', permission: 'backup.create' } },
      schema: {
        operationId: 'deleteBackupSchedule',
        tags: ['backups'],
        summary: "Delete a VM's backup schedule (its backups stay; a run under way ends without pruning)",
        params: VmRef,
        querystring: ProjectQuery,
        response: { 200: Type.Object({ deleted: ResourceName }), ...errorResponses },
      },
    },
    async (request) => schedules.remove(request.params.vm, request.query.project),
  );
};
