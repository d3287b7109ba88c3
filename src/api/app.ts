/**
 * The control plane's REST API. `buildApp()` wires routes to services without listening, so route
 * tests use `inject()`; the same TypeBox schemas validate requests and produce /v1/openapi.json.
 */
import swagger from '@fastify/swagger';
import websocket from '@fastify/websocket';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import { Type, type Static } from '@sinclair/typebox';
import Fastify, { type FastifyInstance } from 'fastify';
import WebSocket from 'ws';
import { NubisError, messageOf } from '../core/errors.ts';
import { parseEndpoint } from '../core/http-json.ts';
import type { Logger } from '../core/logger.ts';
import type { HostRegistry } from '../control/hosts.ts';
import type { ImageCatalogue } from '../control/images.ts';
import type { NetworkService } from '../control/networks.ts';
import type { OperationManager } from '../control/operations.ts';
import type { SecurityGroupService } from '../control/security-groups.ts';
import type { StorageCatalogue } from '../control/storage.ts';
import type { MigrationService } from '../migration/migration-service.ts';
import type { VmAction, VmService } from '../control/vms.ts';
import type { Db } from '../state/database.ts';
import { httpStatusOf } from '../core/error-codes.ts';
import { adminTokenCheck } from './auth.ts';
import { toApiError } from './errors.ts';
import { coerceTextValues } from './query-coercion.ts';
import { parseSize } from '../storage/size.ts';
import {
  Accepted,
  ErrorBody,
  Host,
  HostJoinRequest,
  HostReport,
  Image,
  ImageImportRequest,
  Operation,
  OperationEvent,
  OperationStatus,
  Int32,
  List,
  Port,
  ResourceId,
  ResourceRef,
  Size,
  Text,
  Timestamp,
  VolumePath,
  Network,
  NetworkCreateRequest,
  NetworkProbeRequest,
  NetworkProbeResult,
  Pool,
  PortForward,
  PortForwardRequest,
  PoolCreateRequest,
  PoolReplaceRequest,
  Project,
  ResourceName,
  ProjectCreateRequest,
  ProjectQuery,
  Secgroup,
  SecgroupCreateRequest,
  SecgroupRule,
  SecgroupRuleRequest,
  Status,
  Vm,
  VmCreateRequest,
  VmLog,
  VmLogQuery,
  VmRef,
  VmStopRequest,
  Volume,
  VolumeCreateRequest,
} from '../wire/schemas.ts';
import type { VmStatus } from '../host/vm-status.ts';
import { newId } from '../core/ids.ts';

export const API_VERSION = '0.1.0';

export interface AppServices {
  db: Db;
  hosts: HostRegistry;
  images: ImageCatalogue;
  vms: VmService;
  networks: NetworkService;
  secgroups: SecurityGroupService;
  storage: StorageCatalogue;
  migrations: MigrationService;
  operations: OperationManager;
  dataDir: string;
  logger?: Logger;
}

/** What a route that acts on or names a resource may answer besides success (error-status.ts). */
const errorResponses = { 400: ErrorBody, 401: ErrorBody, 404: ErrorBody, 409: ErrorBody, 422: ErrorBody, 503: ErrorBody };
/** What a list may answer besides success: a refused query or a missing token. */
const listErrorResponses = { 400: ErrorBody, 401: ErrorBody };

/** The serial console route, which is a WebSocket and so not seen by @fastify/swagger. */
const consolePath = {
  '/v1/vms/{vm}/console': {
    get: {
      operationId: 'openVmConsole',
      tags: ['vms'],
      summary: 'Interactive serial console: a WebSocket upgrade; binary frames carry the bytes both ways',
      parameters: [
        {
          name: 'vm',
          in: 'path',
          required: true,
          schema: { type: 'string', pattern: ResourceName.pattern, maxLength: ResourceName.maxLength },
          description: 'VM name (in the project) or id',
        },
        { name: 'project', in: 'query', required: false, schema: { type: 'string', pattern: ResourceName.pattern, maxLength: ResourceName.maxLength } },
      ],
      responses: {
        '101': { description: 'Switching to the WebSocket protocol' },
        '400': { description: 'Invalid VM reference or project', content: { 'application/json': { schema: { $ref: '#/components/schemas/Error' } } } },
        '401': { description: 'No or wrong bearer token', content: { 'application/json': { schema: { $ref: '#/components/schemas/Error' } } } },
        '404': { description: 'No such VM', content: { 'application/json': { schema: { $ref: '#/components/schemas/Error' } } } },
        '409': { description: 'Someone else is attached', content: { 'application/json': { schema: { $ref: '#/components/schemas/Error' } } } },
      },
    },
  },
};

/** Builds the API app; the caller listens. */
export async function buildApp(services: AppServices): Promise<FastifyInstance> {
  // No coercion by the validator: bodies are checked as sent, and query strings and path
  // parameters are turned into numbers and booleans strictly, before validation (query-coercion.ts).
  const app = Fastify({
    logger: false,
    ajv: { customOptions: { removeAdditional: false, coerceTypes: false, useDefaults: true, verbose: true } },
  }).withTypeProvider<TypeBoxTypeProvider>();
  app.addHook('preValidation', async (request) => {
    const schema = request.routeOptions.schema as
      | { querystring?: Parameters<typeof coerceTextValues>[1]; params?: Parameters<typeof coerceTextValues>[1] }
      | undefined;
    coerceTextValues(request.query, schema?.querystring);
    coerceTextValues(request.params, schema?.params);
  });
  await app.register(swagger, {
    openapi: {
      openapi: '3.0.3',
      info: { title: 'Nubis API', version: API_VERSION, description: 'Private-cloud virtualization: VMs, hosts, images, operations' },
      // The document is served by the API it describes: its paths are relative to the same origin.
      // x-internal: a private cloud's control plane is for its operators, not the public.
      servers: [
        { url: '/', description: 'Same origin: the production control plane that serves this document', 'x-internal': true } as {
          url: string;
          description: string;
        },
      ],
      components: {
        securitySchemes: {
          bearer: { type: 'http', scheme: 'bearer', description: 'The admin token (file admin-token in the data folder)' },
          agentBearer: { type: 'http', scheme: 'bearer', description: 'A host agent token, chosen by the agent when it joins' },
        },
      },
      security: [{ bearer: [] }],
    },
    // Components take the schemas' $id (Error, Vm, ...) rather than def-0, def-1...: stable names
    // that clients and the hand-written console path can refer to.
    refResolver: { buildLocalReference: (json, _baseUri, _fragment, i) => (typeof json.$id === 'string' ? json.$id : `def-${i}`) },
    // @fastify/websocket hides WebSocket routes from the document; list the console by hand.
    transformObject: (documentObject) => {
      const document = (documentObject as { openapiObject: { paths?: Record<string, unknown> } }).openapiObject;
      return { ...document, paths: { ...document.paths, ...consolePath } };
    },
  });
  await app.register(websocket);
  app.addSchema(ErrorBody);

  app.addHook('onRequest', adminTokenCheck(services.db));
  app.setErrorHandler((error, request, reply) => {
    const { status, body } = toApiError(error as Error);
    if (status >= 500) services.logger?.error({ err: error, url: request.url }, 'request failed');
    void reply.status(status).send(body);
  });
  app.setNotFoundHandler((request, reply) => {
    void reply.status(404).send({ code: 'ROUTE_NOT_FOUND', message: `No route ${request.method} ${request.url}; see /v1/openapi.json` });
  });

  app.get(
    '/v1/openapi.json',
    {
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
    { schema: { operationId: 'getStatus', tags: ['status'], summary: 'Cluster summary', response: { 200: Status, ...listErrorResponses } } },
    async () => {
      const hosts = await services.hosts.list();
      const vms = await services.vms.list();
      return {
        version: API_VERSION,
        hosts: hosts.length,
        hostsOnline: hosts.filter((h) => h.status === 'online').length,
        vms: vms.length,
        vmsRunning: vms.filter((v) => v.state === 'running').length,
        dataDir: services.dataDir,
      };
    },
  );

  // Projects
  app.get(
    '/v1/projects',
    { schema: { operationId: 'listProjects', tags: ['projects'], summary: 'List projects', response: { 200: List(Project), ...listErrorResponses } } },
    async () =>
      (await services.db.selectFrom('projects').selectAll().orderBy('name').execute()).map((p) => ({ id: p.id, name: p.name, createdAt: p.created_at })),
  );
  app.post(
    '/v1/projects',
    {
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

  // Hosts
  const HostRef = Type.Object({ host: ResourceRef('Host name or id') });
  app.get(
    '/v1/hosts',
    {
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
    { schema: { operationId: 'getHost', tags: ['hosts'], summary: 'Show a host', params: HostRef, response: { 200: Host, ...errorResponses } } },
    async (request) => services.hosts.get(request.params.host),
  );
  app.post(
    '/v1/hosts/:host/evacuate',
    {
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
      reply.status(202).send({ operation: await services.migrations.evacuate(request.params.host, request.body as { parallel?: number }) }),
  );
  app.post(
    '/v1/hosts/:host/restore',
    {
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
      const operation = await services.migrations.restore(request.params.host, request.body as { moveBack?: boolean; parallel?: number });
      if (operation) return reply.status(202).send({ operation });
      return services.hosts.get(request.params.host);
    },
  );
  app.post(
    '/v1/hosts/join',
    {
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
      return { hostId: host.id, controlToken: services.hosts.controlTokenFor(host) };
    },
  );
  app.post(
    '/v1/hosts/:name/report',
    {
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
      await services.hosts.touch(host.id);
      await services.vms.applyReport(host.id, request.body.vms as VmStatus[], request.body.full);
      return reply.status(204).send(null);
    },
  );

  // Images
  app.get(
    '/v1/images',
    { schema: { operationId: 'listImages', tags: ['images'], summary: 'List images', response: { 200: List(Image), ...listErrorResponses } } },
    async () => services.images.list(),
  );
  app.post(
    '/v1/images',
    {
      schema: {
        operationId: 'importImage',
        tags: ['images'],
        summary: 'Import a qcow2/raw disk image or a kernel+initrd pair (operation)',
        body: ImageImportRequest,
        response: { 202: Accepted, ...errorResponses },
      },
    },
    async (request, reply) => {
      const checked = await services.images.checkImport(request.body);
      const operation = await services.operations.start('image.import', { type: 'image', id: request.body.name, name: request.body.name }, async (op) => {
        await op.report('copying', `Copying ${checked.kind === 'disk' ? request.body.path : 'kernel and initrd'} into the image store`, 0.05);
        return services.images.import(request.body, checked, {
          signal: op.signal,
          onProgress: (share) => op.report('copying', `Copied ${Math.round(share * 100)} %`, 0.05 + share * 0.9),
        });
      });
      return reply.status(202).send({ operation });
    },
  );

  // VMs
  app.get(
    '/v1/vms',
    { schema: { operationId: 'listVms', tags: ['vms'], summary: 'List VMs', querystring: ProjectQuery, response: { 200: List(Vm), ...listErrorResponses } } },
    async (request) => services.vms.list(request.query.project),
  );
  app.post(
    '/v1/vms',
    {
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
      schema: { operationId: 'getVm', tags: ['vms'], summary: 'Show a VM', params: VmRef, querystring: ProjectQuery, response: { 200: Vm, ...errorResponses } },
    },
    async (request) => services.vms.get(request.params.vm, request.query.project),
  );
  for (const action of ['start', 'stop', 'reboot', 'pause', 'resume'] as VmAction[]) {
    const takesOptions = action === 'stop' || action === 'reboot';
    app.post(
      `/v1/vms/:vm/${action}`,
      {
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
      schema: {
        operationId: 'updateVm',
        tags: ['vms'],
        summary: "Change a VM's policies",
        params: VmRef,
        querystring: ProjectQuery,
        body: Type.Object({ allowPostcopy: Type.Optional(Type.Boolean({ description: 'Live migration may use post-copy' })) }, { additionalProperties: false }),
        response: { 200: Vm, ...errorResponses },
      },
    },
    async (request) => services.vms.update(request.params.vm, request.query.project, request.body),
  );
  app.post(
    '/v1/vms/:vm/migrate',
    {
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
  app.post(
    '/v1/vms/:vm/disks',
    {
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
  app.get(
    '/v1/vms/:vm/console',
    {
      websocket: true,
      schema: {
        operationId: 'openVmConsole',
        tags: ['vms'],
        summary: 'Interactive serial console (WebSocket; binary frames both ways)',
        params: VmRef,
        querystring: ProjectQuery,
      },
      // A browser sends its page's Origin with every WebSocket, and lets any page open one to any
      // site: only pages of this API's own origin may attach. The CLI sends no Origin.
      preValidation: async (request) => {
        const origin = request.headers.origin;
        if (origin === undefined) return;
        let originHost: string | undefined;
        try {
          originHost = new URL(origin).host;
        } catch {
          originHost = undefined;
        }
        if (originHost !== request.headers.host)
          throw new NubisError('AUTH_FORBIDDEN', `A console may be opened only from this API's own origin, not from ${origin.slice(0, 100)}`);
      },
    },
    (socket, request) => {
      const params = request.params as { vm: string };
      const query = request.query as { project?: string };
      void services.vms.consoleTarget(params.vm, query.project).then(
        ({ host, vmId }) => {
          const { socketPath, host: address, port } = parseEndpoint(host.endpoint);
          const url = socketPath ? `ws+unix://${socketPath}:/agent/vms/${vmId}/console` : `ws://${address}:${port}/agent/vms/${vmId}/console`;
          const upstream = new WebSocket(url, { headers: { authorization: `Bearer ${services.hosts.controlTokenFor(host)}` } });
          const pending: Buffer[] = [];
          socket.on('message', (data: Buffer) => (upstream.readyState === WebSocket.OPEN ? upstream.send(data) : pending.push(data)));
          upstream.on('open', () => {
            for (const data of pending.splice(0)) upstream.send(data);
          });
          upstream.on('message', (data: Buffer) => socket.send(data));
          upstream.on('close', (code, reason) => socket.close(code >= 4000 ? code : 1000, reason.toString()));
          upstream.on('error', () => socket.close(1011, 'The host agent console is not reachable'));
          socket.on('close', () => upstream.close());
        },
        (error) => socket.close(4000 + (httpStatusOf((error as NubisError).code ?? '') % 1000), messageOf(error).slice(0, 120)),
      );
    },
  );

  // Networks
  const NetworkRef = Type.Object({ network: ResourceRef('Network name (in the project) or id') });
  app.get(
    '/v1/networks',
    {
      schema: {
        operationId: 'listNetworks',
        tags: ['networks'],
        summary: 'List virtual networks',
        querystring: ProjectQuery,
        response: { 200: List(Network), ...listErrorResponses },
      },
    },
    async (request) => services.networks.list(request.query.project),
  );
  app.post(
    '/v1/networks',
    {
      schema: {
        operationId: 'createNetwork',
        tags: ['networks'],
        summary: 'Create a virtual network (plumbed on hosts as VMs join it)',
        body: NetworkCreateRequest,
        response: { 201: Network, ...errorResponses },
      },
    },
    async (request, reply) => reply.status(201).send(await services.networks.create(request.body)),
  );
  app.get(
    '/v1/networks/:network',
    {
      schema: {
        operationId: 'getNetwork',
        tags: ['networks'],
        summary: 'Show a network',
        params: NetworkRef,
        querystring: ProjectQuery,
        response: { 200: Network, ...errorResponses },
      },
    },
    async (request) => services.networks.get(request.params.network, request.query.project),
  );
  app.delete(
    '/v1/networks/:network',
    {
      schema: {
        operationId: 'deleteNetwork',
        tags: ['networks'],
        summary: 'Delete a network no NIC uses',
        params: NetworkRef,
        querystring: ProjectQuery,
        response: { 204: Type.Null(), ...errorResponses },
      },
    },
    async (request, reply) => {
      await services.networks.delete(request.params.network, request.query.project);
      return reply.status(204).send(null);
    },
  );
  app.get(
    '/v1/networks/:network/forwards',
    {
      schema: {
        operationId: 'listNetworkForwards',
        tags: ['networks'],
        summary: "Port forwards through the network's NAT gateway",
        params: NetworkRef,
        querystring: ProjectQuery,
        response: { 200: List(PortForward), ...errorResponses },
      },
    },
    async (request) => services.networks.forwards(request.params.network, request.query.project),
  );
  app.post(
    '/v1/networks/:network/forwards',
    {
      schema: {
        operationId: 'createNetworkForward',
        tags: ['networks'],
        summary: 'Forward a port of the gateway host to a VM port (applied at once)',
        params: NetworkRef,
        querystring: ProjectQuery,
        body: PortForwardRequest,
        response: { 201: PortForward, ...errorResponses },
      },
    },
    async (request, reply) => {
      const vm = await services.vms.get(request.body.vm, request.query.project);
      const forward = await services.networks.addForward(
        request.params.network,
        { protocol: request.body.protocol, hostPort: request.body.hostPort, vmId: vm.id, vmName: vm.name, vmPort: request.body.vmPort },
        request.query.project,
      );
      return reply.status(201).send(forward);
    },
  );
  app.delete(
    '/v1/networks/:network/forwards/:protocol/:port',
    {
      schema: {
        operationId: 'deleteNetworkForward',
        tags: ['networks'],
        summary: 'Remove a port forward (applied at once)',
        params: Type.Object({
          network: ResourceRef('Network name (in the project) or id'),
          protocol: Type.Union([Type.Literal('tcp'), Type.Literal('udp')]),
          port: Port(),
        }),
        querystring: ProjectQuery,
        response: { 204: Type.Null(), ...errorResponses },
      },
    },
    async (request, reply) => {
      await services.networks.deleteForward(request.params.network, request.params.protocol, request.params.port, request.query.project);
      return reply.status(204).send(null);
    },
  );
  app.post(
    '/v1/networks/:network/probe',
    {
      schema: {
        operationId: 'probeNetwork',
        tags: ['networks'],
        summary: 'Run a command in a diagnostic namespace attached to the network',
        params: NetworkRef,
        querystring: ProjectQuery,
        body: NetworkProbeRequest,
        response: { 200: NetworkProbeResult, ...errorResponses },
      },
    },
    async (request) => {
      const network = await services.networks.row(request.params.network, request.query.project);
      const host = await services.networks.probeHost(network.id, request.body.host);
      const { address, prefixLength } = await services.networks.probeAddress(network);
      const result = await services.hosts.call<{ exitCode: number; stdout: string; stderr: string }>(host, {
        method: 'POST',
        path: `/agent/networks/${network.id}/probe`,
        body: {
          address: `${address}/${prefixLength}`,
          ...(network.gateway ? { gateway: network.gateway } : {}),
          command: request.body.command,
          timeoutMs: request.body.timeoutSeconds * 1000,
        },
        timeoutMs: request.body.timeoutSeconds * 1000 + 15_000,
      });
      return { host: host.name, address, ...result };
    },
  );

  // Security groups
  const GroupRef = Type.Object({ group: ResourceRef('Security group name (in the project) or id') });
  app.get(
    '/v1/secgroups',
    {
      schema: {
        operationId: 'listSecgroups',
        tags: ['secgroups'],
        summary: 'List security groups',
        querystring: ProjectQuery,
        response: { 200: List(Secgroup), ...listErrorResponses },
      },
    },
    async (request) => services.secgroups.list(request.query.project),
  );
  app.post(
    '/v1/secgroups',
    {
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
  app.post(
    '/v1/secgroups/:group/rules',
    {
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

  // Storage: pools and volumes of the storage node
  const PoolRef = Type.Object({ pool: ResourceName });
  const VolumeRef = Type.Object({ pool: ResourceName, volume: ResourceName });
  const poolPath = (pool: string): string => `/storage/pools/${encodeURIComponent(pool)}`;
  type PoolBody = Static<typeof Pool>;
  type VolumeBody = Static<typeof Volume>;
  const volumeView = async (pool: string, volume: VolumeBody): Promise<VolumeBody> => {
    const user = await services.db
      .selectFrom('vm_disks')
      .innerJoin('vms', 'vms.id', 'vm_disks.vm_id')
      .select('vms.name')
      .where('pool', '=', pool)
      .where('volume', '=', volume.name)
      .executeTakeFirst();
    return { ...volume, pool, ...(user ? { usedBy: user.name } : {}) };
  };
  // A pool name refers to a storage-node pool or to a host-based dir pool (one namespace).
  const dirPools = services.storage.dirPools;
  const isDir = async (pool: string): Promise<boolean> => (await dirPools.find(pool)) !== undefined;
  const refuseForDir = async (pool: string, what: string): Promise<void> => {
    if (await isDir(pool)) throw new NubisError('POOL_KIND_UNSUPPORTED', `${pool} is a dir pool (qcow2 files on hosts): ${what} is for storage-node pools`);
  };
  app.get(
    '/v1/pools',
    {
      schema: {
        operationId: 'listPools',
        tags: ['storage'],
        summary: 'List storage pools (storage-node and host dir pools) with health and capacity',
        response: { 200: List(Pool), ...listErrorResponses, 503: ErrorBody },
      },
    },
    async () => [
      ...(await services.storage.call<PoolBody[]>({ method: 'GET', path: '/storage/pools' })).map((pool) => ({ ...pool, kind: 'san' })),
      ...((await dirPools.list()) as PoolBody[]),
    ],
  );
  app.post(
    '/v1/pools',
    {
      schema: {
        operationId: 'createPool',
        tags: ['storage'],
        summary: 'Create a pool: over devices with a RAID layout (san), or a folder of qcow2 files on hosts (dir)',
        body: PoolCreateRequest,
        response: { 201: Pool, ...errorResponses },
      },
    },
    async (request, reply) => {
      const { kind, hosts, ...san } = request.body;
      if (kind === 'dir') {
        if (san.layout || san.devices) throw new NubisError('VALIDATION_FAILED', 'A dir pool takes hosts, not a layout or devices');
        const sanNames = (await services.storage.call<PoolBody[]>({ method: 'GET', path: '/storage/pools' }).catch(() => [] as PoolBody[])).map((p) => p.name);
        return reply.status(201).send((await dirPools.create(san.name, hosts ?? [], sanNames.includes(san.name))) as PoolBody);
      }
      if (hosts) throw new NubisError('VALIDATION_FAILED', 'A storage-node pool takes devices, not hosts (hosts are for --kind dir)');
      if (!san.layout || !san.devices) throw new NubisError('VALIDATION_FAILED', 'A storage-node pool needs a layout and at least one device');
      if (await isDir(san.name)) throw new NubisError('POOL_EXISTS', `A pool named ${san.name} exists; choose another name`);
      return reply.status(201).send({ ...(await services.storage.call<PoolBody>({ method: 'POST', path: '/storage/pools', body: san })), kind: 'san' });
    },
  );
  app.get(
    '/v1/pools/:pool',
    {
      schema: {
        operationId: 'getPool',
        tags: ['storage'],
        summary: 'Show a pool: state, capacity, members with error counters (a dir pool: a member per host)',
        params: PoolRef,
        response: { 200: Pool, ...errorResponses },
      },
    },
    async (request) =>
      (await isDir(request.params.pool))
        ? ((await dirPools.show(request.params.pool)) as PoolBody)
        : { ...(await services.storage.call<PoolBody>({ method: 'GET', path: poolPath(request.params.pool) })), kind: 'san' },
  );
  app.delete(
    '/v1/pools/:pool',
    {
      schema: {
        operationId: 'deletePool',
        tags: ['storage'],
        summary: 'Delete an empty pool',
        params: PoolRef,
        response: { 204: Type.Null(), ...errorResponses },
      },
    },
    async (request, reply) => {
      await services.storage.checkUnused(request.params.pool);
      if (await isDir(request.params.pool)) await dirPools.delete(request.params.pool);
      else await services.storage.call({ method: 'DELETE', path: poolPath(request.params.pool) });
      return reply.status(204).send(null);
    },
  );
  app.post(
    '/v1/pools/:pool/scrub',
    {
      schema: {
        operationId: 'scrubPool',
        tags: ['storage'],
        summary: 'Read everything, find silent corruption by checksum and repair it (operation)',
        params: PoolRef,
        body: Type.Object({ maxMbPerSec: Type.Optional(Int32(1, 1000000)) }, { additionalProperties: false }),
        response: { 202: Accepted, ...errorResponses },
      },
      preValidation: async (request) => {
        request.body ??= {};
      },
    },
    async (request, reply) => {
      await refuseForDir(request.params.pool, 'scrub');
      await services.storage.call({ method: 'GET', path: poolPath(request.params.pool) });
      const body = request.body as { maxMbPerSec?: number };
      const operation = await services.operations.start('pool.scrub', { type: 'pool', id: request.params.pool, name: request.params.pool }, (op) =>
        services.storage.runJob(
          `${poolPath(request.params.pool)}/scrub`,
          { ...(body.maxMbPerSec ? { maxBytesPerSec: body.maxMbPerSec * 2 ** 20 } : {}) },
          op,
          'scrubbing',
        ),
      );
      return reply.status(202).send({ operation });
    },
  );
  app.post(
    '/v1/pools/:pool/replace',
    {
      schema: {
        operationId: 'replacePoolMember',
        tags: ['storage'],
        summary: 'Replace a member and rebuild onto the new device, online (operation)',
        params: PoolRef,
        body: PoolReplaceRequest,
        response: { 202: Accepted, ...errorResponses },
      },
    },
    async (request, reply) => {
      await refuseForDir(request.params.pool, 'replace');
      await services.storage.call({ method: 'GET', path: poolPath(request.params.pool) });
      const { member, device, maxMbPerSec, force } = request.body;
      const body = { member, device, ...(maxMbPerSec ? { maxBytesPerSec: maxMbPerSec * 2 ** 20 } : {}), ...(force ? { force } : {}) };
      // The storage node vets the device before it starts the job: a bad one is this request's 4xx.
      const job = await services.storage.startJob(`${poolPath(request.params.pool)}/replace`, body);
      const operation = await services.operations.start('pool.replace', { type: 'pool', id: request.params.pool, name: request.params.pool }, (op) =>
        services.storage.followJob(job, op, 'rebuilding'),
      );
      return reply.status(202).send({ operation });
    },
  );
  app.get(
    '/v1/pools/:pool/volumes',
    {
      schema: {
        operationId: 'listVolumes',
        tags: ['storage'],
        summary: 'List the volumes of a pool',
        params: PoolRef,
        response: { 200: List(Volume), ...errorResponses },
      },
    },
    async (request) =>
      (await isDir(request.params.pool))
        ? ((await dirPools.listVolumes(request.params.pool)) as VolumeBody[])
        : Promise.all(
            (await services.storage.call<VolumeBody[]>({ method: 'GET', path: `${poolPath(request.params.pool)}/volumes` })).map((v) =>
              volumeView(request.params.pool, v),
            ),
          ),
  );
  app.post(
    '/v1/pools/:pool/volumes',
    {
      schema: {
        operationId: 'createVolume',
        tags: ['storage'],
        summary: 'Create a volume: thin on a storage-node pool, a qcow2 file on a dir pool (on `host`)',
        params: PoolRef,
        body: VolumeCreateRequest,
        response: { 201: Volume, ...errorResponses },
      },
    },
    async (request, reply) => {
      const { host, ...body } = request.body;
      if (await isDir(request.params.pool))
        return reply.status(201).send((await dirPools.createVolume(request.params.pool, body.name, parseSize(body.size), host)) as VolumeBody);
      if (host) throw new NubisError('VALIDATION_FAILED', `${request.params.pool} is a storage-node pool, reachable from every host: drop --host`);
      return reply
        .status(201)
        .send(
          await volumeView(
            request.params.pool,
            await services.storage.call<VolumeBody>({ method: 'POST', path: `${poolPath(request.params.pool)}/volumes`, body }),
          ),
        );
    },
  );
  app.get(
    '/v1/pools/:pool/volumes/:volume',
    { schema: { operationId: 'getVolume', tags: ['storage'], summary: 'Show a volume', params: VolumeRef, response: { 200: Volume, ...errorResponses } } },
    async (request) =>
      (await isDir(request.params.pool))
        ? ((await dirPools.showVolume(request.params.pool, request.params.volume)) as VolumeBody)
        : volumeView(
            request.params.pool,
            await services.storage.call<VolumeBody>({ method: 'GET', path: `${poolPath(request.params.pool)}/volumes/${request.params.volume}` }),
          ),
  );
  app.delete(
    '/v1/pools/:pool/volumes/:volume',
    {
      schema: {
        operationId: 'deleteVolume',
        tags: ['storage'],
        summary: 'Delete a volume no VM uses (its space returns to the pool)',
        params: VolumeRef,
        response: { 204: Type.Null(), ...errorResponses },
      },
    },
    async (request, reply) => {
      await services.storage.checkUnused(request.params.pool, request.params.volume);
      if (await isDir(request.params.pool)) await dirPools.deleteVolume(request.params.pool, request.params.volume);
      else await services.storage.call({ method: 'DELETE', path: `${poolPath(request.params.pool)}/volumes/${request.params.volume}` });
      return reply.status(204).send(null);
    },
  );
  for (const action of ['snapshot', 'clone'] as const) {
    app.post(
      `/v1/pools/:pool/volumes/:volume/${action}`,
      {
        schema: {
          operationId: `${action}Volume`,
          tags: ['storage'],
          summary: action === 'snapshot' ? 'Take a read-only copy-on-write snapshot, instantly' : 'Make a writable copy-on-write clone, instantly',
          params: VolumeRef,
          body: Type.Object({ name: ResourceName }, { additionalProperties: false }),
          response: { 201: Volume, ...errorResponses },
        },
      },
      async (request, reply) => {
        await refuseForDir(request.params.pool, action);
        return reply.status(201).send(
          await volumeView(
            request.params.pool,
            await services.storage.call<VolumeBody>({
              method: 'POST',
              path: `${poolPath(request.params.pool)}/volumes/${request.params.volume}/${action}`,
              body: request.body,
            }),
          ),
        );
      },
    );
  }
  app.post(
    '/v1/pools/:pool/volumes/:volume/resize',
    {
      schema: {
        operationId: 'resizeVolume',
        tags: ['storage'],
        summary: 'Grow or shrink a volume (never below its data; dir volumes only grow, while detached)',
        params: VolumeRef,
        body: Type.Object({ size: Size }, { additionalProperties: false }),
        response: { 200: Volume, ...errorResponses },
      },
    },
    async (request) => {
      if (await isDir(request.params.pool)) {
        await services.storage.checkUnused(request.params.pool, request.params.volume);
        return (await dirPools.resizeVolume(request.params.pool, request.params.volume, parseSize(request.body.size))) as VolumeBody;
      }
      return volumeView(
        request.params.pool,
        await services.storage.call<VolumeBody>({
          method: 'POST',
          path: `${poolPath(request.params.pool)}/volumes/${request.params.volume}/resize`,
          body: request.body,
        }),
      );
    },
  );

  // Operations
  const OperationRef = Type.Object({ id: ResourceRef('Operation id') });
  app.get(
    '/v1/operations',
    {
      schema: {
        operationId: 'listOperations',
        tags: ['operations'],
        summary: 'Recent operations, newest first',
        querystring: Type.Object({ limit: Int32(1, 500, { default: 50 }), status: Type.Optional(OperationStatus) }, { additionalProperties: false }),
        response: { 200: Type.Array(Operation, { maxItems: 500 }), ...listErrorResponses },
      },
    },
    async (request) => services.operations.list(request.query),
  );
  app.get(
    '/v1/operations/:id',
    {
      schema: {
        operationId: 'getOperation',
        tags: ['operations'],
        summary: 'Show an operation',
        params: OperationRef,
        response: { 200: Operation, ...errorResponses },
      },
    },
    async (request) => services.operations.get(request.params.id),
  );
  app.post(
    '/v1/operations/:id/cancel',
    {
      schema: {
        operationId: 'cancelOperation',
        tags: ['operations'],
        summary: 'Cancel a running operation',
        params: OperationRef,
        response: { 202: Operation, ...errorResponses },
      },
    },
    async (request, reply) => reply.status(202).send(await services.operations.cancel(request.params.id)),
  );
  app.get(
    '/v1/operations/:id/events',
    {
      schema: {
        operationId: 'streamOperationEvents',
        tags: ['operations'],
        summary: 'Server-sent events: every event of the operation, then `end` with the final operation',
        params: OperationRef,
        response: { 200: { content: { 'text/event-stream': { schema: OperationEvent } } }, ...errorResponses },
      },
    },
    async (request, reply) => {
      const { id } = request.params;
      await services.operations.get(id);
      reply.hijack();
      const raw = reply.raw;
      raw.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', connection: 'keep-alive' });
      const send = (event: string, data: unknown): void => void raw.write(`event: ${event}\ndata: ${JSON.stringify(data)}\n\n`);
      let lastSeq = 0;
      const backlog: Array<{ event?: OperationEvent; finished?: unknown }> = [];
      let replaying = true;
      const deliver = (update: { event?: OperationEvent; finished?: unknown }): void => {
        if (update.event && update.event.seq > lastSeq) {
          lastSeq = update.event.seq;
          send('progress', update.event);
        }
        if (update.finished) {
          send('end', update.finished);
          raw.end();
        }
      };
      // Subscribe before replaying, so an event between the two is not lost.
      const unsubscribe = services.operations.subscribe(id, (update) => (replaying ? backlog.push(update) : deliver(update)));
      raw.on('close', unsubscribe);
      for (const event of await services.operations.events(id)) deliver({ event });
      replaying = false;
      for (const update of backlog.splice(0)) deliver(update);
      const operation = await services.operations.get(id);
      if (operation.status !== 'running' && !raw.writableEnded) {
        send('end', operation);
        raw.end();
      }
    },
  );

  return app;
}
