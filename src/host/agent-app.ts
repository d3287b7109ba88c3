/**
 * The host agent's HTTP API, used only by the control plane (authenticated with the control token
 * it was handed at join). Its routes are the contract's (src/agent-api/contract.ts), each body
 * validated against the contract's schema; each request becomes one supervisor action.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { connect } from 'node:net';
import { mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import websocket, { type WebSocket } from '@fastify/websocket';
import Fastify, { type FastifyInstance } from 'fastify';
import { NubisError, messageOf } from '../core/errors.ts';
import type { Static, TSchema } from '@sinclair/typebox';
import { AGENT_ROUTES, AGENT_STREAMS, type AgentRoute, type AgentRouteName } from '../agent-api/contract.ts';
import { httpStatusOf, toWireError } from '../core/error-codes.ts';
import type { NetworkPlumbing } from './network-plumbing.ts';
import type { VmSupervisor } from './vm-supervisor.ts';
import type { BackupStoreClient } from '../backup/store-client.ts';
import { restoreDisk } from './vm-backup.ts';
import { LiveRestores } from './live-restore.ts';
import type { DirPools } from './dir-pools.ts';
import { registerVncRelay } from './vnc-relay.ts';

type Routes = typeof AGENT_ROUTES;
type ParamsOf<N extends AgentRouteName> = Static<Routes[N]['params']>;
type BodyOf<N extends AgentRouteName> = Routes[N] extends { body: infer B extends TSchema } ? Static<B> : undefined;

/** How long a new console attach waits for the previous session to end. */
const CONSOLE_HANDOVER_MS = 2_000;

export interface AgentAppOptions {
  supervisor: VmSupervisor;
  networks: NetworkPlumbing;
  dirPools: DirPools;
  /**
   * The backup store the VMs' backups go to and restores come from, and where restored root disks
   * wait for the VM that is made of them (`<hostDir>/restores`).
   */
  backups: { store: BackupStoreClient; restoresDir: string };
  /** True when `token` is what the control plane presents to this agent. */
  isControlToken: (token: string) => boolean;
  info: () => Record<string, unknown>;
  /** Where the agent's warnings go (a VNC password that could not be expired). */
  log?: (message: string) => void;
  /** Called by POST /agent/shutdown after the answer is sent. */
  onShutdown: (stopVms: boolean) => void;
}

/** Whether `token`'s sha256 is `expectedSha256` (hex), compared in constant time. */
export function matchesHash(token: string, expectedSha256: string | undefined): boolean {
  const given = createHash('sha256').update(token).digest();
  const expected = Buffer.from(expectedSha256 ?? '', 'hex');
  return expected.length === given.length && timingSafeEqual(given, expected);
}

type RouteHandler<N extends AgentRouteName> = (params: ParamsOf<N>, body: BodyOf<N>, query: Record<string, string | undefined>) => Promise<unknown> | unknown;
/** Registers the handler of one contract route (see {@link contractRoutes}). */
type On = <N extends AgentRouteName>(name: N, handler: RouteHandler<N>) => void;

/** Builds the agent's Fastify app (not listening: the caller chooses the socket). */
export async function buildAgentApp(options: AgentAppOptions): Promise<FastifyInstance> {
  // Bodies are validated exactly as sent, against the contract's schemas (no coercion).
  const app = Fastify({ logger: false, ajv: { customOptions: { coerceTypes: false, removeAdditional: false, useDefaults: true } } });
  await app.register(websocket);
  requireControlToken(app, options.isControlToken);
  answerErrorsOnTheWire(app);
  const on = contractRoutes(app);
  registerVmRoutes(on, options);
  registerMigrationRoutes(on, options.supervisor);
  const liveRestores = new LiveRestores(options.backups.store);
  app.addHook('onClose', () => liveRestores.close());
  registerDirPoolRoutes(on, options.dirPools, options.backups.store, liveRestores);
  registerRestoreRoutes(on, options, liveRestores);
  registerNetworkRoutes(on, options.networks);
  registerShutdownRoute(app, options.onShutdown);
  registerConsole(app, options.supervisor);
  registerVncRelay(app, options.supervisor, options.log);
  return app;
}

/** Refuses every request that does not carry the control plane's token. */
function requireControlToken(app: FastifyInstance, isControlToken: AgentAppOptions['isControlToken']): void {
  app.addHook('onRequest', async (request) => {
    // Only in the header: a token in a query string ends up in logs and process listings.
    const header = request.headers.authorization ?? '';
    const token = header.startsWith('Bearer ') ? header.slice(7) : '';
    if (!isControlToken(token)) throw new NubisError('AUTH_INVALID_TOKEN', 'The control token is missing or wrong');
  });
}

/** Answers failures with the wire error (its code and status); bad bodies with VALIDATION_FAILED. */
function answerErrorsOnTheWire(app: FastifyInstance): void {
  app.setErrorHandler((error, _request, reply) => {
    const { status, body } = (error as { validation?: unknown }).validation
      ? { status: 400, body: { code: 'VALIDATION_FAILED', message: messageOf(error) } }
      : toWireError(error);
    void reply.status(status).send(body);
  });
}

/**
 * The one way a route of the contract is registered: its path parameters and body are
 * validated against the route's schemas before the handler runs, and a handler that returns
 * nothing answers 204.
 */
function contractRoutes(app: FastifyInstance): On {
  return <N extends AgentRouteName>(name: N, handler: RouteHandler<N>): void => {
    const route: AgentRoute = AGENT_ROUTES[name];
    app.route({
      method: route.method,
      url: route.url,
      schema: { params: route.params, ...(route.body ? { body: route.body } : {}) },
      handler: async (request, reply) => {
        const answer = await handler(request.params as ParamsOf<N>, request.body as BodyOf<N>, request.query as Record<string, string | undefined>);
        return answer === undefined ? reply.status(204).send() : answer;
      },
    });
  };
}

/** The VM lifecycle: create, start, stop, disks, console log and firewall of the host's VMs. */
function registerVmRoutes(on: On, options: AgentAppOptions): void {
  const { supervisor } = options;
  const stopOptions = (body: { force?: boolean; timeoutSeconds?: number }) => ({ force: body.force, gracefulTimeoutMs: (body.timeoutSeconds ?? 30) * 1000 });
  on('info', () => ({ ...options.info(), vms: supervisor.list() }));
  on('listVms', () => supervisor.list());
  on('createVm', (params, spec) => supervisor.create({ ...spec, id: params.id }));
  on('vmStatus', (params) => supervisor.status(params.id));
  on('startVm', (params) => supervisor.start(params.id));
  on('stopVm', (params, body) => supervisor.stop(params.id, stopOptions(body ?? {})));
  on('rebootVm', (params, body) => supervisor.reboot(params.id, stopOptions(body ?? {})));
  on('pauseVm', (params) => supervisor.pause(params.id));
  on('resumeVm', (params) => supervisor.resume(params.id));
  on('waitReady', (params, body) => supervisor.waitReady(params.id, body.timeoutMs));
  on('deleteVm', async (params) => {
    await supervisor.delete(params.id);
  });
  on('consoleLog', async (params, _body, query) => ({
    lines: await supervisor.consoleLog(params.id, Math.min(10_000, Math.max(1, Number.parseInt(query.lines ?? '100', 10) || 100))),
  }));
  on('attachDisk', (params, disk) => supervisor.attachDisk(params.id, disk));
  on('detachDisk', (params) => supervisor.detachDisk(params.id, params.disk));
  on('takeSnapshot', (params, body) => supervisor.takeSnapshot(params.id, params.snapshot, body.withMemory));
  on('rollbackSnapshot', (params, body) => supervisor.rollbackSnapshot(params.id, params.snapshot, body));
  on('deleteSnapshot', async (params) => {
    await supervisor.deleteSnapshot(params.id, params.snapshot);
  });
  on('takeBackup', (params, body) =>
    supervisor.takeBackup(params.id, { backupId: params.backup, key: Buffer.from(body.key, 'base64'), vm: body.vm, store: options.backups.store }),
  );
  on('sealTemplate', async (params) => {
    await supervisor.sealTemplate(params.id);
  });
  on('setCpuControls', (params, controls) => supervisor.setCpuControls(params.id, controls));
  on('setDiskLimits', (params, limits) => supervisor.setDiskLimits(params.id, params.disk, limits));
  on('setNicBandwidth', (params, bandwidth) =>
    supervisor.setNicBandwidth(params.id, params.nic, bandwidth, (spec) => options.networks.applyBandwidth(spec, params.nic)),
  );
  on('setMemory', (params, settings) => supervisor.setMemory(params.id, settings));
  on('setCpus', (params, settings) => supervisor.setCpus(params.id, settings));
  on('memoryReport', async (params) => ({ report: await supervisor.memoryReport(params.id) }));
  on('setFirewall', async (params, firewalls) => {
    await options.networks.applyFirewalls(supervisor.spec(params.id), firewalls);
  });
}

/** Live migration: the control plane drives both ends through these. */
function registerMigrationRoutes(on: On, supervisor: VmSupervisor): void {
  on('prepareIncoming', (params, body) =>
    supervisor.prepareIncoming({ ...body.spec, id: params.id }, body.listenUri, body.capabilities, body.carried, body.mirror, body.tls),
  );
  on('activateIncoming', (params) => supervisor.activateIncoming(params.id));
  // Local disks travel by mirror: the source copies them into the destination's NBD exports.
  on('startMirrors', async (params, body) => {
    await supervisor.startDiskMirrors(params.id, body.diskIds, body.target);
  });
  on('mirrors', (params) => supervisor.diskMirrors(params.id));
  on('abortMirrors', async (params) => {
    await supervisor.abortDiskMirrors(params.id);
  });
  on('migrate', (params, body) => supervisor.migrateOut(params.id, body.uri, body));
  on('migrationStatus', (params) => supervisor.migrationStatus(params.id));
  on('pauseTimes', (params) => supervisor.pauseTimes(params.id));
  on('startPostcopy', async (params) => {
    await supervisor.startPostcopy(params.id);
  });
  on('cancelMigration', async (params) => {
    await supervisor.cancelMigration(params.id);
  });
  on('sampleDirtyRate', async (params, body) => ({ bytesPerSec: await supervisor.sampleDirtyRate(params.id, body.seconds) }));
  on('setMigrationParameters', async (params, body) => {
    await supervisor.setMigrationParameters(params.id, body);
  });
  // Post-copy recovery: both ends pause on a broken link; the destination listens again and the
  // source reconnects.
  on('pauseMigration', async (params) => {
    await supervisor.pauseMigration(params.id);
  });
  on('recoverIncoming', async (params, body) => {
    await supervisor.recoverIncoming(params.id, body.uri);
  });
  on('resumeMigration', async (params, body) => {
    await supervisor.resumeMigration(params.id, body.uri);
  });
}

/** Host-based storage: the dir pools of this host. */
function registerDirPoolRoutes(on: On, dirPools: DirPools, store: BackupStoreClient, liveRestores: LiveRestores): void {
  on('ensureDirPool', (params) => dirPools.ensurePool(params.pool));
  on('dirPool', (params) => dirPools.poolInfo(params.pool));
  on('removeDirPool', async (params) => {
    await dirPools.removePool(params.pool);
  });
  on('createDirVolume', (params, body) => dirPools.createVolume(params.pool, params.volume, body.sizeBytes));
  on('dirVolume', (params) => dirPools.volumeInfo(params.pool, params.volume));
  on('copyDirVolume', (params, body) => dirPools.copyVolume(params.pool, body.from, params.volume, body.linked));
  on('deleteDirVolume', async (params) => {
    await liveRestores.end(dirPools.volumePath(params.pool, params.volume));
    await dirPools.deleteVolume(params.pool, params.volume);
  });
  on('resizeDirVolume', (params, body) => dirPools.resizeVolume(params.pool, params.volume, body.sizeBytes));
  on('restoreDirVolume', (params, body) => {
    const request = { backupId: body.backup, diskId: body.disk, key: Buffer.from(body.key, 'base64') };
    return dirPools.fillVolume(params.pool, params.volume, (target) =>
      body.live ? liveRestores.start(target, request) : restoreDisk({ store, ...request, target }),
    );
  });
}

/**
 * Root disks restored from backups, in files of the host's own until a VM's root disk is made of
 * them; and the pull of the disks a VM reads from its backup (live restores).
 */
function registerRestoreRoutes(on: On, options: AgentAppOptions, liveRestores: LiveRestores): void {
  const { store, restoresDir: dir } = options.backups;
  on('pullRestoredDisks', async (params) => ({ disks: await options.supervisor.pullRestoredDisks(params.id, liveRestores) }));
  const pathOf = (backup: string, disk: string) => join(dir, `${backup}-${disk}.qcow2`);
  on('restoreBootDisk', async (params, body) => {
    await mkdir(dir, { recursive: true, mode: 0o700 });
    const target = pathOf(params.backup, params.disk);
    // A file of an earlier restore of the same disk that was interrupted.
    await rm(target, { force: true });
    await restoreDisk({ store, backupId: params.backup, diskId: params.disk, key: Buffer.from(body.key, 'base64'), target });
    return { path: target };
  });
  on('removeRestoredDisk', async (params) => {
    await rm(pathOf(params.backup, params.disk), { force: true });
  });
}

/** The tenant networks' plumbing on this host, and the probe used to check it. */
function registerNetworkRoutes(on: On, networks: NetworkPlumbing): void {
  on('applyNetwork', (params, spec) => networks.apply({ ...spec, id: params.id }));
  on('removeNetwork', async (params) => {
    await networks.remove(params.id);
  });
  on('probe', (params, body) => networks.probe(params.id, body));
}

/** POST /agent/shutdown answers 202 first, then ends the agent. */
function registerShutdownRoute(app: FastifyInstance, onShutdown: AgentAppOptions['onShutdown']): void {
  app.route({
    method: AGENT_ROUTES.shutdown.method,
    url: AGENT_ROUTES.shutdown.url,
    schema: { body: AGENT_ROUTES.shutdown.body },
    handler: async (request, reply) => {
      await reply.status(202).send({ shuttingDown: true });
      onShutdown((request.body as { stopVms?: boolean } | undefined)?.stopVms ?? false);
    },
  });
}

/**
 * Interactive serial console: bytes both ways between the WebSocket and QEMU's console socket.
 * QEMU's socket chardev serves one client at a time, so a second attach is refused; but a
 * detach travels through the control plane and may arrive just after a new attach, so a busy
 * console gets a moment to free itself first.
 */
function registerConsole(app: FastifyInstance, supervisor: VmSupervisor): void {
  const attached = new Map<string, Promise<void>>();
  app.get<{ Params: { id: string } }>(
    AGENT_STREAMS.console.url,
    { websocket: true, schema: { params: AGENT_STREAMS.console.params } },
    async (socket, request) => {
      const { id } = request.params;
      let path: string;
      try {
        path = supervisor.consoleSocket(id);
        const previous = attached.get(id);
        if (previous) await Promise.race([previous, delay(CONSOLE_HANDOVER_MS)]);
        if (attached.has(id)) throw new NubisError('VM_CONSOLE_BUSY', 'Someone is already attached to this console; detach there first');
      } catch (error) {
        socket.close(4000 + (httpStatusOf((error as NubisError).code ?? '') % 1000), messageOf(error).slice(0, 120));
        return;
      }
      pipeConsole(socket, path, id, attached);
    },
  );
}

/** Joins one attached WebSocket to QEMU's console socket until either side ends. */
function pipeConsole(socket: WebSocket, path: string, id: string, attached: Map<string, Promise<void>>): void {
  let ended!: () => void;
  const session = new Promise<void>((resolve) => (ended = resolve));
  attached.set(id, session);
  const serial = connect(path);
  serial.on('data', (data) => socket.send(data));
  socket.on('message', (data: Buffer) => serial.write(data));
  let over = false;
  const end = (): void => {
    if (over) return;
    over = true;
    // Only this session's entry: a later session may already hold the console.
    if (attached.get(id) === session) attached.delete(id);
    ended();
    serial.destroy();
    socket.close();
  };
  serial.on('close', end);
  serial.on('error', end);
  socket.on('close', end);
}
