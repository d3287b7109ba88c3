/**
 * The host agent process: one per host. It owns the VMs of its host, serves the agent API on its
 * endpoint, joins the control plane with a join token and keeps it told what actually runs.
 * Stopping the agent leaves every VM running; the next agent re-adopts them.
 */
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { cpus, totalmem } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { chooseAccelerator, type AcceleratorChoice } from '../compute/accelerator-probe.ts';
import { VmCgroups, describeCgroups, detectCgroups } from './cgroups.ts';
import { qemuVersionLine, requireSupportedQemu } from '../compute/qemu/qemu-version.ts';
import { messageOf } from '../core/errors.ts';
import { closeDataFolder, closeHostFolder } from '../core/data-folder.ts';
import { openUserfaultfdToVms, vmUsersAvailable } from './vm-launcher.ts';
import { requestJson } from '../core/http-json.ts';
import { newSecret } from '../core/ids.ts';
import { dataPaths } from '../core/paths.ts';
import type { Logger } from '../core/logger.ts';
import type { FastifyInstance } from 'fastify';
import { buildAgentApp, matchesHash } from './agent-app.ts';
import { BackupStoreClient } from '../backup/store-client.ts';
import { DirPools } from './dir-pools.ts';
import { NetworkPlumbing } from './network-plumbing.ts';
import { VmSupervisor } from './vm-supervisor.ts';
import { UsageSampler } from './usage-sampler.ts';
import { MemoryReclaimer } from './memory-reclaimer.ts';
import { feedWatchdog, heartbeatLoop } from './heartbeat-loop.ts';
import { AGENT_UNDERLAY_PORT } from '../agent-api/heartbeat.ts';
import { createServer, type Server } from 'node:http';
import type { VmStatus } from '../agent-api/contract.ts';

/** The backup store this host's VMs back up to (the data folder's, by default), and where restored root disks wait. */
function backupsOf(options: AgentOptions): { store: BackupStoreClient; restoresDir: string } {
  return {
    store: new BackupStoreClient(options.backupStoreSocket ?? dataPaths(join(options.hostDir, '..', '..')).backupStoreSocket),
    restoresDir: join(options.hostDir, 'restores'),
  };
}

export interface AgentOptions {
  /** Host name, unique in the cluster. */
  name: string;
  /** This host's own folder: agent.json, vms/, agent.sock. */
  hostDir: string;
  /** The control plane's URL (http://127.0.0.1:8443 or unix:/path). */
  controlUrl: string;
  joinToken: string;
  /** The guest used by the accelerator probe. */
  probeGuest: { kernelPath: string; initrdPath: string; identity: string };
  /** Folder for the probe's cached result (shared by all agents of a machine). */
  cacheDir: string;
  logger: Logger;
  /** The network namespace this agent runs in (a host of the test bed), if any. */
  hostNs?: string;
  /** This host's underlay address (VXLAN endpoint), if it has an underlay. */
  underlayIp?: string;
  /** Seconds between full reports to the control plane. Default 10. */
  heartbeatSeconds?: number;
  /**
   * Serve the agent API on the underlay address too (the endpoint the control plane calls), so
   * that cutting the host's link cuts the control plane off it, as on separate machines.
   */
  listenOnUnderlay?: boolean;
  /** The backup store's socket. Default: the one of the data folder that holds `hostDir` (`<data>/hosts/<name>`). */
  backupStoreSocket?: string;
}

interface AgentIdentity {
  /** What this agent presents to the control plane. */
  agentToken: string;
  /** sha256 (hex) of what the control plane presents to this agent, learnt at join. */
  controlTokenSha256?: string;
}

/** A running host agent; `stop()` ends it and leaves the VMs running unless asked otherwise. */
export interface RunningAgent {
  endpoint: string;
  accelerator: AcceleratorChoice;
  supervisor: VmSupervisor;
  stop(options?: { stopVms?: boolean }): Promise<void>;
  /** Resolves when the agent has ended (by `stop()` or a shutdown request). */
  ended: Promise<void>;
}

async function loadIdentity(hostDir: string): Promise<AgentIdentity> {
  const path = join(hostDir, 'agent.json');
  if (existsSync(path)) return JSON.parse(await readFile(path, 'utf8')) as AgentIdentity;
  const identity = { agentToken: newSecret('nubis_agent') };
  await writeFile(path, `${JSON.stringify(identity, null, 2)}\n`, { mode: 0o600 });
  return identity;
}

/** Starts a host agent and returns once it serves (joining the control plane goes on in the background). */
export async function startAgent(options: AgentOptions): Promise<RunningAgent> {
  const { logger } = options;
  await mkdir(join(options.hostDir, 'vms'), { recursive: true });
  const identity = await loadIdentity(options.hostDir);
  await openWaysToVms(options.hostDir, logger);
  const { qemuVersion, accelerator } = await probeHost(options);
  const reports = new ChangeReports(reporterTo(options, identity), logger);
  const networks = new NetworkPlumbing({ hostNs: options.hostNs, underlayIp: options.underlayIp });
  const cgroups = new VmCgroups(await detectCgroups());
  logger.info({ cgroups: cgroups.layout.version }, `CPU controls: ${describeCgroups(cgroups.layout)}`);
  const supervisor = new VmSupervisor({
    cgroups,
    vmsDir: join(options.hostDir, 'vms'),
    plugNics: (spec) => networks.plugNics(spec),
    unplugNics: (spec) => networks.unplugNics(spec),
    accelerator: accelerator.accelerator,
    log: (level, message) => logger[level](message),
    onChange: (status) => reports.note(status),
  });

  await supervisor.adoptAll();
  let resolveEnded!: () => void;
  const ended = new Promise<void>((resolve) => (resolveEnded = resolve));
  const abort = new AbortController();
  let stopping = false;
  const stop = async (stopOptions: { stopVms?: boolean } = {}): Promise<void> => {
    if (stopping) return ended;
    stopping = true;
    abort.abort();
    underlayServer?.close();
    await shutDown(stopOptions, { supervisor, reports, app, hostDir: options.hostDir, logger });
    resolveEnded();
  };

  const app = await buildAgentApp({
    supervisor,
    networks,
    dirPools: new DirPools(join(options.hostDir, 'pools'), { growLive: (path, sizeBytes) => supervisor.growFileDisk(path, sizeBytes) }),
    backups: backupsOf(options),
    isControlToken: (token) => matchesHash(token, identity.controlTokenSha256),
    info: () => ({ name: options.name, accelerator: accelerator.accelerator, acceleratorReason: accelerator.reason }),
    onShutdown: (stopVms) => void stop({ stopVms }),
    log: (message) => logger.warn(message),
  });
  await rm(join(options.hostDir, 'agent.sock'), { force: true });
  await app.listen({ path: join(options.hostDir, 'agent.sock') });
  const { endpoint, underlayServer } = await listenOnUnderlay(app, options);

  const joinBody = {
    name: options.name,
    joinToken: options.joinToken,
    endpoint,
    agentToken: identity.agentToken,
    accelerator: accelerator.accelerator,
    acceleratorReason: accelerator.reason,
    cpus: cpus().length,
    memoryMb: Math.floor(totalmem() / 1024 / 1024),
    ...(options.underlayIp ? { underlayIp: options.underlayIp } : {}),
    qemuVersion,
    isolation: { cgroups: cgroups.layout.version === 'none' ? 'none' : (`v${cgroups.layout.version}` as const), vmUsers: vmUsersAvailable() },
  };
  void joinAndHeartbeat({ options, identity, joinBody, reports, supervisor, signal: abort.signal });
  void feedWatchdog(options.hostDir, abort.signal, logger);
  void heartbeatLoop({
    name: options.name,
    hostDir: options.hostDir,
    controlUrl: options.controlUrl,
    agentToken: () => identity.agentToken,
    joined: () => reports.joined,
    supervisor,
    logger,
    signal: abort.signal,
  });

  void new UsageSampler({
    sources: () => supervisor.usageSources(),
    send: (report) =>
      requestJson(options.controlUrl, { method: 'POST', path: `/v1/hosts/${options.name}/usage`, token: identity.agentToken, body: report, timeoutMs: 10_000 }),
    logger,
  }).run(abort.signal);
  void new MemoryReclaimer({ sources: () => supervisor.usageSources(), spec: (id) => supervisor.spec(id), targets: supervisor.reclaimTargets, logger }).run(
    abort.signal,
  );

  return { endpoint, accelerator, supervisor, stop, ended };
}

/**
 * The endpoint the control plane calls: the agent's unix socket, or with `listenOnUnderlay` a TCP
 * listener on the host's underlay address (same routes, same control token).
 */
async function listenOnUnderlay(app: FastifyInstance, options: AgentOptions): Promise<{ endpoint: string; underlayServer?: Server }> {
  if (!options.listenOnUnderlay || !options.underlayIp) return { endpoint: `unix:${join(options.hostDir, 'agent.sock')}` };
  const server = createServer((request, response) => app.routing(request, response));
  // Upgrades (the console's WebSocket) go to the app's own server, which serves them.
  server.on('upgrade', (request, socket, head) => app.server.emit('upgrade', request, socket, head));
  await new Promise<void>((resolve, reject) => server.listen(AGENT_UNDERLAY_PORT, options.underlayIp, resolve).once('error', reject));
  return { endpoint: `http://${options.underlayIp}:${AGENT_UNDERLAY_PORT}`, underlayServer: server };
}

/** Checks this host's QEMU and chooses its accelerator (the probe's result is cached). */
async function probeHost(options: AgentOptions): Promise<{ qemuVersion: string; accelerator: AcceleratorChoice }> {
  const qemuVersion = qemuVersionLine();
  requireSupportedQemu(qemuVersion);
  const accelerator = await chooseAccelerator(options.probeGuest, {
    cacheFile: join(options.cacheDir, 'accelerator-probe.json'),
    workDir: options.hostDir,
    qemuVersion,
  });
  options.logger.info({ accelerator: accelerator.accelerator, reason: accelerator.reason }, 'accelerator chosen');
  return { qemuVersion, accelerator };
}

/** Sends the control plane a report of VM statuses: `full` when it is everything that runs here. */
type Report = (vms: VmStatus[], full: boolean) => Promise<unknown>;

function reporterTo(options: AgentOptions, identity: AgentIdentity): Report {
  return (vms, full) =>
    requestJson(options.controlUrl, {
      method: 'POST',
      path: `/v1/hosts/${options.name}/report`,
      token: identity.agentToken,
      body: { vms, full },
      timeoutMs: 10_000,
    });
}

/**
 * The VM statuses that changed since the last report, sent as one batch per tick once the agent
 * has joined (before that, the first heartbeat sends everything anyway).
 */
class ChangeReports {
  /** True once the control plane has accepted this agent; false again when it forgets us. */
  joined = false;
  readonly report: Report;
  readonly #logger: Logger;
  readonly #changed = new Map<string, VmStatus>();
  #flushScheduled = false;

  constructor(report: Report, logger: Logger) {
    this.report = report;
    this.#logger = logger;
  }

  /** Remembers a VM's new status and schedules a flush. */
  note(status: VmStatus): void {
    this.#changed.set(status.id, status);
    if (!this.#flushScheduled && this.joined) {
      this.#flushScheduled = true;
      queueMicrotask(() => void this.flush());
    }
  }

  /** Sends the changed statuses now, if any. */
  async flush(): Promise<void> {
    this.#flushScheduled = false;
    const batch = [...this.#changed.values()];
    this.#changed.clear();
    if (batch.length === 0) return;
    try {
      await this.report(batch, false);
    } catch (error) {
      // The next heartbeat sends everything again, so nothing is lost by dropping this batch.
      this.#logger.warn(`Cannot report to the control plane: ${messageOf(error)}`);
    }
  }
}

/**
 * Join, then report everything on a heartbeat. The control plane may start after the agent or
 * restart under it: the loop keeps trying and re-joins, and VMs run on meanwhile. Ends when
 * `signal` aborts.
 */
async function joinAndHeartbeat(loop: {
  options: AgentOptions;
  identity: AgentIdentity;
  joinBody: Record<string, unknown>;
  reports: ChangeReports;
  supervisor: VmSupervisor;
  signal: AbortSignal;
}): Promise<void> {
  const { options, reports, signal } = loop;
  let backoffMs = 200;
  while (!signal.aborted) {
    try {
      if (!reports.joined) {
        await joinControlPlane(options, loop.identity, loop.joinBody);
        reports.joined = true;
        backoffMs = 200;
        options.logger.info({ controlUrl: options.controlUrl }, 'joined the control plane');
      }
      await reports.report(loop.supervisor.list(), true);
      await delay((options.heartbeatSeconds ?? 10) * 1000, undefined, { signal });
    } catch (error) {
      if (signal.aborted) break;
      if ((error as { code?: string }).code === 'HOST_NOT_FOUND' || (error as { code?: string }).code === 'AUTH_INVALID_TOKEN') reports.joined = false;
      options.logger.warn(`Control plane not reachable or refused us (${messageOf(error)}); retrying`);
      await delay(backoffMs, undefined, { signal }).catch(() => undefined);
      backoffMs = Math.min(backoffMs * 2, 5_000);
    }
  }
}

/** Joins with the join token and keeps (in agent.json) the hash of the control token handed back. */
async function joinControlPlane(options: AgentOptions, identity: AgentIdentity, joinBody: Record<string, unknown>): Promise<void> {
  const answer = await requestJson<{ controlToken: string }>(options.controlUrl, {
    method: 'POST',
    path: '/v1/hosts/join',
    body: joinBody,
    timeoutMs: 10_000,
  });
  const controlTokenSha256 = createHash('sha256').update(answer.controlToken).digest('hex');
  if (controlTokenSha256 !== identity.controlTokenSha256) {
    identity.controlTokenSha256 = controlTokenSha256;
    await writeFile(join(options.hostDir, 'agent.json'), `${JSON.stringify(identity, null, 2)}\n`, { mode: 0o600 });
  }
}

/** Ends the agent: stops the VMs only when asked, lets go of the rest and closes the API. */
async function shutDown(
  stopOptions: { stopVms?: boolean },
  agent: { supervisor: VmSupervisor; reports: ChangeReports; app: FastifyInstance; hostDir: string; logger: Logger },
): Promise<void> {
  if (stopOptions.stopVms) {
    agent.logger.info('stopping every VM of this host');
    await agent.supervisor.stopAll({ gracefulTimeoutMs: 20_000 });
    await agent.reports.flush();
  }
  agent.supervisor.detachAll();
  await agent.app.close();
  await rm(join(agent.hostDir, 'agent.sock'), { force: true });
}

/**
 * Lets VMs' unprivileged QEMUs reach their own folders and nothing else of the data folder
 * (core/data-folder.ts), and post-copy's device (vm-launcher.ts). Without root, VMs run as the
 * agent's own user and this is skipped.
 */
async function openWaysToVms(hostDir: string, logger: Logger): Promise<void> {
  if (!vmUsersAvailable()) {
    logger.warn('The agent does not run as root: VMs run as its own user, not each as an unprivileged user of its own');
    return;
  }
  const hostsDir = dirname(hostDir);
  if (basename(hostsDir) === 'hosts') await closeDataFolder(dirname(hostsDir));
  await closeHostFolder(hostDir);
  await openUserfaultfdToVms();
}
