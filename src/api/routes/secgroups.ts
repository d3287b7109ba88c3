/** Security groups and their allow rules. */
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { Type } from '@sinclair/typebox';
import type { SecurityGroupService } from '../../control/security-groups.ts';
import { List, ProjectQuery, ResourceRef, Secgroup, SecgroupCreateRequest, SecgroupRule, SecgroupRuleRequest } from '../../wire/schemas.ts';
import { errorResponses, listErrorResponses, type RouteApp } from './common.ts';

/** What the security group routes use. */
export type SecgroupRouteServices = { secgroups: SecurityGroupService };

const GroupRef = Type.Object({ group: ResourceRef('Security group name (in the project) or id') });

/** The security group routes, in the order the OpenAPI document lists them. */
export const secgroupRoutes: FastifyPluginAsyncTypebox<SecgroupRouteServices> = async (app, services) => {
  app.get(
    '/v1/secgroups',
    {
      config: { access: { on: 'list', permission: 'secgroup.read' } },
      schema: {
        operationId: 'listSecgroups',
        tags: ['secgroups'],
        summary: 'List security groups',
        querystring: ProjectQuery,
        response: { 200: List(Secgroup), ...listErrorResponses },
      },
    },
    async (request) => services.secgroups.list(request.query.project, request.visibleProjects),
  );
  app.post(
    '/v1/secgroups',
    {
      config: { access: { on: 'project', permission: 'secgroup.create' } },
      schema: {
        operationId: 'createSecgroup',
        tags: ['secgroups'],
        summary: 'Create a security group',
        body: SecgroupCreateRequest,
        response: { 201: Secgroup, ...errorResponses },
      },
    },
    async (request, reply) => reply.status(201).send(await services.secgroups.create(request.body)),
  );
  app.get(
    '/v1/secgroups/:group',
    {
      config: { access: { on: 'project', permission: 'secgroup.read' } },
      schema: {
        operationId: 'getSecgroup',
        tags: ['secgroups'],
        summary: 'Show a security group with its rules and members',
        params: GroupRef,
        querystring: ProjectQuery,
        response: { 200: Secgroup, ...errorResponses },
      },
    },
    async (request) => services.secgroups.get(request.params.group, request.query.project),
  );
  app.delete(
    '/v1/secgroups/:group',
    {
      config: { access: { on: 'project', permission: 'secgroup.delete' } },
      schema: {
        operationId: 'deleteSecgroup',
        tags: ['secgroups'],
        summary: 'Delete a security group no VM uses',
        params: GroupRef,
        querystring: ProjectQuery,
        response: { 204: Type.Null(), ...errorResponses },
      },
    },
    async (request, reply) => {
      await services.secgroups.delete(request.params.group, request.query.project);
      return reply.status(204).send(null);
    },
  );
  registerRuleRoutes(app, services);
};

/** Adding and deleting the allow rules of a group. */
function registerRuleRoutes(app: RouteApp, services: SecgroupRouteServices): void {
  app.post(
    '/v1/secgroups/:group/rules',
    {
      config: { access: { on: 'project', permission: 'secgroup.rules' } },
      schema: {
        operationId: 'createSecgroupRule',
        tags: ['secgroups'],
        summary: 'Add an allow rule (applied to every member port at once)',
        params: GroupRef,
        querystring: ProjectQuery,
        body: SecgroupRuleRequest,
        response: { 201: SecgroupRule, ...errorResponses },
      },
    },
    async (request, reply) => reply.status(201).send(await services.secgroups.addRule(request.params.group, request.body, request.query.project)),
  );
  app.delete(
    '/v1/secgroups/:group/rules/:rule',
    {
      config: { access: { on: 'project', permission: 'secgroup.rules' } },
      schema: {
        operationId: 'deleteSecgroupRule',
        tags: ['secgroups'],
        summary: 'Delete a rule (applied at once)',
        params: Type.Object({ group: ResourceRef('Security group name (in the project) or id'), rule: ResourceRef('Rule id') }),
        querystring: ProjectQuery,
        response: { 204: Type.Null(), ...errorResponses },
      },
    },
    async (request, reply) => {
      await services.secgroups.deleteRule(request.params.group, request.params.rule, request.query.project);
      return reply.status(204).send(null);
    },
  );
}
