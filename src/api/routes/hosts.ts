/** Hosts: listing, maintenance (evacuate and restore) and the host agents' join and report. */
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { Type } from '@sinclair/typebox';
import type { HostRegistry } from '../../control/hosts.ts';
import type { VmService } from '../../control/vms.ts';
import type { VmStatus } from '../../agent-api/contract.ts';
import type { HostMaintenance } from '../../migration/host-maintenance.ts';
import type { HaManager } from '../../ha/ha-manager.ts';
import type { Autostart } from '../../control/autostart.ts';
import { HeartbeatAnswer, HeartbeatRequest } from '../../agent-api/heartbeat.ts';
import { Accepted, Host, HostJoinRequest, HostReport, Int32, List, ResourceId, ResourceRef } from '../../wire/schemas.ts';
import { errorResponses, listErrorResponses, type RouteApp } from './common.ts';

/** What the host routes use: the host registry, VMs for agent reports, and host maintenance. */
export type HostRouteServices = { hosts: HostRegistry; vms: VmService; maintenance: HostMaintenance; ha: HaManager; autostart: Autostart };

const HostRef = Type.Object({ host: ResourceRef('Host name or id') });

/** The host routes, in the order the OpenAPI document lists them. */
export const hostRoutes: FastifyPluginAsyncTypebox<HostRouteServices> = async (app, services) => {
  app.get(
    '/v1/hosts',
    {
      config: { access: { on: 'platform', permission: 'host.read' } },
      schema: {
        operationId: 'listHosts',
        tags: ['hosts'],
        summary: 'List hosts with capacity and allocation',
        response: { 200: List(Host), ...listErrorResponses },
      },
    },
    async () => services.hosts.list(),
  );
  app.get(
    '/v1/hosts/:host',
    {
      config: { access: { on: 'platform', permission: 'host.read' } },
      schema: { operationId: 'getHost', tags: ['hosts'], summary: 'Show a host', params: HostRef, response: { 200: Host, ...errorResponses } },
    },
    async (request) => services.hosts.get(request.params.host),
  );
  registerMaintenanceRoutes(app, services);
  registerAgentRoutes(app, services);
};

/** Evacuate and restore: a host out of and back into service, its VMs migrating live. */
function registerMaintenanceRoutes(app: RouteApp, services: HostRouteServices): void {
  app.post(
    '/v1/hosts/:host/evacuate',
    {
      config: { access: { on: 'platform', permission: 'host.evacuate' } },
      schema: {
        operationId: 'evacuateHost',
        tags: ['hosts'],
        summary: 'Maintenance: place nothing on the host and live-migrate its running VMs away (operation)',
        params: HostRef,
        body: Type.Object({ parallel: Int32(1, 8, { default: 2, description: 'VMs that migrate at once' }) }, { additionalProperties: false }),
        response: { 202: Accepted, ...errorResponses },
      },
      preValidation: async (request) => {
        request.body ??= { parallel: 2 };
      },
    },
    async (request, reply) =>
      reply.status(202).send({ operation: await services.maintenance.evacuate(request.params.host, request.body as { parallel?: number }) }),
  );
  app.post(
    '/v1/hosts/:host/restore',
    {
      config: { access: { on: 'platform', permission: 'host.evacuate' } },
      schema: {
        operationId: 'restoreHost',
        tags: ['hosts'],
        summary: 'End maintenance: the host takes VMs again; with moveBack, the VMs that last left it migrate back (202 with an operation)',
        params: HostRef,
        body: Type.Object(
          { moveBack: Type.Boolean({ default: false }), parallel: Int32(1, 8, { default: 2, description: 'VMs that migrate at once' }) },
          { additionalProperties: false },
        ),
        response: { 200: Host, 202: Accepted, ...errorResponses },
      },
      preValidation: async (request) => {
        request.body ??= { moveBack: false, parallel: 2 };
      },
    },
    async (request, reply) => {
      const operation = await services.maintenance.restore(request.params.host, request.body as { moveBack?: boolean; parallel?: number });
      if (operation) return reply.status(202).send({ operation });
      return services.hosts.get(request.params.host);
    },
  );
}

/** Join, heartbeat and report: called by host agents, with the join token and their own token, not the admin's. */
function registerAgentRoutes(app: RouteApp, services: HostRouteServices): void {
  app.post(
    '/v1/hosts/:name/heartbeat',
    {
      config: { access: { on: 'agent', audit: false } },
      schema: {
        operationId: 'hostHeartbeat',
        tags: ['hosts'],
        summary: 'A host agent says it lives (every second); the answer says what it must kill and whom its watchdog probes (agent token)',
        security: [{ agentBearer: [] }],
        params: Type.Object({ name: ResourceRef('Host name') }),
        body: HeartbeatRequest,
        response: { 200: HeartbeatAnswer, ...errorResponses },
      },
    },
    async (request) => {
      const header = request.headers.authorization ?? '';
      const host = await services.hosts.authenticateAgent(request.params.name, header.startsWith('Bearer ') ? header.slice(7) : '');
      return services.ha.onHeartbeat(host, request.body.vms);
    },
  );
  app.post(
    '/v1/hosts/join',
    {
      config: { access: { on: 'agent' } },
      schema: {
        operationId: 'joinHost',
        tags: ['hosts'],
        summary: 'A host agent joins with the join token',
        security: [],
        body: HostJoinRequest,
        response: {
          200: Type.Object({
            hostId: ResourceId,
            controlToken: Type.String({
              maxLength: 128,
              description: 'What the control plane presents to this agent from now on; the agent keeps only its hash',
            }),
          }),
          ...errorResponses,
        },
      },
    },
    async (request) => {
      const host = await services.hosts.join(request.body);
      services.autostart.joined(host.id);
      return { hostId: host.id, controlToken: services.hosts.controlTokenFor(host) };
    },
  );
  app.post(
    '/v1/hosts/:name/report',
    {
      config: { access: { on: 'agent', audit: false } },
      schema: {
        operationId: 'reportHostVms',
        tags: ['hosts'],
        summary: 'A host agent reports its VMs (agent token)',
        security: [{ agentBearer: [] }],
        params: Type.Object({ name: ResourceRef('Host name') }),
        body: HostReport,
        response: { 204: Type.Null(), ...errorResponses },
      },
    },
    async (request, reply) => {
      const header = request.headers.authorization ?? '';
      const host = await services.hosts.authenticateAgent(request.params.name, header.startsWith('Bearer ') ? header.slice(7) : '');
      services.hosts.heartbeat(host.id);
      await services.vms.reports.applyReport(host.id, request.body.vms as VmStatus[], request.body.full);
      if (request.body.full) services.autostart.reported(host.id);
      return reply.status(204).send(null);
    },
  );
}
