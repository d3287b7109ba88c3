/**
 * The agent API of every simulated host of bench/scale, in one Fastify app: each route of the
 * contract table (src/agent-api/contract.ts) registered from the table with its schemas, as the
 * real agent registers them (src/host/agent-app.ts), each body validated the same way, the same
 * control-token check and the same error contract. The handler table is keyed by the contract's
 * route names, so a route added to the contract does not type-check here until it is handled.
 *
 * One app serves all hosts: each host has its own HTTP server on its own unix socket, which
 * hands its requests to the app tagged with the host (`serveHost`).
 */
import { createServer, type IncomingMessage, type Server } from 'node:http';
import Fastify, { type FastifyInstance } from 'fastify';
import type { Static } from '@sinclair/typebox';
import { AGENT_ROUTES, type AgentRouteName, type FirewallUpdate, type StopRequest } from '../../src/agent-api/contract.ts';
import { toWireError } from '../../src/core/error-codes.ts';
import { NubisError, messageOf } from '../../src/core/errors.ts';
import type { DiskSpec, VmSpec } from '../../src/compute/vm-spec.ts';
import { matchesHash } from '../../src/host/agent-app.ts';
import type { SimHost } from './sim-host.ts';

type Params = Record<string, string>;
type Handler = (host: SimHost, params: Params, body: unknown) => unknown;

const FAKE_POOL_BYTES = 2 ** 40;

/** What a simulated host refuses: it runs no QEMU, so it cannot migrate, mirror or probe. */
function cannot(what: string): Handler {
  return (host) => {
    throw new NubisError('BAD_REQUEST', `Simulated host ${host.name} cannot ${what}`);
  };
}

const dirPool = (params: Params) => ({ path: `/sim/${params.pool}`, sizeBytes: FAKE_POOL_BYTES, freeBytes: FAKE_POOL_BYTES });
const dirVolume = (params: Params, sizeBytes = 2 ** 30) => ({ path: `/sim/${params.pool}/${params.volume}.qcow2`, sizeBytes, allocatedBytes: 0 });
const nothing = (): undefined => undefined;

/** Every route of the contract, answered from the host's memory. */
const HANDLERS: Record<AgentRouteName, Handler> = {
  info: (host) => ({ name: host.name, accelerator: 'kvm', acceleratorReason: 'simulated host (bench/scale)', vms: host.list() }),
  listVms: (host) => host.list(),
  createVm: (host, params, spec) => host.create({ ...(spec as VmSpec), id: params.id }),
  vmStatus: (host, params) => host.status(params.id),
  startVm: (host, params) => host.setState(params.id, 'running'),
  stopVm: (host, params, _body: Static<typeof StopRequest> | unknown) => host.setState(params.id, 'stopped'),
  rebootVm: (host, params) => host.setState(params.id, 'running', { restarted: true }),
  pauseVm: (host, params) => host.setState(params.id, 'paused'),
  resumeVm: (host, params) => host.setState(params.id, 'running'),
  waitReady: (host, params) => host.ready(params.id),
  deleteVm: (host, params) => host.delete(params.id),
  consoleLog: (host, params) => {
    host.status(params.id);
    return { lines: [] };
  },
  attachDisk: (host, params, disk) => host.attachDisk(params.id, disk as DiskSpec),
  detachDisk: (host, params) => host.detachDisk(params.id, params.disk),
  // A simulated host has no cgroups: the controls are taken and change nothing.
  setCpuControls: (host, params) => host.status(params.id),
  setDiskLimits: (host, params) => host.status(params.id),
  setNicBandwidth: (host, params) => host.status(params.id),
  // Nor balloons: memory is taken and reported as unknown.
  setMemory: (host, params) => host.status(params.id),
  setCpus: (host, params) => host.status(params.id),
  memoryReport: (host, params) => {
    host.status(params.id);
    return {};
  },
  setFirewall: (host, params, _firewalls: Static<typeof FirewallUpdate> | unknown) => {
    host.spec(params.id);
  },
  takeSnapshot: cannot('snapshot a VM'),
  rollbackSnapshot: cannot('snapshot a VM'),
  deleteSnapshot: cannot('snapshot a VM'),
  sealTemplate: cannot('make a template'),
  takeBackup: cannot('take a backup'),
  pullRestoredDisks: cannot('pull a restored disk'),
  copyDirVolume: cannot('copy a volume'),
  prepareIncoming: cannot('take an incoming migration'),
  activateIncoming: cannot('take an incoming migration'),
  recoverIncoming: cannot('take an incoming migration'),
  startMirrors: cannot('mirror disks'),
  mirrors: cannot('mirror disks'),
  abortMirrors: cannot('mirror disks'),
  migrate: cannot('migrate a VM'),
  migrationStatus: cannot('migrate a VM'),
  pauseTimes: cannot('migrate a VM'),
  startPostcopy: cannot('migrate a VM'),
  cancelMigration: cannot('migrate a VM'),
  sampleDirtyRate: cannot('sample a dirty rate'),
  setMigrationParameters: cannot('migrate a VM'),
  pauseMigration: cannot('migrate a VM'),
  resumeMigration: cannot('migrate a VM'),
  ensureDirPool: (_host, params) => dirPool(params),
  dirPool: (_host, params) => dirPool(params),
  removeDirPool: nothing,
  createDirVolume: (_host, params, body) => dirVolume(params, (body as { sizeBytes: number }).sizeBytes),
  dirVolume: (_host, params) => dirVolume(params),
  deleteDirVolume: nothing,
  restoreDirVolume: cannot('restore a volume'),
  restoreBootDisk: cannot('restore a disk'),
  removeRestoredDisk: nothing,
  resizeDirVolume: (_host, params, body) => dirVolume(params, (body as { sizeBytes: number }).sizeBytes),
  applyNetwork: (_host, params) => ({ bridge: `br-${params.id.slice(-8)}`, vxlan: `vx-${params.id.slice(-8)}` }),
  removeNetwork: nothing,
  probe: cannot('probe a network (it has no namespaces)'),
  shutdown: cannot('shut down (the bench ends it)'),
};

/** Which host a request came in for (set by the host's own server). */
const hostOfRequest = new WeakMap<IncomingMessage, SimHost>();

/** Builds the one app that answers for every simulated host (ready, not listening). */
export async function buildSimAgentApp(): Promise<FastifyInstance> {
  // As the real agent: bodies validated exactly as sent, against the contract's schemas.
  const app = Fastify({ logger: false, ajv: { customOptions: { coerceTypes: false, removeAdditional: false, useDefaults: true } } });
  app.addHook('onRequest', async (request) => {
    const host = hostOfRequest.get(request.raw);
    const header = request.headers.authorization ?? '';
    if (!host || !matchesHash(header.startsWith('Bearer ') ? header.slice(7) : '', host.controlTokenSha256))
      throw new NubisError('AUTH_INVALID_TOKEN', 'The control token is missing or wrong');
  });
  app.setErrorHandler((error, _request, reply) => {
    const { status, body } = (error as { validation?: unknown }).validation
      ? { status: 400, body: { code: 'VALIDATION_FAILED', message: messageOf(error) } }
      : toWireError(error);
    void reply.status(status).send(body);
  });
  for (const name of Object.keys(AGENT_ROUTES) as AgentRouteName[]) {
    const route = AGENT_ROUTES[name];
    app.route({
      method: route.method,
      url: route.url,
      schema: { params: route.params, ...('body' in route && route.body ? { body: route.body } : {}) },
      handler: async (request, reply) => {
        const answer = HANDLERS[name](hostOfRequest.get(request.raw)!, request.params as Params, request.body);
        return answer === undefined ? reply.status(204).send() : answer;
      },
    });
  }
  await app.ready();
  return app;
}

/** A server on `host`'s own unix socket whose requests the shared app answers as `host`. */
export async function serveHost(app: FastifyInstance, host: SimHost): Promise<Server> {
  const server = createServer((request, response) => {
    hostOfRequest.set(request, host);
    app.routing(request, response);
  });
  // Many hosts, one process: a socket per connection is plenty, and idle ones are closed soon.
  server.keepAliveTimeout = 5_000;
  await new Promise<void>((resolve, reject) => server.listen(host.socketPath, resolve).once('error', reject));
  return server;
}
