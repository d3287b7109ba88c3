/** Virtual networks: create, show, delete, port forwards through the NAT gateway, and the probe. */
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { Type } from '@sinclair/typebox';
import type { NetworkService } from '../../control/networks.ts';
import type { VmService } from '../../control/vms.ts';
import {
  List,
  Network,
  NetworkCreateRequest,
  NetworkProbeRequest,
  NetworkProbeResult,
  Port,
  PortForward,
  PortForwardRequest,
  ProjectQuery,
  ResourceRef,
} from '../../wire/schemas.ts';
import { errorResponses, listErrorResponses, type RouteApp } from './common.ts';

/** What the network routes use: networks (and their probes) and VMs that forwards point at. */
export type NetworkRouteServices = { networks: NetworkService; vms: VmService };

const NetworkRef = Type.Object({ network: ResourceRef('Network name (in the project) or id') });

/** The network routes, in the order the OpenAPI document lists them. */
export const networkRoutes: FastifyPluginAsyncTypebox<NetworkRouteServices> = async (app, services) => {
  app.get(
    '/v1/networks',
    {
      config: { access: { on: 'list', permission: 'network.read' } },
      schema: {
        operationId: 'listNetworks',
        tags: ['networks'],
        summary: 'List virtual networks',
        querystring: ProjectQuery,
        response: { 200: List(Network), ...listErrorResponses },
      },
    },
    async (request) => services.networks.list(request.query.project, request.visibleProjects),
  );
  app.post(
    '/v1/networks',
    {
      config: { access: { on: 'project', permission: 'network.create' } },
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
      config: { access: { on: 'project', permission: 'network.read' } },
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
      config: { access: { on: 'project', permission: 'network.delete' } },
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
  registerForwardRoutes(app, services);
  registerProbeRoute(app, services);
};

/** Port forwards through the network's NAT gateway. */
function registerForwardRoutes(app: RouteApp, services: NetworkRouteServices): void {
  app.get(
    '/v1/networks/:network/forwards',
    {
      config: { access: { on: 'project', permission: 'network.read' } },
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
      config: { access: { on: 'project', permission: 'network.forward' } },
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
      config: { access: { on: 'project', permission: 'network.forward' } },
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
}

/** A command run on a host in a diagnostic namespace attached to the network. */
function registerProbeRoute(app: RouteApp, services: NetworkRouteServices): void {
  app.post(
    '/v1/networks/:network/probe',
    {
      config: { access: { on: 'project', permission: 'network.probe' } },
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
    async (request) => services.networks.probe(request.params.network, request.query.project, request.body),
  );
}
