/**
 * The 1,000-host scale benchmark: a simulated cluster driving the real control plane, API and
 * database. Processes, all on this machine:
 * - the control plane, the real one (`node bin/nubis.mjs --data DIR daemon control-plane`), its
 *   SQLite file and API on 127.0.0.1 in a temporary folder;
 * - the simulated agents (sim-agents.ts): `--hosts` hosts, each with the agent API of the contract
 *   table on its own unix socket, joining through the real join route, heartbeating every second
 *   and reporting every 10 s as the real agent does, VMs in memory (no QEMU);
 * - this process: the scheduler-core measurement and the load generator (autocannon);
 * - for set-up, seed.ts: `--vms` VM records made through the control plane's own service code
 *   while the control plane is stopped (see seed.ts for what differs from API creates).
 *
 *   npx tsx bench/scale/scale.bench.ts [--hosts 1000] [--vms 100000] [--create-seconds 30]
 *     [--create-connections 16] [--list-seconds 20] [--list-connections 4] [--heartbeat-seconds 30]
 *     [--report-seconds 30] [--decisions 20000] [--underlay]
 *
 * Phases, in order: the scheduler core alone (before anything else runs); join; seed; settle (the
 * restarted control plane hears every host's full report); heartbeats only; heartbeats and full
 * reports; creates through the API; lists through the API. Each phase's CPU seconds per process
 * come from /proc/PID/stat; the control plane's memory, its database row changes and its request
 * counts from its GET /metrics. Everything it makes (folders, sockets, processes) is removed at the
 * end, also on failure and Ctrl-C.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, tmpdir, totalmem } from 'node:os';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import { api } from './cluster-api.ts';
import { type ControlPlaneProcess, cleanUp, onCleanUp, runSeed, startControlPlane, startSimAgents } from './processes.ts';
import { measureSchedulerCore } from './scheduler-core.ts';
import { measureCreates, measureLists, measureReportPhase, type PhaseUsage, type Processes, usageBetween, usageNow } from './phases.ts';
import { type BenchOptions, printResults } from './report.ts';

const { values: args } = parseArgs({
  options: {
    hosts: { type: 'string', default: '1000' },
    vms: { type: 'string', default: '100000' },
    'create-seconds': { type: 'string', default: '30' },
    'create-connections': { type: 'string', default: '16' },
    'list-seconds': { type: 'string', default: '20' },
    'list-connections': { type: 'string', default: '4' },
    'heartbeat-seconds': { type: 'string', default: '30' },
    'report-seconds': { type: 'string', default: '30' },
    decisions: { type: 'string', default: '20000' },
    underlay: { type: 'boolean', default: false },
  },
});
const options: BenchOptions = {
  hosts: Number(args.hosts),
  vms: Number(args.vms),
  createSeconds: Number(args['create-seconds']),
  createConnections: Number(args['create-connections']),
  listSeconds: Number(args['list-seconds']),
  listConnections: Number(args['list-connections']),
  heartbeatSeconds: Number(args['heartbeat-seconds']),
  reportSeconds: Number(args['report-seconds']),
  decisions: Number(args.decisions),
};
/** Hosts with underlay addresses: each heartbeat answer then names every other host (its watchdog's peers). */
const underlay = args.underlay === true;
for (const [name, value] of Object.entries(options))
  if (!Number.isInteger(value) || value < (name === 'vms' ? 0 : 1)) throw new Error(`Option ${name} is ${value}: give a whole number`);

/** Every host's full report is heard within this after the control plane starts (10 s cycle, and a margin). */
const SETTLE_SECONDS = 15;
/** The processes' logs, shown when the run fails. */
const logFiles: string[] = [];
const PROJECT = 'scale';

// `on`, not `once`: tsx relays Ctrl-C to this process a second time, and a SIGINT without a
// listener of ours would end the process in the middle of the clean-up.
process.on('SIGINT', () => void cleanUp().finally(() => process.exit(130)));

function gitCommit(): string {
  try {
    const commit = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { encoding: 'utf8' }).trim();
    const dirty = execFileSync('git', ['status', '--porcelain', '--untracked-files=no'], { encoding: 'utf8' }).trim() !== '';
    return dirty ? `${commit} (with uncommitted changes)` : commit;
  } catch {
    return 'unknown';
  }
}

const loads = () =>
  loadavg()
    .map((load) => load.toFixed(2))
    .join(', ');

/** A folder for everything of this run; the built-in image's files are stand-ins (nothing boots). */
function makeRunFolder() {
  const root = mkdtempSync(join(tmpdir(), `nubis-scale-${process.pid}-`));
  onCleanUp(() => rmSync(root, { recursive: true, force: true }));
  const dirs = { root, data: join(root, 'data'), cache: join(root, 'cache'), sockets: join(root, 's'), logs: join(root, 'logs') };
  for (const dir of Object.values(dirs)) mkdirSync(dir, { recursive: true, mode: 0o700 });
  const image = join(dirs.cache, 'images', 'tiny');
  mkdirSync(image, { recursive: true });
  writeFileSync(join(image, 'vmlinuz'), 'stand-in kernel');
  writeFileSync(join(image, 'initrd.img'), 'stand-in initrd');
  const manifest = {
    name: 'tiny',
    kernelPath: join(image, 'vmlinuz'),
    initrdPath: join(image, 'initrd.img'),
    kernelVersion: 'bench',
    sha256: '0'.repeat(64),
    builtAt: new Date().toISOString(),
  };
  writeFileSync(join(image, 'manifest.json'), JSON.stringify(manifest));
  return dirs;
}

/**
 * Waits until the control plane lists `count` hosts, all online, and resolves with how many are.
 * Past `timeoutMs` a `strict` wait fails; another resolves with what it saw (a control plane that
 * cannot keep up with the heartbeats shows hosts suspect, and the run goes on to measure it).
 */
async function waitOnline(control: ControlPlaneProcess, count: number, options: { strict: boolean; timeoutMs: number }): Promise<number> {
  const deadline = Date.now() + options.timeoutMs;
  for (;;) {
    const { body: hosts } = await api<Array<{ status: string }>>({ url: control.url, token: control.adminToken }, 'GET', '/v1/hosts');
    const online = hosts.filter((host) => host.status === 'online').length;
    if (hosts.length === count && online === count) return online;
    if (Date.now() > deadline) {
      if (options.strict) throw new Error(`${online} of ${count} hosts online after ${options.timeoutMs / 1000} s`);
      return online;
    }
    await delay(1_000);
  }
}

async function run(): Promise<void> {
  const loadBefore = loads();
  const startedAt = new Date();
  const core = measureSchedulerCore(options.hosts, options.decisions);
  const dirs = makeRunFolder();
  const logs = { control: join(dirs.logs, 'control-plane.log'), sim: join(dirs.logs, 'sim-agents.log'), seed: join(dirs.logs, 'seed.log') };
  logFiles.push(...Object.values(logs));
  let control = await startControlPlane({ dataDir: dirs.data, cacheDir: dirs.cache, logFile: logs.control });
  await api({ url: control.url, token: control.adminToken }, 'POST', '/v1/projects', { name: PROJECT });
  const sim = startSimAgents({
    hosts: options.hosts,
    socketDir: dirs.sockets,
    agentUrl: control.agentUrl,
    joinToken: control.joinToken,
    logFile: logs.sim,
    underlay,
  });
  let controlRunning = true;
  const processes: Processes = { control: () => (controlRunning ? control.pid : undefined), sim: sim.pid };
  await sim.ask({ type: 'start' }, 'started');
  await sim.ask({ type: 'set', heartbeats: true, reports: true }, 'set');
  const joinStart = usageNow(processes);
  const joined = await sim.ask({ type: 'join' }, 'joined');
  await waitOnline(control, options.hosts, { strict: true, timeoutMs: 120_000 });
  const joinUsage: PhaseUsage = usageBetween('join', joinStart, usageNow(processes));

  // Seeding: the control plane is stopped and the hosts keep quiet meanwhile.
  await sim.ask({ type: 'set', heartbeats: false, reports: false }, 'set');
  await control.stop();
  controlRunning = false;
  const seedStart = usageNow(processes);
  const seed = options.vms > 0 ? await runSeed({ dataDir: dirs.data, vms: options.vms, project: PROJECT, logFile: logs.seed }) : undefined;
  const seedUsage = usageBetween('seed (control plane stopped)', seedStart, usageNow(processes));
  if (seed) seedUsage.cpu.seed = seed.cpuSeconds;
  control = await startControlPlane({ dataDir: dirs.data, cacheDir: dirs.cache, logFile: logs.control });
  controlRunning = true;
  const target = { url: control.url, token: control.adminToken };
  await sim.ask({ type: 'set', heartbeats: true, reports: true }, 'set');
  const settleStart = usageNow(processes);
  await delay(SETTLE_SECONDS * 1000);
  const onlineAfterSettle = await waitOnline(control, options.hosts, { strict: false, timeoutMs: 60_000 });
  const settleUsage = usageBetween('settle', settleStart, usageNow(processes));
  const simVms = (await sim.ask({ type: 'stats' }, 'stats')).vms;

  const heartbeats = await measureReportPhase({ name: 'heartbeats', target, sim, processes, seconds: options.heartbeatSeconds, reports: false });
  const reports = await measureReportPhase({ name: 'reports', target, sim, processes, seconds: options.reportSeconds, reports: true });
  const creates = await measureCreates({ target, processes, project: PROJECT, seconds: options.createSeconds, connections: options.createConnections });
  const lists = await measureLists({ target, processes, project: PROJECT, seconds: options.listSeconds, connections: options.listConnections });
  const finalVms = (await sim.ask({ type: 'stats' }, 'stats')).vms;
  const loadAfter = loads();
  const cpuList = cpus();
  printResults({
    options,
    underlay,
    machine: `${cpuList[0]?.model ?? 'unknown CPU'} x ${cpuList.length}, ${(totalmem() / 2 ** 30).toFixed(1)} GiB, Node ${process.version}`,
    startedAt,
    commit: gitCommit(),
    loadBefore,
    loadAfter,
    pids: { control: control.pid, sim: sim.pid, bench: process.pid },
    core,
    joined,
    joinUsage,
    seed,
    seedUsage,
    settleUsage,
    onlineAfterSettle,
    simVms,
    finalVms,
    heartbeats,
    reports,
    creates,
    lists,
  });
}

try {
  await run();
} catch (error) {
  // The folder goes with the clean-up: what the processes logged is shown first.
  for (const file of logFiles) {
    const text = existsSync(file) ? readFileSync(file, 'utf8').trim() : '';
    if (text) console.error(`--- last lines of ${file}\n${text.split('\n').slice(-30).join('\n')}`);
  }
  throw error;
} finally {
  await cleanUp();
}
