/** The OpenAPI document and the cluster summary. */
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { Type } from '@sinclair/typebox';
import type { HostRegistry } from '../../control/hosts.ts';
import type { VmService } from '../../control/vms.ts';
import { ErrorBody, Status } from '../../wire/schemas.ts';
import { API_VERSION } from '../version.ts';
import { listErrorResponses } from './common.ts';

/** What the status routes read: hosts and VMs to count, and the data folder to name. */
export type StatusRouteServices = { hosts: HostRegistry; vms: VmService; dataDir: string };

/** GET /v1/openapi.json (no token needed) and GET /v1/status. */
export const statusRoutes: FastifyPluginAsyncTypebox<StatusRouteServices> = async (app, services) => {
  app.get(
    '/v1/openapi.json',
    {
      config: { access: { on: 'public' } },
      schema: {
        operationId: 'getOpenApiDocument',
        tags: ['status'],
        summary: 'This OpenAPI document',
        security: [],
        response: { 200: Type.Object({}, { additionalProperties: true, description: 'OpenAPI 3.0 document' }), 400: ErrorBody },
      },
    },
    async () => app.swagger(),
  );

  app.get(
    '/v1/status',
    {
      config: { access: { on: 'platform', permission: 'platform.status' } },
      schema: { operationId: 'getStatus', tags: ['status'], summary: 'Cluster summary', response: { 200: Status, ...listErrorResponses } },
    },
    async () => {
      const hosts = await services.hosts.list();
      // Counted in the database: a summary never builds a view of every VM.
      const vms = await services.vms.counts();
      return {
        version: API_VERSION,
        hosts: hosts.length,
        hostsOnline: hosts.filter((h) => h.status === 'online').length,
        vms: vms.vms,
        vmsRunning: vms.running,
        dataDir: services.dataDir,
      };
    },
  );
};
