/**
 * Placement: host and pool labels, project residency rules, placement groups, the scheduler's
 * explanation of a decision, and the record of where a VM has run.
 */
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { Type } from '@sinclair/typebox';
import type { PlacementService } from '../../control/placement.ts';
import type { VmService } from '../../control/vms.ts';
import {
  HostUpdateRequest,
  Labels,
  PlacementDecision,
  PlacementGroup,
  PlacementGroupCreateRequest,
  PlacementHistory,
  PoolLabelsRequest,
  ProjectRequirementsRequest,
  ScheduleExplainRequest,
} from '../../wire/placement-schemas.ts';
import { Host, List, ProjectQuery, ResourceRef, VmCreateRequest, VmRef } from '../../wire/schemas.ts';
import { errorResponses, listErrorResponses, type RouteApp } from './common.ts';

export type PlacementRouteServices = { placement: PlacementService; vms: VmService };

const GroupRef = Type.Object({ group: ResourceRef('Placement group name (in the project) or id') });

export const placementRoutes: FastifyPluginAsyncTypebox<PlacementRouteServices> = async (app, services) => {
  registerLabelRoutes(app, services);
  registerGroupRoutes(app, services);
  registerDecisionRoutes(app, services);
};

/** Labels of hosts and pools, and the labels a project requires of them. */
function registerLabelRoutes(app: RouteApp, { placement }: PlacementRouteServices): void {
  app.patch(
    '/v1/hosts/:host',
    {
      config: { access: { on: 'platform', permission: 'host.update' } },
      schema: {
        operationId: 'updateHost',
        tags: ['hosts'],
        summary: "Set a host's labels and overcommit ratios (refused when a label change breaks a project's residency rule)",
        params: Type.Object({ host: ResourceRef('Host name or id') }),
        body: HostUpdateRequest,
        response: { 200: Host, ...errorResponses },
      },
    },
    async (request) => placement.updateHost(request.params.host, request.body),
  );
  app.put(
    '/v1/pools/:pool/labels',
    {
      config: { access: { on: 'platform', permission: 'pool.manage' } },
      schema: {
        operationId: 'setPoolLabels',
        tags: ['storage'],
        summary: "Set a storage-node pool's labels (a dir pool's volumes take their host's labels)",
        params: Type.Object({ pool: ResourceRef('Pool name') }),
        body: PoolLabelsRequest,
        response: { 200: Type.Object({ pool: Type.String({ maxLength: 63 }), labels: Labels }), ...errorResponses },
      },
    },
    async (request) => ({ pool: request.params.pool, labels: await placement.residency.setPoolLabels(request.params.pool, request.body.labels) }),
  );
  app.put(
    '/v1/projects/:project/requirements',
    {
      config: { access: { on: 'platform', permission: 'project.residency' } },
      schema: {
        operationId: 'setProjectRequirements',
        tags: ['projects'],
        summary: "Set the labels every host of the project's VMs and every pool of its volumes must carry (data residency)",
        params: Type.Object({ project: ResourceRef('Project name') }),
        body: ProjectRequirementsRequest,
        response: { 200: Type.Object({ project: Type.String({ maxLength: 63 }), requirements: Labels }), ...errorResponses },
      },
    },
    async (request) => ({
      project: request.params.project,
      requirements: await placement.residency.setRequirements(request.params.project, request.body.requirements),
    }),
  );
}

function registerGroupRoutes(app: RouteApp, { placement }: PlacementRouteServices): void {
  app.get(
    '/v1/placement-groups',
    {
      config: { access: { on: 'list', permission: 'placement.read' } },
      schema: {
        operationId: 'listPlacementGroups',
        tags: ['placement'],
        summary: 'List placement groups with their members',
        querystring: ProjectQuery,
        response: { 200: List(PlacementGroup), ...listErrorResponses },
      },
    },
    async (request) => placement.groups.list(request.query.project, request.visibleProjects),
  );
  app.post(
    '/v1/placement-groups',
    {
      config: { access: { on: 'project', permission: 'placement.manage' } },
      schema: {
        operationId: 'createPlacementGroup',
        tags: ['placement'],
        summary: 'Create a placement group: affinity or anti-affinity, per host or zone, strict or soft',
        body: PlacementGroupCreateRequest,
        response: { 201: PlacementGroup, ...errorResponses },
      },
    },
    async (request, reply) => reply.status(201).send(await placement.groups.create(request.body)),
  );
  app.get(
    '/v1/placement-groups/:group',
    {
      config: { access: { on: 'project', permission: 'placement.read' } },
      schema: {
        operationId: 'getPlacementGroup',
        tags: ['placement'],
        summary: 'Show a placement group, its members and where they run',
        params: GroupRef,
        querystring: ProjectQuery,
        response: { 200: PlacementGroup, ...errorResponses },
      },
    },
    async (request) => placement.groups.get(request.params.group, request.query.project),
  );
  app.delete(
    '/v1/placement-groups/:group',
    {
      config: { access: { on: 'project', permission: 'placement.manage' } },
      schema: {
        operationId: 'deletePlacementGroup',
        tags: ['placement'],
        summary: 'Delete a placement group without members',
        params: GroupRef,
        querystring: ProjectQuery,
        response: { 204: Type.Null(), ...errorResponses },
      },
    },
    async (request, reply) => {
      await placement.groups.delete(request.params.group, request.query.project);
      return reply.status(204).send(null);
    },
  );
}

/** The scheduler's decisions: before a create, for any question, and those already made for a VM. */
function registerDecisionRoutes(app: RouteApp, { vms }: PlacementRouteServices): void {
  app.post(
    '/v1/vms/plan',
    {
      config: { access: { on: 'project', permission: 'vm.create' } },
      schema: {
        operationId: 'planVm',
        tags: ['vms'],
        summary: 'Dry run of a create: every check, then where the VM would go and why (nothing is created)',
        body: VmCreateRequest,
        response: { 200: PlacementDecision, ...errorResponses },
      },
    },
    async (request) => vms.planCreate(request.body),
  );
  app.post(
    '/v1/schedule/explain',
    {
      config: { access: { on: 'platform', permission: 'host.read' } },
      schema: {
        operationId: 'explainSchedule',
        tags: ['placement'],
        summary:
          "The scheduler's decision for a VM of this size (or, with `vm`, for migrating that VM): each host refused by which rule, the scores of the rest",
        body: ScheduleExplainRequest,
        response: { 200: PlacementDecision, ...errorResponses },
      },
    },
    async (request) => vms.policies.explainSchedule(request.body),
  );
  app.get(
    '/v1/vms/:vm/placement',
    {
      config: { access: { on: 'project', permission: 'vm.read' } },
      schema: {
        operationId: 'getVmPlacement',
        tags: ['vms'],
        summary: 'Where the VM has run: each placement with its time, action, actor and the decision behind it',
        params: VmRef,
        querystring: ProjectQuery,
        response: { 200: PlacementHistory, ...errorResponses },
      },
    },
    async (request) => vms.policies.placementHistory(request.params.vm, request.query.project),
  );
}
