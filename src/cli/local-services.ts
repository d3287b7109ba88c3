/**
 * `nubis up` and `nubis down`: start and stop the control plane and the local host agents as
 * processes of their own, so that either can restart without touching running VMs.
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, openSync, closeSync, readFileSync, readdirSync } from 'node:fs';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { connect } from 'node:net';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { NubisError } from '../core/errors.ts';
import { processAlive } from '../core/process-alive.ts';
import { cacheDir, dataPaths, repoRoot } from '../core/paths.ts';
import { buildTinyImage, readTinyImage } from '../images/build-tiny.ts';
import { DHCP_STATE_ROOT } from '../host/network-plumbing.ts';
import { stopOrphanedVms } from '../host/orphan-vms.ts';
import { stopDhcpServersUnder } from '../network/dhcp.ts';
import { attachHostToUnderlay, cleanupByPrefix, ensureUnderlayBridge } from '../network/underlay.ts';
import { setExactAddress, setSysctl } from '../network/ip-command.ts';
import { ApiClient, resolveApiTarget } from './api-client.ts';
import type { Operation, Vm } from '../wire/schemas.ts';
import { type ApiTlsOptions, prepareStorageNodeTls } from '../app/tls.ts';
import { type AccessOptions, accessDaemonArgs } from './access-options.ts';
import { tlsDaemonArgs } from './tls-options.ts';

export interface UpOptions {
  dataDir: string;
  port: number;
  hosts: number;
  detach: boolean;
  quiet: boolean;
  /** Run each host in a network namespace of its own on an underlay bridge (needs root). */
  netns: boolean;
  /** Address the API listens on. Default 127.0.0.1. */
  host?: string;
  /** Serve the API over HTTPS (app/tls.ts). Default: HTTP. */
  tls?: ApiTlsOptions;
  /** OpenID Connect sign-in and audit head publishing (access-options.ts). */
  access?: AccessOptions;
  /** CA file the CLI trusts for the API (`--ca`); the Nubis CA of the data folder needs none. */
  ca?: string;
}

/** How the hosts of a test bed are laid out on this machine (kept in run/testbed.json). */
interface TestBed {
  /** Prefix of every namespace, link and bridge this data folder's hosts use. */
  prefix: string;
  underlayBridge: string;
  hosts: Array<{ name: string; netns: string; underlayIp: string }>;
}

/** A per-data-folder prefix, so two Nubis test beds on one machine never share a device name. */
function testBedPrefix(dataDir: string): string {
  return `nb${createHash('sha256').update(dataDir).digest('hex').slice(0, 5)}`;
}

/** Largest TCP socket buffer in a test-bed host: room for a LAN's bandwidth-delay product. */
const MIGRATION_LINK_SOCKET_BUFFER = 262_144;

/**
 * The control plane's address on the test bed's underlay (on the bridge in the root namespace):
 * agents reach it over TCP there, so cutting a host's link cuts the host off the control plane.
 */
const UNDERLAY_CONTROL_ADDRESS = '172.31.0.1';
const UNDERLAY_CONTROL_PORT = 7900;

/** Underlay addresses: 172.31.0.11, .12, ... inside the host namespaces only. */
function underlayIpOf(index: number): string {
  return `172.31.0.${11 + index}`;
}

async function _readTestBed(dataDir: string): Promise<TestBed | undefined> {
  const path = join(dataPaths(dataDir).runDir, 'testbed.json');
  return existsSync(path) ? (JSON.parse(await readFile(path, 'utf8')) as TestBed) : undefined;
}

/** Creates (or re-checks) the underlay bridge and one namespace per host joined to it. */
async function ensureTestBed(dataDir: string, hostNames: string[]): Promise<TestBed> {
  const prefix = testBedPrefix(dataDir);
  const bed: TestBed = {
    prefix,
    underlayBridge: `${prefix}-ul`,
    hosts: hostNames.map((name, index) => ({ name, netns: `${prefix}-${name}`, underlayIp: underlayIpOf(index) })),
  };
  await ensureUnderlayBridge(bed.underlayBridge);
  await setExactAddress(bed.underlayBridge, `${UNDERLAY_CONTROL_ADDRESS}/24`);
  for (const host of bed.hosts) {
    await attachHostToUnderlay({ bridge: bed.underlayBridge, hostNs: host.netns, address: `${host.underlayIp}/24` });
    // TCP buffers sized for a LAN (its bandwidth-delay product is tens of KiB) instead of the
    // autotuned megabytes. Measured here: a destination QEMU under TCG reads the migration stream
    // more slowly than the source writes it, so megabytes wait in socket buffers when the source
    // stops the VM, and draining them added 20-200 ms to the pause that QEMU's own downtime
    // figure does not show (bench/migration/RESULTS.md).
    for (const key of ['net.ipv4.tcp_wmem', 'net.ipv4.tcp_rmem']) await setSysctl(key, `4096 65536 ${MIGRATION_LINK_SOCKET_BUFFER}`, { netns: host.netns });
  }
  await mkdir(dataPaths(dataDir).runDir, { recursive: true });
  await writeFile(join(dataPaths(dataDir).runDir, 'testbed.json'), `${JSON.stringify(bed, null, 2)}\n`);
  return bed;
}

/** A watchdog per host of the test bed, in the host's namespace, apart from its agent. */
async function startWatchdogs(dataDir: string, bed: TestBed): Promise<void> {
  for (const host of bed.hosts) {
    if (await readPidFile(join(dataPaths(dataDir).runDir, `watchdog-${host.name}.pid`))) continue;
    await spawnDaemon(dataDir, `watchdog-${host.name}`, ['watchdog', '--name', host.name, '--data', dataDir, '--underlay-ip', host.underlayIp], host.netns);
  }
}

async function readPidFile(path: string): Promise<number | undefined> {
  if (!existsSync(path)) return undefined;
  const pid = Number.parseInt(await readFile(path, 'utf8'), 10);
  return Number.isInteger(pid) && processAlive(pid) ? pid : undefined;
}

/**
 * Starts `nubis daemon ...` detached, with its output in a log file and its pid in run/. With
 * `netns` it runs inside that network namespace (`nsenter` execs in place: same pid).
 */
async function spawnDaemon(dataDir: string, name: string, args: string[], netns?: string): Promise<number> {
  const paths = dataPaths(dataDir);
  await mkdir(paths.runDir, { recursive: true });
  await mkdir(paths.logsDir, { recursive: true });
  const logFd = openSync(join(paths.logsDir, `${name}.log`), 'a');
  const command = [process.execPath, join(repoRoot, 'bin/nubis.mjs'), 'daemon', ...args];
  // nsenter, not `ip netns exec`: that also gives the process a mount namespace of its own, a
  // slave of ours, and the namespaces an agent names inside it (DHCP servers, routers, probes)
  // would exist only there. `down` could then neither see nor stop what runs in them (a dnsmasq
  // outlived it), and a restarted agent could not enter them.
  const argv = netns ? ['nsenter', `--net=/run/netns/${netns}`, '--', ...command] : command;
  const child = spawn(argv[0], argv.slice(1), { detached: true, stdio: ['ignore', logFd, logFd], env: process.env });
  closeSync(logFd);
  child.unref();
  await writeFile(join(paths.runDir, `${name}.pid`), `${child.pid}\n`);
  return child.pid!;
}

/** True when something accepts connections on the unix socket at `path`. */
function socketAccepts(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect(path);
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

/** Waits until `check` returns a value, or throws with `what` after `timeoutMs`. */
async function waitFor<T>(what: string, timeoutMs: number, check: () => Promise<T | undefined>): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  while (Date.now() < deadline) {
    try {
      const value = await check();
      if (value !== undefined) return value;
    } catch (error) {
      lastError = error;
    }
    await delay(100);
  }
  throw new NubisError(
    'UP_FAILED',
    `${what} did not happen within ${timeoutMs / 1000} s${lastError ? ` (${(lastError as Error).message})` : ''}; see the logs in the data folder`,
  );
}

export interface UpResult {
  url: string;
  /** The Nubis CA that clients of an HTTPS API trust (nubis up --tls-self-signed). */
  caPath?: string;
  dataDir: string;
  adminTokenFile: string;
  hosts: string[];
  alreadyRunning: boolean;
  /** The prefix of the namespaces and links of hosts in namespaces. */
  testBed?: string;
}

/** The command line of `nubis daemon control-plane` for these options. */
function controlPlaneArgs(options: UpOptions, bed: TestBed | undefined): string[] {
  const listen = options.host ? ['--listen', options.host] : [];
  const agentListen = bed ? ['--agent-listen', `${UNDERLAY_CONTROL_ADDRESS}:${UNDERLAY_CONTROL_PORT}`] : [];
  return [
    'control-plane',
    '--data',
    options.dataDir,
    '--port',
    String(options.port),
    ...listen,
    ...agentListen,
    ...tlsDaemonArgs(options.tls),
    ...accessDaemonArgs(options.access ?? {}),
  ];
}

/**
 * Starts the storage node and waits for its management socket. It also serves NBD on TCP at
 * `nbdAddress` for hosts that do not share this filesystem: TLS only, each client proving with a
 * certificate of the Nubis CA which VM it is (on the underlay with host namespaces, where their
 * QEMU reaches it, else on loopback). Port 0: the node reports the one it got (`/storage/info`).
 */
async function startStorageDaemon(dataDir: string, nbdAddress: string): Promise<void> {
  const paths = dataPaths(dataDir);
  const tlsDir = await prepareStorageNodeTls(dataDir, [nbdAddress]);
  const pid = await spawnDaemon(dataDir, 'storage', ['storage', '--data', dataDir, '--nbd-tcp', `${nbdAddress}:0`, '--nbd-tls-dir', tlsDir]);
  await waitFor('The storage node listening', 30_000, async () => {
    if (!processAlive(pid)) throw new NubisError('UP_FAILED', `The storage node exited; see ${join(paths.logsDir, 'storage.log')}`);
    return (await socketAccepts(paths.storageManageSocket)) ? true : undefined;
  });
}

/** Starts the backup store (a process apart from the control plane and the hosts) and waits for its socket. */
async function startBackupStoreDaemon(dataDir: string): Promise<void> {
  const paths = dataPaths(dataDir);
  const pid = await spawnDaemon(dataDir, 'backup-store', ['backup-store', '--data', dataDir]);
  await waitFor('The backup store listening', 30_000, async () => {
    if (!processAlive(pid)) throw new NubisError('UP_FAILED', `The backup store exited; see ${join(paths.logsDir, 'backup-store.log')}`);
    return (await socketAccepts(paths.backupStoreSocket)) ? true : undefined;
  });
}

/** Starts whatever of the control plane and the host agents is not running yet. */
export async function up(options: UpOptions, say: (line: string) => void): Promise<UpResult> {
  const paths = dataPaths(options.dataDir);
  await mkdir(options.dataDir, { recursive: true, mode: 0o700 });
  if (!readTinyImage(cacheDir())) {
    say('Building the tiny guest image (first run only)');
    await buildTinyImage({ cacheDir: cacheDir(), onProgress: (message) => say(`  ${message}`) });
  }
  const hostNames = Array.from({ length: options.hosts }, (_, i) => `host-${i + 1}`);
  if (options.netns && process.getuid?.() !== 0) {
    throw new NubisError(
      'UP_NEEDS_ROOT',
      'Hosts in network namespaces (--hosts 2 or more, or --netns) need root; run as root, or use --no-netns for plain agent processes with user-mode networking only',
    );
  }
  // The underlay first: the control plane listens for agents on its address there.
  const bed = options.netns ? await ensureTestBed(options.dataDir, hostNames) : undefined;
  let alreadyRunning = true;
  let controlPid = await readPidFile(join(paths.runDir, 'control-plane.pid'));
  if (!controlPid) {
    alreadyRunning = false;
    await rm(paths.apiInfo, { force: true });
    controlPid = await spawnDaemon(options.dataDir, 'control-plane', controlPlaneArgs(options, bed));
  }
  const { url, caPath } = await waitFor('The control plane answering', 30_000, async () => {
    if (!processAlive(controlPid!)) throw new NubisError('UP_FAILED', `The control plane exited; see ${join(paths.logsDir, 'control-plane.log')}`);
    if (!existsSync(paths.apiInfo)) return undefined;
    const info = JSON.parse(readFileSync(paths.apiInfo, 'utf8')) as { url: string; caPath?: string };
    await new ApiClient(resolveApiTarget(options.dataDir, { ca: options.ca, localAdmin: true })).request('GET', '/v1/status');
    return info;
  });
  // The storage node starts before the agents: VMs they re-adopt may have volumes on it.
  if (!(await readPidFile(join(paths.runDir, 'storage.pid')))) {
    alreadyRunning = false;
    await startStorageDaemon(options.dataDir, bed ? UNDERLAY_CONTROL_ADDRESS : '127.0.0.1');
  }
  if (!(await readPidFile(join(paths.runDir, 'backup-store.pid')))) {
    alreadyRunning = false;
    await startBackupStoreDaemon(options.dataDir);
  }
  // Agents in host namespaces report and heartbeat to the control plane over TCP on the underlay,
  // so cutting a host's link cuts its heartbeats as between separate servers (HA fences it); the
  // control plane still calls agents on their unix sockets. Agents without a namespace use the
  // control plane's unix socket.
  const agentUrl = bed ? `http://${UNDERLAY_CONTROL_ADDRESS}:${UNDERLAY_CONTROL_PORT}` : `unix:${paths.agentApiSocket}`;
  const started: Array<{ name: string; pid: number }> = [];
  for (const [index, name] of hostNames.entries()) {
    if (await readPidFile(join(paths.runDir, `agent-${name}.pid`))) continue;
    alreadyRunning = false;
    const host = bed?.hosts[index];
    const placement = host ? ['--netns', host.netns, '--underlay-ip', host.underlayIp] : [];
    started.push({
      name,
      pid: await spawnDaemon(
        options.dataDir,
        `agent-${name}`,
        ['agent', '--name', name, '--data', options.dataDir, '--control-url', agentUrl, ...placement],
        host?.netns,
      ),
    });
  }
  if (bed) await startWatchdogs(options.dataDir, bed);
  // A restarted agent's host still looks online from its last report, so wait for the new agent
  // itself: it listens on its socket before it joins.
  for (const agent of started) {
    await waitFor(`The agent of ${agent.name} listening`, 90_000, async () => {
      if (!processAlive(agent.pid))
        throw new NubisError('UP_FAILED', `The agent of ${agent.name} exited; see ${join(paths.logsDir, `agent-${agent.name}.log`)}`);
      return (await socketAccepts(join(paths.hostsDir, agent.name, 'agent.sock'))) ? true : undefined;
    });
  }
  const client = new ApiClient(resolveApiTarget(options.dataDir, { ca: options.ca, localAdmin: true }));
  // The first agent start probes the accelerator (up to ~20 s where KVM does not work).
  await waitFor('Every host agent joining', 90_000, async () => {
    const hosts = await client.request<Array<{ name: string; status: string }>>('GET', '/v1/hosts');
    return hostNames.every((name) => hosts.some((host) => host.name === name && host.status === 'online')) ? true : undefined;
  });
  return {
    url,
    ...(caPath ? { caPath } : {}),
    dataDir: options.dataDir,
    adminTokenFile: paths.adminToken,
    hosts: hostNames,
    alreadyRunning,
    ...(bed ? { testBed: bed.prefix } : {}),
  };
}

export interface DownResult {
  stoppedVms: string[];
  stoppedProcesses: string[];
}

/**
 * Stops the VMs (unless `keepVms`), then the agents and the control plane. VMs are stopped
 * through the API, cleanly; any QEMU left without an agent is stopped directly afterwards.
 */
export async function down(options: { dataDir: string; keepVms: boolean; ca?: string }, say: (line: string) => void): Promise<DownResult> {
  const paths = dataPaths(options.dataDir);
  const stoppedVms: string[] = [];
  if (!options.keepVms) {
    try {
      const client = new ApiClient(resolveApiTarget(options.dataDir, { ca: options.ca, localAdmin: true }));
      // Every VM, a page of the API at a time.
      const vms: Vm[] = [];
      for (;;) {
        const marker = vms.length > 0 ? `&marker=${vms[vms.length - 1].id}` : '';
        const page = await client.request<Vm[]>('GET', `/v1/vms?limit=1000${marker}`);
        vms.push(...page);
        if (page.length < 1000) break;
      }
      const running = vms.filter((vm) => ['running', 'paused', 'starting'].includes(vm.state));
      if (running.length > 0) say(`Stopping ${running.length} VM(s): ${running.map((vm) => vm.name).join(', ')}`);
      await Promise.all(
        running.map(async (vm) => {
          const { operation } = await client.request<{ operation: Operation }>('POST', `/v1/vms/${vm.id}/stop`, { timeoutSeconds: 20 });
          await client.follow(operation.id, () => {});
          stoppedVms.push(vm.name);
        }),
      );
    } catch (error) {
      say(`Could not stop VMs through the API (${(error as Error).message}); stopping them directly`);
    }
  }
  const stoppedProcesses: string[] = [];
  if (existsSync(paths.runDir)) {
    // Watchdogs first (an agent stopping must not make them kill VMs that are kept), then
    // agents, so none reports to a control plane that is going away; the storage node last,
    // since VMs (stopped by now unless kept) read their volumes from it.
    const rank = ['watchdog', 'agent', 'control'];
    const order = (file: string): number => {
      const found = rank.findIndex((prefix) => file.startsWith(prefix));
      return found === -1 ? rank.length : found;
    };
    const pidFiles = readdirSync(paths.runDir)
      .filter((f) => f.endsWith('.pid'))
      .sort((a, b) => order(a) - order(b));
    for (const file of pidFiles) {
      // VMs kept running still read their volumes from the storage node: it stays too.
      if (options.keepVms && file === 'storage.pid') continue;
      const pid = await readPidFile(join(paths.runDir, file));
      if (pid) {
        process.kill(pid, 'SIGTERM');
        await waitFor(`${file.replace('.pid', '')} exiting`, 30_000, async () => (processAlive(pid) ? undefined : true)).catch(() =>
          process.kill(pid, 'SIGKILL'),
        );
        stoppedProcesses.push(file.replace('.pid', ''));
      }
      await rm(join(paths.runDir, file), { force: true });
    }
  }
  if (!options.keepVms) {
    const orphans = await stopOrphanedVms(paths.hostsDir);
    if (orphans.length > 0) say(`Stopped ${orphans.length} QEMU process(es) that had no agent`);
    // DHCP servers first, by their files: one whose namespace went missing runs on all the same.
    const dhcpServers = await stopDhcpServersUnder(join(DHCP_STATE_ROOT, testBedPrefix(options.dataDir)));
    if (dhcpServers.length > 0) say(`Stopped ${dhcpServers.length} DHCP server(s)`);
    // Namespaces, links and bridges of hosts in namespaces: also those a crashed run left.
    const removed = await cleanupByPrefix(testBedPrefix(options.dataDir));
    if (removed.namespaces.length + removed.links.length > 0) say(`Removed ${removed.namespaces.length} namespace(s) and ${removed.links.length} link(s)`);
    await rm(join(paths.runDir, 'testbed.json'), { force: true });
    for (const entry of existsSync(DHCP_STATE_ROOT) ? readdirSync(DHCP_STATE_ROOT) : []) {
      if (entry.startsWith(testBedPrefix(options.dataDir))) await rm(join(DHCP_STATE_ROOT, entry), { recursive: true, force: true });
    }
  }
  await rm(paths.apiInfo, { force: true });
  return { stoppedVms, stoppedProcesses };
}
