/**
 * The host agent's HTTP API, used only by the control plane (authenticated with the agent token
 * both agreed on at join). It turns each request into one supervisor action.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { connect } from 'node:net';
import { setTimeout as delay } from 'node:timers/promises';
import websocket from '@fastify/websocket';
import Fastify, { type FastifyInstance } from 'fastify';
import { NubisError, messageOf } from '../core/errors.ts';
import type { DiskSpec, NicFirewallSpec, VmSpec } from '../compute/vm-spec.ts';
import { httpStatusOf, toWireError } from '../core/error-codes.ts';
import type { HostNetworkSpec, NetworkPlumbing } from './network-plumbing.ts';
import type { VmStatus } from './vm-status.ts';
import type { VmSupervisor } from './vm-supervisor.ts';
import type { DirPools } from './dir-pools.ts';

/** How long a new console attach waits for the previous session to end. */
const CONSOLE_HANDOVER_MS = 2_000;

export interface AgentAppOptions {
  supervisor: VmSupervisor;
  networks: NetworkPlumbing;
  dirPools: DirPools;
  /** True when `token` is what the control plane presents to this agent. */
  isControlToken: (token: string) => boolean;
  info: () => Record<string, unknown>;
  /** Called by POST /agent/shutdown after the answer is sent. */
  onShutdown: (stopVms: boolean) => void;
}

/** Whether `token`'s sha256 is `expectedSha256` (hex), compared in constant time. */
export function matchesHash(token: string, expectedSha256: string | undefined): boolean {
  const given = createHash('sha256').update(token).digest();
  const expected = Buffer.from(expectedSha256 ?? '', 'hex');
  return expected.length === given.length && timingSafeEqual(given, expected);
}

/** Builds the agent's Fastify app (not listening: the caller chooses the socket). */
export async function buildAgentApp(options: AgentAppOptions): Promise<FastifyInstance> {
  const app = Fastify({ logger: false });
  await app.register(websocket);
  const { supervisor } = options;

  app.addHook('onRequest', async (request) => {
    // Only in the header: a token in a query string ends up in logs and process listings.
    const header = request.headers.authorization ?? '';
    const token = header.startsWith('Bearer ') ? header.slice(7) : '';
    if (!options.isControlToken(token)) throw new NubisError('AUTH_INVALID_TOKEN', 'The control token is missing or wrong');
  });
  app.setErrorHandler((error, _request, reply) => {
    const { status, body } = (error as { validation?: unknown }).validation
      ? { status: 400, body: { code: 'VALIDATION_FAILED', message: messageOf(error) } }
      : toWireError(error);
    void reply.status(status).send(body);
  });

  type IdParams = { Params: { id: string } };
  type ActionBody = { force?: boolean; timeoutSeconds?: number };

  app.get('/agent/info', async () => ({ ...options.info(), vms: supervisor.list() }));
  app.get('/agent/vms', async () => supervisor.list());
  app.put<IdParams & { Body: VmSpec }>('/agent/vms/:id', async (request) => supervisor.create({ ...request.body, id: request.params.id }));
  app.get<IdParams>('/agent/vms/:id', async (request) => supervisor.status(request.params.id));
  app.post<IdParams>('/agent/vms/:id/start', async (request) => supervisor.start(request.params.id));
  app.post<IdParams & { Body: ActionBody }>('/agent/vms/:id/stop', async (request) =>
    supervisor.stop(request.params.id, { force: request.body?.force, gracefulTimeoutMs: (request.body?.timeoutSeconds ?? 30) * 1000 }),
  );
  app.post<IdParams & { Body: ActionBody }>('/agent/vms/:id/reboot', async (request) =>
    supervisor.reboot(request.params.id, { force: request.body?.force, gracefulTimeoutMs: (request.body?.timeoutSeconds ?? 30) * 1000 }),
  );
  app.post<IdParams>('/agent/vms/:id/pause', async (request) => supervisor.pause(request.params.id));
  app.post<IdParams>('/agent/vms/:id/resume', async (request) => supervisor.resume(request.params.id));
  app.post<IdParams & { Body: { timeoutMs?: number } }>('/agent/vms/:id/wait-ready', async (request) =>
    supervisor.waitReady(request.params.id, request.body?.timeoutMs ?? 120_000),
  );
  app.delete<IdParams>('/agent/vms/:id', async (request, reply) => {
    await supervisor.delete(request.params.id);
    return reply.status(204).send();
  });
  app.get<IdParams & { Querystring: { lines?: string } }>('/agent/vms/:id/log', async (request) => ({
    lines: await supervisor.consoleLog(request.params.id, Number(request.query.lines ?? 100)),
  }));
  // Live migration: the control plane drives both ends through these.
  type IncomingBody = {
    spec: VmSpec;
    listenUri: string;
    capabilities: Record<string, boolean>;
    carried: Partial<VmStatus>;
    mirror?: Parameters<VmSupervisor['prepareIncoming']>[4];
  };
  app.put<IdParams & { Body: IncomingBody }>('/agent/vms/:id/incoming', async (request) =>
    supervisor.prepareIncoming(
      { ...request.body.spec, id: request.params.id },
      request.body.listenUri,
      request.body.capabilities,
      request.body.carried,
      request.body.mirror,
    ),
  );
  // Local disks travel by mirror: the source copies them into the destination's NBD exports.
  app.post<IdParams & { Body: { diskIds: string[]; target: { host: string; port: number } } }>('/agent/vms/:id/mirror', async (request, reply) => {
    await supervisor.startDiskMirrors(request.params.id, request.body.diskIds, request.body.target);
    return reply.status(204).send();
  });
  app.get<IdParams>('/agent/vms/:id/mirror', async (request) => supervisor.diskMirrors(request.params.id));
  app.delete<IdParams>('/agent/vms/:id/mirror', async (request, reply) => {
    await supervisor.abortDiskMirrors(request.params.id);
    return reply.status(204).send();
  });
  app.post<IdParams>('/agent/vms/:id/incoming/activate', async (request) => supervisor.activateIncoming(request.params.id));
  app.post<
    IdParams & {
      Body: { uri: string; capabilities: Record<string, boolean>; downtimeLimitMs: number; maxBandwidthBytesPerSec?: number; mirroredDisks?: string[] };
    }
  >('/agent/vms/:id/migrate', async (request) => supervisor.migrateOut(request.params.id, request.body.uri, request.body));
  app.get<IdParams>('/agent/vms/:id/migration', async (request) => supervisor.migrationStatus(request.params.id));
  app.get<IdParams>('/agent/vms/:id/pauses', async (request) => supervisor.pauseTimes(request.params.id));
  app.post<IdParams>('/agent/vms/:id/migration/postcopy', async (request, reply) => {
    await supervisor.startPostcopy(request.params.id);
    return reply.status(204).send();
  });
  app.post<IdParams>('/agent/vms/:id/migration/cancel', async (request, reply) => {
    await supervisor.cancelMigration(request.params.id);
    return reply.status(204).send();
  });
  app.post<IdParams & { Body: { seconds: number } }>('/agent/vms/:id/migration/dirty-rate', async (request) => ({
    bytesPerSec: await supervisor.sampleDirtyRate(request.params.id, request.body.seconds),
  }));
  app.put<IdParams & { Body: { downtimeLimitMs?: number; maxBandwidthBytesPerSec?: number } }>(
    '/agent/vms/:id/migration/parameters',
    async (request, reply) => {
      await supervisor.setMigrationParameters(request.params.id, request.body);
      return reply.status(204).send();
    },
  );
  // Post-copy recovery: both ends pause on a broken link; the destination listens again and the
  // source reconnects.
  app.post<IdParams>('/agent/vms/:id/migration/pause', async (request, reply) => {
    await supervisor.pauseMigration(request.params.id);
    return reply.status(204).send();
  });
  app.post<IdParams & { Body: { uri: string } }>('/agent/vms/:id/incoming/recover', async (request, reply) => {
    await supervisor.recoverIncoming(request.params.id, request.body.uri);
    return reply.status(204).send();
  });
  app.post<IdParams & { Body: { uri: string } }>('/agent/vms/:id/migration/resume', async (request, reply) => {
    await supervisor.resumeMigration(request.params.id, request.body.uri);
    return reply.status(204).send();
  });
  // Host-based storage: the dir pools of this host.
  type PoolParams = { Params: { pool: string } };
  type VolumeParams = { Params: { pool: string; volume: string } };
  app.put<PoolParams>('/agent/dir-pools/:pool', async (request) => options.dirPools.ensurePool(request.params.pool));
  app.get<PoolParams>('/agent/dir-pools/:pool', async (request) => options.dirPools.poolInfo(request.params.pool));
  app.delete<PoolParams>('/agent/dir-pools/:pool', async (request, reply) => {
    await options.dirPools.removePool(request.params.pool);
    return reply.status(204).send();
  });
  app.put<VolumeParams & { Body: { sizeBytes: number } }>('/agent/dir-pools/:pool/volumes/:volume', async (request) =>
    options.dirPools.createVolume(request.params.pool, request.params.volume, request.body.sizeBytes),
  );
  app.get<VolumeParams>('/agent/dir-pools/:pool/volumes/:volume', async (request) => options.dirPools.volumeInfo(request.params.pool, request.params.volume));
  app.delete<VolumeParams>('/agent/dir-pools/:pool/volumes/:volume', async (request, reply) => {
    await options.dirPools.deleteVolume(request.params.pool, request.params.volume);
    return reply.status(204).send();
  });
  app.post<VolumeParams & { Body: { sizeBytes: number } }>('/agent/dir-pools/:pool/volumes/:volume/resize', async (request) =>
    options.dirPools.resizeVolume(request.params.pool, request.params.volume, request.body.sizeBytes),
  );
  app.post<IdParams & { Body: DiskSpec }>('/agent/vms/:id/disks', async (request) => supervisor.attachDisk(request.params.id, request.body));
  app.delete<{ Params: { id: string; disk: string } }>('/agent/vms/:id/disks/:disk', async (request) =>
    supervisor.detachDisk(request.params.id, request.params.disk),
  );
  app.put<IdParams & { Body: Array<NicFirewallSpec & { nicId: string }> }>('/agent/vms/:id/firewall', async (request, reply) => {
    await options.networks.applyFirewalls(supervisor.spec(request.params.id), request.body);
    return reply.status(204).send();
  });
  app.put<IdParams & { Body: HostNetworkSpec }>('/agent/networks/:id', async (request) => options.networks.apply({ ...request.body, id: request.params.id }));
  app.delete<IdParams>('/agent/networks/:id', async (request, reply) => {
    await options.networks.remove(request.params.id);
    return reply.status(204).send();
  });
  app.post<IdParams & { Body: { address: string; gateway?: string; command: string[]; timeoutMs: number } }>('/agent/networks/:id/probe', async (request) =>
    options.networks.probe(request.params.id, request.body),
  );
  app.post<{ Body: { stopVms?: boolean } }>('/agent/shutdown', async (request, reply) => {
    await reply.status(202).send({ shuttingDown: true });
    options.onShutdown(request.body?.stopVms ?? false);
  });

  // Interactive serial console: bytes both ways between the WebSocket and QEMU's console socket.
  // QEMU's socket chardev serves one client at a time, so a second attach is refused; but a
  // detach travels through the control plane and may arrive just after a new attach, so a busy
  // console gets a moment to free itself first.
  const attached = new Map<string, Promise<void>>();
  app.get<IdParams>('/agent/vms/:id/console', { websocket: true }, async (socket, request) => {
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
  });
  return app;
}
