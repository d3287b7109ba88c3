/**
 * Prints a bench/scale run as the Markdown that RESULTS.md keeps: the machine and the load around
 * the run, the processes, the figures against the issue's goals, and every phase's CPU per process.
 */
import type { SimAnswer } from './sim-agents.ts';
import type { measureCreates, measureLists, measureReportPhase, PhaseUsage } from './phases.ts';
import type { measureSchedulerCore } from './scheduler-core.ts';

/** The bench's options (scale.bench.ts). */
export interface BenchOptions {
  hosts: number;
  vms: number;
  createSeconds: number;
  createConnections: number;
  listSeconds: number;
  listConnections: number;
  heartbeatSeconds: number;
  reportSeconds: number;
  decisions: number;
}

/** Everything a run measured. */
export interface RunFigures {
  options: BenchOptions;
  /** The hosts had underlay addresses (heartbeat answers name every other host). */
  underlay: boolean;
  machine: string;
  startedAt: Date;
  commit: string;
  loadBefore: string;
  loadAfter: string;
  pids: { control: number; sim: number; bench: number };
  core: ReturnType<typeof measureSchedulerCore>;
  joined: Extract<SimAnswer, { type: 'joined' }>;
  joinUsage: PhaseUsage;
  seed: { created: number; seconds: number; cpuSeconds: number } | undefined;
  seedUsage: PhaseUsage;
  settleUsage: PhaseUsage;
  /** Hosts the control plane showed online once settled (all of them, unless it could not keep up). */
  onlineAfterSettle: number;
  simVms: number;
  finalVms: number;
  heartbeats: Awaited<ReturnType<typeof measureReportPhase>>;
  reports: Awaited<ReturnType<typeof measureReportPhase>>;
  creates: Awaited<ReturnType<typeof measureCreates>>;
  lists: Awaited<ReturnType<typeof measureLists>>;
}

const GOALS = { placementsPerSecond: 10_000, createsPerSecond: 500, p99Ms: 100 };
const MIB = 2 ** 20;

const fixed = (value: number, digits = 1) => (Number.isFinite(value) ? value.toFixed(digits) : String(value));
const whole = (value: number) => (Number.isFinite(value) ? Math.round(value).toLocaleString('en-US') : String(value));
const verdict = (met: boolean) => (met ? 'met' : 'MISSED');

function goalRows(f: RunFigures): string[] {
  const { core, creates, lists, heartbeats } = f;
  const perHeartbeat = heartbeats.between.dbRowsChanged / heartbeats.between.heartbeatsAnswered;
  const heartbeatsPerSecond = heartbeats.sim.heartbeats.count / heartbeats.usage.wallSeconds;
  return [
    '| figure | measured | goal | |',
    '| --- | --- | --- | --- |',
    `| scheduler core, \`explainPlacement\` (what a create runs), decisions/s at ${f.options.hosts} hosts | ${whole(core.explainPlacement.perSecond)} | ${whole(GOALS.placementsPerSecond)} | ${verdict(core.explainPlacement.perSecond >= GOALS.placementsPerSecond)} |`,
    `| scheduler core, \`pickHost\`, decisions/s at ${f.options.hosts} hosts | ${whole(core.pickHost.perSecond)} | ${whole(GOALS.placementsPerSecond)} | ${verdict(core.pickHost.perSecond >= GOALS.placementsPerSecond)} |`,
    `| creates/s through the API, create operation succeeded (${f.options.createConnections} connections) | ${fixed(creates.createsPerSecond)} | ${GOALS.createsPerSecond} | ${verdict(creates.createsPerSecond >= GOALS.createsPerSecond)} |`,
    `| p99 of POST /v1/vms (202 with the operation) | ${fixed(creates.postP99Ms)} ms | < ${GOALS.p99Ms} ms | ${verdict(creates.postP99Ms < GOALS.p99Ms)} |`,
    `| p99 of GET ${lists.vms.path}, the default page (${f.options.listConnections} connections) | ${fixed(lists.vms.p99Ms)} ms | < ${GOALS.p99Ms} ms | ${verdict(lists.vms.p99Ms < GOALS.p99Ms)} |`,
    ...(lists.vmsFullPages
      ? [
          `| p99 of GET ${lists.vmsFullPages.path}, the largest page (${f.options.listConnections} connections) | ${fixed(lists.vmsFullPages.p99Ms)} ms | < ${GOALS.p99Ms} ms | ${verdict(lists.vmsFullPages.p99Ms < GOALS.p99Ms)} |`,
        ]
      : []),
    `| heartbeats answered/s, ${f.options.hosts} hosts, nothing else (p99 at the hosts) | ${fixed(heartbeatsPerSecond)} (p99 ${fixed(heartbeats.sim.heartbeats.p99Ms)} ms) | ${f.options.hosts} | ${verdict(heartbeatsPerSecond >= 0.95 * f.options.hosts && heartbeats.sim.heartbeats.errors === 0)} |`,
    `| database rows changed per heartbeat | ${fixed(perHeartbeat, 3)} (${whole(heartbeats.between.dbRowsChanged)} rows for ${whole(heartbeats.between.heartbeatsAnswered)} heartbeats) | < 1 (not each) | ${verdict(perHeartbeat < 1)} |`,
    `| control plane resident memory at ${whole(creates.vmsAfter)} VMs | ${fixed(lists.metrics.residentBytes / MIB, 0)} MiB (heap used ${fixed(lists.metrics.heapUsedBytes / MIB, 0)} MiB) | (reported) | |`,
  ];
}

function cpuRows(f: RunFigures): string[] {
  const phases = [f.joinUsage, ...(f.seed ? [f.seedUsage] : []), f.settleUsage, f.heartbeats.usage, f.reports.usage, f.creates.usage, f.lists.usage];
  const cell = (seconds: number, wall: number) => (Number.isFinite(seconds) ? `${fixed(seconds)} (${fixed((100 * seconds) / wall, 0)}%)` : 'stopped');
  return [
    '| phase | wall s | control plane CPU s (% of one core) | simulated agents CPU s | bench (load generator) CPU s | seed CPU s | all, % of the 2 cores |',
    '| --- | --- | --- | --- | --- | --- | --- |',
    ...phases.map((p) => {
      const total = [p.cpu.control, p.cpu.sim, p.cpu.bench, p.cpu.seed ?? 0].filter(Number.isFinite).reduce((sum, cpu) => sum + cpu, 0);
      return `| ${p.phase} | ${fixed(p.wallSeconds)} | ${cell(p.cpu.control, p.wallSeconds)} | ${cell(p.cpu.sim, p.wallSeconds)} | ${cell(p.cpu.bench, p.wallSeconds)} | ${p.cpu.seed === undefined ? '-' : cell(p.cpu.seed, p.wallSeconds)} | ${fixed((100 * total) / (2 * p.wallSeconds), 0)}% |`;
    }),
  ];
}

function reportPhaseLines(name: string, phase: RunFigures['heartbeats']): string[] {
  const s = phase.usage.wallSeconds;
  const { heartbeats, fullReports, changeReports } = phase.sim;
  const { between } = phase;
  return [
    `- ${name} (${fixed(s)} s): the hosts had ${whole(heartbeats.count)} heartbeats answered (${fixed(heartbeats.count / s)}/s) and ${whole(fullReports.count)} full reports (${fixed(fullReports.count / s)}/s); the control plane's CPU ${fixed(phase.usage.cpu.control)} s (${fixed((100 * phase.usage.cpu.control) / s, 0)}% of a core). Between the scrapes around the window it answered ${whole(between.heartbeatsAnswered)} heartbeats and ${whole(between.reportsAnswered)} reports and changed ${whole(between.dbRowsChanged)} database rows (${fixed(between.dbRowsChanged / Math.max(1, between.heartbeatsAnswered + between.reportsAnswered), 3)} per request).`,
    `  Heartbeat latency at the hosts: p50 ${fixed(heartbeats.p50Ms, 2)} ms, p99 ${fixed(heartbeats.p99Ms, 2)} ms, max ${fixed(heartbeats.maxMs, 1)} ms, ${heartbeats.errors} errors${heartbeats.lastError ? ` (${heartbeats.lastError})` : ''}.`,
    `  Full reports: p50 ${fixed(fullReports.p50Ms, 2)} ms, p99 ${fixed(fullReports.p99Ms, 2)} ms, ${fullReports.errors} errors${fullReports.lastError ? ` (${fullReports.lastError})` : ''}; change reports: ${changeReports.count}.`,
  ];
}

export function printResults(f: RunFigures): void {
  const o = f.options;
  const { creates, lists } = f;
  const lines = [
    `### ${f.startedAt.toISOString().slice(0, 10)}: ${whole(o.hosts)} hosts, ${whole(f.finalVms)} VMs`,
    '',
    `\`npx tsx bench/scale/scale.bench.ts --hosts ${o.hosts} --vms ${o.vms} --create-seconds ${o.createSeconds} --create-connections ${o.createConnections} --list-seconds ${o.listSeconds} --list-connections ${o.listConnections} --heartbeat-seconds ${o.heartbeatSeconds} --report-seconds ${o.reportSeconds} --decisions ${o.decisions}${f.underlay ? ' --underlay' : ''}\``,
    '',
    `- Machine: ${f.machine}`,
    `- Date: ${f.startedAt.toISOString()}; commit ${f.commit}`,
    `- Load average (1, 5, 15 min): before ${f.loadBefore}; after ${f.loadAfter}`,
    `- Processes, all on this machine: control plane pid ${f.pids.control} (\`node bin/nubis.mjs daemon control-plane\`, SQLite file and API on 127.0.0.1 in a temporary folder); simulated agents pid ${f.pids.sim} (${o.hosts} hosts, one unix socket each, ${f.underlay ? 'each with an underlay address, so every heartbeat answer names the other hosts as watchdog peers' : 'no underlay addresses, so heartbeat answers name no watchdog peers'}); bench pid ${f.pids.bench} (scheduler core, autocannon); seed.ts for set-up only.`,
    '',
    ...goalRows(f),
    '',
    ...cpuRows(f),
    '',
    `- Scheduler core: pickHost ${whole(f.core.pickHost.decisions)} decisions in ${fixed(f.core.pickHost.seconds, 2)} s (${whole(f.core.pickHost.placed)} placed); explainPlacement ${whole(f.core.explainPlacement.decisions)} in ${fixed(f.core.explainPlacement.seconds, 2)} s (${whole(f.core.explainPlacement.placed)} placed); alone, before any other process started.`,
    `- Join: ${o.hosts} hosts through POST /v1/hosts/join, 16 at a time, in ${fixed(f.joined.seconds, 2)} s (${fixed(o.hosts / f.joined.seconds)}/s; p50 ${fixed(f.joined.join.p50Ms, 1)} ms, p99 ${fixed(f.joined.join.p99Ms, 1)} ms).`,
    f.seed
      ? `- Seed: ${whole(f.seed.created)} VMs through the service code (seed.ts) in ${fixed(f.seed.seconds)} s (${fixed(f.seed.created / f.seed.seconds)}/s, synchronous = OFF, no HTTP); the simulated hosts then held ${whole(f.simVms)} VMs.`
      : '- Seed: none.',
    `- Settle: once the restarted control plane had heard every host, it showed ${whole(f.onlineAfterSettle)} of ${whole(o.hosts)} hosts online.`,
    ...reportPhaseLines('Heartbeats only', f.heartbeats),
    ...reportPhaseLines('Heartbeats and reports', f.reports),
    `- Creates: ${whole(creates.accepted)} POSTs accepted (the control plane's count) in ${fixed(creates.loadSeconds)} s (${fixed(creates.acceptedPerSecond)}/s, p50 ${fixed(creates.postP50Ms, 1)} ms, p99 ${fixed(creates.postP99Ms, 1)} ms); the last operation ended ${fixed(creates.drainSeconds, 1)} s after the load; ${whole(creates.succeeded)} VMs created (${fixed(creates.createsPerSecond)}/s over ${fixed(creates.loadSeconds + creates.drainSeconds)} s); failed among the last 500: ${creates.failedInLast500}; operation time (accepted to succeeded) of the last ${creates.operationsSampled}: p50 ${fixed(creates.operationP50Ms, 0)} ms, p99 ${fixed(creates.operationP99Ms, 0)} ms; ${whole(creates.dbRowsChanged)} database rows changed (${fixed(creates.dbRowsChanged / Math.max(1, creates.succeeded), 1)} per VM) in ${whole(creates.dbCommits)} commits (${fixed(creates.dbCommits / Math.max(1, creates.succeeded), 2)} per VM; each waits for the disk).`,
    ...(lists.vms.aloneOnly
      ? [
          `- ${lists.vms.path} answered nothing within the ${o.listSeconds} s run at ${o.listConnections} connections; one request alone took ${fixed(lists.vms.p50Ms, 0)} ms (its figures below are that one request).`,
        ]
      : []),
    `- Lists: ${lists.vms.path}: ${fixed(lists.vms.requestsPerSecond)}/s, p50 ${fixed(lists.vms.p50Ms, 1)} ms, p99 ${fixed(lists.vms.p99Ms, 1)} ms, ${fixed(lists.vms.bytesPerAnswer / 1024, 0)} KiB an answer; ${lists.vmsFullPages ? `${lists.vmsFullPages.path}: ${fixed(lists.vmsFullPages.requestsPerSecond)}/s, p50 ${fixed(lists.vmsFullPages.p50Ms, 1)} ms, p99 ${fixed(lists.vmsFullPages.p99Ms, 1)} ms, ${fixed(lists.vmsFullPages.bytesPerAnswer / 1024, 0)} KiB an answer` : 'no pages (the API answers every VM at once)'}; GET /v1/hosts: ${fixed(lists.hosts.requestsPerSecond)}/s, p50 ${fixed(lists.hosts.p50Ms, 1)} ms, p99 ${fixed(lists.hosts.p99Ms, 1)} ms, ${fixed(lists.hosts.bytesPerAnswer / 1024, 0)} KiB; every VM of the project, page after page: ${whole(lists.walk.items)} in ${lists.walk.pages} answers, ${fixed(lists.walk.seconds, 2)} s.`,
    `- Control plane at the end: resident ${fixed(lists.metrics.residentBytes / MIB, 0)} MiB, heap used ${fixed(lists.metrics.heapUsedBytes / MIB, 0)} MiB; one GET /metrics took ${fixed(lists.metrics.scrapeMs, 0)} ms for ${fixed(lists.metrics.scrapeBytes / MIB, 1)} MiB of text.`,
  ];
  console.log(lines.join('\n'));
}
