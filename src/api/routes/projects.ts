/** Projects: the namespaces that VMs, networks and security groups live in. */
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { NubisError } from '../../core/errors.ts';
import { newId } from '../../core/ids.ts';
import type { Db } from '../../state/database.ts';
import { List, Project, ProjectCreateRequest } from '../../wire/schemas.ts';
import { errorResponses, listErrorResponses } from './common.ts';

/** What the project routes use: the database, where projects are rows. */
export type ProjectRouteServices = { db: Db };

/** GET and POST /v1/projects. */
export const projectRoutes: FastifyPluginAsyncTypebox<ProjectRouteServices> = async (app, services) => {
  app.get(
    '/v1/projects',
    {
      config: { access: { on: 'list', permission: 'project.read' } },
      schema: { operationId: 'listProjects', tags: ['projects'], summary: 'List projects', response: { 200: List(Project), ...listErrorResponses } },
    },
    async () =>
      (await services.db.selectFrom('projects').selectAll().orderBy('name').execute()).map((p) => ({ id: p.id, name: p.name, createdAt: p.created_at })),
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
      if (await services.db.selectFrom('projects').select('id').where('name', '=', request.body.name).executeTakeFirst()) {
        throw new NubisError('PROJECT_NAME_TAKEN', `A project named ${request.body.name} exists`);
      }
      const project = { id: newId('prj'), name: request.body.name, created_at: new Date().toISOString() };
      await services.db.insertInto('projects').values(project).execute();
      return reply.status(201).send({ id: project.id, name: project.name, createdAt: project.created_at });
    },
  );
};
