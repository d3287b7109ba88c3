/**
 * Usage graphs: host agents post their counters every 10 s; users read a VM's or a host's CPU,
 * memory, disk and network over the last hour (10 s points) or day (5 min points).
 */
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { Type } from '@sinclair/typebox';
import type { HostRegistry } from '../../control/hosts.ts';
import type { VmService } from '../../control/vms.ts';
import { NubisError } from '../../core/errors.ts';
import type { UsageStore } from '../../metrics/usage-store.ts';
import type { Db } from '../../state/database.ts';
import { HostUsageQuery, HostUsageReport, UsageQuery, UsageSeries } from '../../wire/event-schemas.ts';
import { ResourceRef, VmRef } from '../../wire/schemas.ts';
import { errorResponses } from './common.ts';

/** What the usage routes use. */
export type UsageRouteServices = { db: Db; vms: VmService; hosts: HostRegistry; usage: UsageStore };

const HostRef = Type.Object({ host: ResourceRef('Host name or id') });

/** The usage routes: the agents' report, and the graphs of VMs and hosts. */
export const usageRoutes: FastifyPluginAsyncTypebox<UsageRouteServices> = async (app, services) => {
  app.post(
    '/v1/hosts/:host/usage',
    {
      config: { access: { on: 'agent', audit: false } },
      // A report of 1,000 VMs is about 250 KiB.
      bodyLimit: 512 * 1024,
      schema: {
        operationId: 'reportHostUsage',
        tags: ['hosts'],
        summary: "A host agent reports its and its VMs' usage counters (agent token)",
        security: [{ agentBearer: [] }],
        params: Type.Object({ host: ResourceRef('Host name') }),
        body: HostUsageReport,
        response: { 204: Type.Null(), ...errorResponses },
      },
    },
    async (request, reply) => {
      const header = request.headers.authorization ?? '';
      const host = await services.hosts.authenticateAgent(request.params.host, header.startsWith('Bearer ') ? header.slice(7) : '');
      // A host speaks for its own VMs only.
      const own = new Set((await services.db.selectFrom('vms').select('id').where('host_id', '=', host.id).execute()).map((row) => row.id));
      services.usage.record(host.id, { ...request.body, vms: request.body.vms.filter((sample) => own.has(sample.vm)) });
      return reply.status(204).send(null);
    },
  );
  app.get(
    '/v1/vms/:vm/usage',
    {
      config: { access: { on: 'project', permission: 'vm.read' } },
      schema: {
        operationId: 'getVmUsage',
        tags: ['vms'],
        summary: "A VM's CPU (fraction of its vCPUs), memory, disk and network over the last hour (10 s) or day (5 min: average and max)",
        params: VmRef,
        querystring: UsageQuery,
        response: { 200: UsageSeries, ...errorResponses },
      },
    },
    async (request) => {
      const vm = await services.vms.get(request.params.vm, request.query.project);
      const series = services.usage.vm(vm.id, request.query.range);
      if (!series) throw new NubisError('USAGE_NOT_FOUND', `No usage reported for VM ${vm.name} yet; its host reports every 10 s while it runs`);
      return { ...series, memoryTotalBytes: vm.memoryMb * 2 ** 20 };
    },
  );
  app.get(
    '/v1/hosts/:host/usage',
    {
      config: { access: { on: 'platform', permission: 'host.read' } },
      schema: {
        operationId: 'getHostUsage',
        tags: ['hosts'],
        summary: "A host's CPU busy fraction, memory used, and its VMs' disk and network over the last hour (10 s) or day (5 min)",
        params: HostRef,
        querystring: HostUsageQuery,
        response: { 200: UsageSeries, ...errorResponses },
      },
    },
    async (request) => {
      const host = await services.hosts.get(request.params.host);
      const series = services.usage.host(host.id, request.query.range);
      if (!series) throw new NubisError('USAGE_NOT_FOUND', `No usage reported for host ${host.name} yet; its agent reports every 10 s`);
      return series;
    },
  );
};
