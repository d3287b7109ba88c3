/** Projects: the namespaces that VMs, networks, volumes and security groups live in, with their quotas. */
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { Type } from '@sinclair/typebox';
import { quotaUsage, setQuota } from '../../access/quotas.ts';
import { auditedTransaction } from '../../audit/audit-context.ts';
import { NubisError } from '../../core/errors.ts';
import { newId } from '../../core/ids.ts';
import type { Db } from '../../state/database.ts';
import { ProjectDetail, QuotaSetRequest } from '../../wire/access-schemas.ts';
import { List, Project, ProjectCreateRequest, ResourceName } from '../../wire/schemas.ts';
import { errorResponses, listErrorResponses } from './common.ts';

/** What the project routes use: the database, where projects are rows. */
export type ProjectRouteServices = { db: Db };

const ProjectPath = Type.Object({ project: ResourceName });

/** The project routes, in the order the OpenAPI document lists them. */
export const projectRoutes: FastifyPluginAsyncTypebox<ProjectRouteServices> = async (app, { db }) => {
  app.get(
    '/v1/projects',
    {
      config: { access: { on: 'list', permission: 'project.read' } },
      schema: {
        operationId: 'listProjects',
        tags: ['projects'],
        summary: 'List the projects you may see',
        response: { 200: List(Project), ...listErrorResponses },
      },
    },
    async (request) => {
      let query = db.selectFrom('projects').selectAll().orderBy('name');
      const visible = request.visibleProjects ?? [];
      if (visible !== 'all') query = query.where('id', 'in', visible.length > 0 ? visible : ['']);
      return (await query.execute()).map((p) => ({ id: p.id, name: p.name, createdAt: p.created_at }));
    },
  );
  app.post(
    '/v1/projects',
    {
      config: { access: { on: 'platform', permission: 'project.create' } },
      schema: {
        operationId: 'createProject',
        tags: ['projects'],
        summary: 'Create a project',
        body: ProjectCreateRequest,
        response: { 201: Project, ...errorResponses },
      },
    },
    async (request, reply) => {
      if (await db.selectFrom('projects').select('id').where('name', '=', request.body.name).executeTakeFirst()) {
        throw new NubisError('PROJECT_NAME_TAKEN', `A project named ${request.body.name} exists`);
      }
      const project = { id: newId('prj'), name: request.body.name, created_at: new Date().toISOString(), requirements: '{}' };
      await auditedTransaction(db, (trx) => trx.insertInto('projects').values(project).execute());
      return reply.status(201).send({ id: project.id, name: project.name, createdAt: project.created_at });
    },
  );
  app.get(
    '/v1/projects/:project',
    {
      config: { access: { on: 'project', permission: 'project.read' } },
      schema: {
        operationId: 'getProject',
        tags: ['projects'],
        summary: 'Show a project with each quota: its limit and its use',
        params: ProjectPath,
        response: { 200: ProjectDetail, ...errorResponses },
      },
    },
    async (request) => {
      const project = await db.selectFrom('projects').selectAll().where('id', '=', request.accessProject!.id).executeTakeFirstOrThrow();
      const trusted = project.require_trusted_launch === 1 ? { requireTrustedLaunch: true } : {};
      return { id: project.id, name: project.name, createdAt: project.created_at, quota: await quotaUsage(db, project.id), ...trusted };
    },
  );
  app.put(
    '/v1/projects/:project/quota',
    {
      config: { access: { on: 'platform', permission: 'project.quota' } },
      schema: {
        operationId: 'setProjectQuota',
        tags: ['projects'],
        summary: "Set some of a project's quotas (null removes one); lowering below the use stops new creates until use drops",
        params: ProjectPath,
        body: QuotaSetRequest,
        response: { 200: ProjectDetail, ...errorResponses },
      },
    },
    async (request) => {
      const project = await db.selectFrom('projects').selectAll().where('name', '=', request.params.project).executeTakeFirst();
      if (!project) throw new NubisError('PROJECT_NOT_FOUND', `No project ${request.params.project}`);
      await auditedTransaction(db, (trx) => setQuota(trx, project.id, request.body));
      return { id: project.id, name: project.name, createdAt: project.created_at, quota: await quotaUsage(db, project.id) };
    },
  );
};
