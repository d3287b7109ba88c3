/** VMs: create, show, act on (start, stop, ...), delete, migrate, attach disks, read the log. */
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { Type } from '@sinclair/typebox';
import { VM_PAGE_DEFAULT, VM_PAGE_MAX, type VmAction, type VmService } from '../../control/vms.ts';
import type { MigrationService } from '../../migration/migration-service.ts';
import type { UsageStore } from '../../metrics/usage-store.ts';
import {
  Accepted,
  Int32,
  List,
  ProjectQuery,
  ResourceId,
  ResourceName,
  ResourceRef,
  Text,
  Timestamp,
  Vm,
  VmCreateRequest,
  VmLog,
  VmLogQuery,
  VmPolicies,
  VmCpuControlsUpdate,
  VmDiskLimitsUpdate,
  VmNicBandwidthUpdate,
  VmMemoryUpdate,
  VmVcpuUpdate,
  VmRef,
  VmStopRequest,
  VolumePath,
} from '../../wire/schemas.ts';
import { errorResponses, listErrorResponses, type RouteApp } from './common.ts';

/** The query of the VM list: a project (or all one may see) and a page (OpenStack's `limit` and `marker`). */
const VmListQuery = Type.Object(
  {
    project: Type.Optional(ResourceName),
    limit: Type.Optional(Int32(1, VM_PAGE_MAX, { default: VM_PAGE_DEFAULT, description: 'VMs in one answer' })),
    marker: Type.Optional({ ...ResourceId, description: 'The id of the last VM of the previous page: the answer starts after it' }),
  },
  { additionalProperties: false },
);

/** What the VM routes use: the VM service, and the migration service for migrate and its history. */
export type VmRouteServices = { vms: VmService; migrations: MigrationService; usage: Pick<UsageStore, 'vmNow'> };

/** The VM routes (the console, a WebSocket, is console.ts), in the order the OpenAPI document lists them. */
export const vmRoutes: FastifyPluginAsyncTypebox<VmRouteServices> = async (app, services) => {
  app.get(
    '/v1/vms',
    {
      config: { access: { on: 'list', permission: 'vm.read' } },
      schema: {
        operationId: 'listVms',
        tags: ['vms'],
        summary: 'List VMs, a page at a time: by name, `limit` of them after the VM `marker` (as OpenStack); a `Link` header names the next page',
        querystring: VmListQuery,
        response: {
          200: List(Vm, {
            description: `At most \`limit\` VMs (default ${VM_PAGE_DEFAULT}, most ${VM_PAGE_MAX}), by name then id; when more follow, a \`Link: <URL>; rel="next"\` header (RFC 8288) names the next page`,
          }),
          ...listErrorResponses,
        },
      },
    },
    async (request, reply) => {
      const { project, limit, marker } = request.query;
      const page = await services.vms.list({ project, visible: request.visibleProjects, limit, marker });
      if (page.more) {
        const next = new URLSearchParams({
          ...(project ? { project } : {}),
          limit: String(limit ?? VM_PAGE_DEFAULT),
          marker: page.vms[page.vms.length - 1].id,
        });
        void reply.header('link', `</v1/vms?${next}>; rel="next"`);
      }
      return page.vms;
    },
  );
  app.post(
    '/v1/vms',
    {
      config: { access: { on: 'project', permission: 'vm.create' } },
      schema: {
        operationId: 'createVm',
        tags: ['vms'],
        summary: 'Create and boot a VM (operation)',
        body: VmCreateRequest,
        response: { 202: Accepted, ...errorResponses },
      },
    },
    async (request, reply) => {
      const operation = await services.vms.create(request.body);
      return reply.status(202).send({ operation });
    },
  );
  app.get(
    '/v1/vms/:vm',
    {
      config: { access: { on: 'project', permission: 'vm.read' } },
      schema: { operationId: 'getVm', tags: ['vms'], summary: 'Show a VM', params: VmRef, querystring: ProjectQuery, response: { 200: Vm, ...errorResponses } },
    },
    async (request) => {
      const vm = await services.vms.policies.withMemoryUsage(await services.vms.get(request.params.vm, request.query.project));
      const activity = vm.state === 'running' || vm.state === 'paused' ? services.usage.vmNow(vm.id) : undefined;
      return activity ? { ...vm, activity } : vm;
    },
  );
  registerLifecycleRoutes(app, services);
  registerMigrationRoutes(app, services);
  registerDiskAndLogRoutes(app, services);
};

/** The power actions, delete and the policy update. */
function registerLifecycleRoutes(app: RouteApp, services: VmRouteServices): void {
  for (const action of ['start', 'stop', 'reboot', 'pause', 'resume'] as VmAction[]) {
    const takesOptions = action === 'stop' || action === 'reboot';
    app.post(
      `/v1/vms/:vm/${action}`,
      {
        config: { access: { on: 'project', permission: 'vm.power' } },
        schema: {
          operationId: `${action}Vm`,
          tags: ['vms'],
          summary: `${action[0].toUpperCase()}${action.slice(1)} a VM (operation)`,
          params: VmRef,
          querystring: ProjectQuery,
          body: takesOptions ? VmStopRequest : Type.Object({}, { additionalProperties: false }),
          response: { 202: Accepted, ...errorResponses },
        },
        // A bodiless POST (curl -X POST) means "no options": validate it as an empty object.
        preValidation: async (request) => {
          request.body ??= {};
        },
      },
      async (request, reply) => {
        const body = request.body as { force?: boolean; timeoutSeconds?: number };
        const operation = await services.vms.act(request.params.vm, action, {
          project: request.query.project,
          force: body.force,
          timeoutSeconds: body.timeoutSeconds,
        });
        return reply.status(202).send({ operation });
      },
    );
  }
  app.delete(
    '/v1/vms/:vm',
    {
      config: { access: { on: 'project', permission: 'vm.delete' } },
      schema: {
        operationId: 'deleteVm',
        tags: ['vms'],
        summary: 'Stop and delete a VM (operation)',
        params: VmRef,
        querystring: ProjectQuery,
        response: { 202: Accepted, ...errorResponses },
      },
    },
    async (request, reply) => {
      const operation = await services.vms.delete(request.params.vm, request.query.project);
      return reply.status(202).send({ operation });
    },
  );
  app.patch(
    '/v1/vms/:vm',
    {
      config: { access: { on: 'project', permission: 'vm.update' } },
      schema: {
        operationId: 'updateVm',
        tags: ['vms'],
        summary: "Change a VM's policies, vCPUs, CPU controls, memory, disk IO limits and NIC bandwidth (these at once on its host, also while it runs)",
        params: VmRef,
        querystring: ProjectQuery,
        body: Type.Object(
          {
            allowPostcopy: Type.Optional(Type.Boolean({ description: 'Live migration may use post-copy' })),
            group: Type.Optional(
              Type.String({ pattern: '^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)?$', maxLength: 63, description: "Placement group to join; '' leaves its group" }),
            ),
            ...VmPolicies,
            ...VmCpuControlsUpdate,
            diskLimits: Type.Optional(VmDiskLimitsUpdate),
            nicBandwidth: Type.Optional(VmNicBandwidthUpdate),
            ...VmMemoryUpdate,
            ...VmVcpuUpdate,
          },
          { additionalProperties: false },
        ),
        response: { 200: Vm, ...errorResponses },
      },
    },
    async (request) => services.vms.policies.update(request.params.vm, request.query.project, request.body),
  );
}

/** Live migration and the history of past migrations. */
function registerMigrationRoutes(app: RouteApp, services: VmRouteServices): void {
  app.post(
    '/v1/vms/:vm/migrate',
    {
      config: { access: { on: 'project', permission: 'vm.migrate' } },
      schema: {
        operationId: 'migrateVm',
        tags: ['vms'],
        summary: 'Live-migrate a VM to another host (operation; events carry the stage, passes, dirty rate and remaining memory)',
        params: VmRef,
        querystring: ProjectQuery,
        body: Type.Object(
          {
            to: Type.Optional(ResourceName),
            strategy: Type.Union([Type.Literal('precopy'), Type.Literal('postcopy'), Type.Literal('auto')], { default: 'auto' }),
            maxDowntimeMs: Type.Optional(Int32(1, 60000)),
            bandwidthMbps: Type.Optional(Int32(1, 1000000, { description: 'Cap on the migration stream in MB/s' })),
            completionTimeoutSeconds: Type.Optional(Int32(5, 86400, { description: 'Deadline for the switch-over (default 300)' })),
            onTimeout: Type.Optional(
              Type.Union([Type.Literal('abort'), Type.Literal('postcopy')], {
                description: 'At the deadline: give up (the VM stays on its source) or switch to post-copy; default: post-copy when prepared, else abort',
              }),
            ),
            tls: Type.Optional(
              Type.Boolean({
                description:
                  "Encrypt the stream with TLS between the two QEMUs, with certificates the Nubis CA issues for this migration alone; required when the cluster's migrationTls is 'required'",
              }),
            ),
          },
          { additionalProperties: false },
        ),
        response: { 202: Accepted, ...errorResponses },
      },
      preValidation: async (request) => {
        request.body ??= { strategy: 'auto' };
      },
    },
    async (request, reply) => {
      const vm = await services.vms.get(request.params.vm, request.query.project);
      return reply.status(202).send({ operation: await services.migrations.migrate(vm.id, request.body as Parameters<MigrationService['migrate']>[1]) });
    },
  );
  app.get(
    '/v1/vms/:vm/migrations',
    {
      config: { access: { on: 'project', permission: 'vm.read' } },
      schema: {
        operationId: 'listVmMigrations',
        tags: ['vms'],
        summary: 'Past migrations of a VM with their figures',
        params: VmRef,
        querystring: ProjectQuery,
        response: {
          200: List(
            Type.Object({
              id: ResourceId,
              from: Text(63),
              to: Text(63),
              strategy: Text(16),
              status: Text(16),
              startedAt: Timestamp,
              endedAt: Type.Optional(Timestamp),
              figures: Type.Record(Type.String({ maxLength: 64 }), Type.Unknown()),
            }),
          ),
          ...errorResponses,
        },
      },
    },
    async (request) =>
      (await services.migrations.history((await services.vms.get(request.params.vm, request.query.project)).id)).map((entry) => ({
        ...entry,
        figures: entry.figures as unknown as Record<string, unknown>,
      })),
  );
}

/** Attaching and detaching volumes, and the serial console log. */
function registerDiskAndLogRoutes(app: RouteApp, services: VmRouteServices): void {
  app.post(
    '/v1/vms/:vm/disks',
    {
      config: { access: { on: 'project', permission: 'vm.disks' } },
      schema: {
        operationId: 'attachVmDisk',
        tags: ['vms'],
        summary: 'Attach a volume (hot-plugged into a running VM) (operation)',
        params: VmRef,
        querystring: ProjectQuery,
        body: Type.Object({ volume: VolumePath }, { additionalProperties: false }),
        response: { 202: Accepted, ...errorResponses },
      },
    },
    async (request, reply) =>
      reply.status(202).send({ operation: await services.vms.attachVolume(request.params.vm, request.body.volume, request.query.project) }),
  );
  app.delete(
    '/v1/vms/:vm/disks/:pool/:volume',
    {
      config: { access: { on: 'project', permission: 'vm.disks' } },
      schema: {
        operationId: 'detachVmDisk',
        tags: ['vms'],
        summary: 'Detach a volume (a running guest must release it) (operation)',
        params: Type.Object({ vm: ResourceRef('VM name (in the project) or id'), pool: ResourceName, volume: ResourceName }),
        querystring: ProjectQuery,
        response: { 202: Accepted, ...errorResponses },
      },
    },
    async (request, reply) =>
      reply
        .status(202)
        .send({ operation: await services.vms.detachVolume(request.params.vm, `${request.params.pool}/${request.params.volume}`, request.query.project) }),
  );
  app.get(
    '/v1/vms/:vm/log',
    {
      config: { access: { on: 'project', permission: 'vm.log' } },
      schema: {
        operationId: 'getVmLog',
        tags: ['vms'],
        summary: 'The end of the serial console log',
        params: VmRef,
        querystring: VmLogQuery,
        response: { 200: VmLog, ...errorResponses },
      },
    },
    async (request) => ({
      lines: await services.vms.log(request.params.vm, request.query.lines, request.query.project),
    }),
  );
}
