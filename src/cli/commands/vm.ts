/** `nubis vm`: create, run, inspect, migrate and reach virtual machines. */
import { addCpuControlOptions, type CpuControlOptions, cpuControlsOf, describeCpuControls } from './vm-cpu-options.ts';
import { addDiskLimitOptions, describeDiskLimits, diskLimitsOf, givesDiskLimits } from './vm-disk-limit-options.ts';
import { addNicBandwidthOptions, describeNicBandwidth, nicBandwidthOf } from './vm-nic-bandwidth-options.ts';
import { addMemoryOptions, describeMemory, type MemoryOptions, memoryOf } from './vm-memory-options.ts';
import { addVcpuOptions, describeVcpus, type VcpuOptions, vcpuLayoutOf } from './vm-vcpu-options.ts';
import { addAttestCommand, addPlatformOptions, describePlatform, type PlatformOptions, platformOf } from './vm-trusted-launch.ts';
import type { Static } from '@sinclair/typebox';
import type { Command } from 'commander';
import WebSocket from 'ws';
import { NubisError } from '../../core/errors.ts';
import type { Accepted, PublishedPort, Vm, VmBalancePolicy } from '../../wire/schemas.ts';
import { client, collect, globals, parseInteger, projectQuery, runOperation } from '../common.ts';
import { formatDuration, printJson, printTable } from '../output.ts';
import { readCaFile } from '../api-fetch.ts';
import type { PlacementDecision, PlacementHistory } from '../../wire/placement-schemas.ts';
import { printDecision } from './placement.ts';
import { addUsageCommand } from './usage.ts';
import { startVncProxy } from '../vnc-proxy.ts';
import { formatSize } from '../../storage/size.ts';
import { addSnapshotCommands } from './vm-snapshot.ts';

/** The HA, start-on-boot and balancing options of vm create and vm set. */
interface VmPolicyOptions extends CpuControlOptions, MemoryOptions {
  balance?: VmBalancePolicy;
  ha?: boolean;
  haPriority?: number;
  haGroup?: string;
  autostart?: boolean;
  bootOrder?: number;
  bootDelay?: number;
}

interface VmCreateOptions extends VmPolicyOptions, PlatformOptions, VcpuOptions {
  image: string;
  cpus: number;
  memory: number;
  host?: string;
  publish?: Array<Static<typeof PublishedPort>>;
  network: string[];
  ip: string[];
  secgroup: string[];
  disk: string[];
  group?: string;
  dryRun?: boolean;
  wait: boolean;
  postcopy: boolean;
}

interface VmMigrateOptions {
  to?: string;
  strategy: string;
  maxDowntime?: number;
  bandwidth?: number;
  timeout?: number;
  onTimeout?: string;
  tls?: boolean;
}

/**
 * The figures of a migration that the CLI prints. The API sends every figure the migration
 * service records (MigrationFigures in src/migration/migration-service.ts) as an open object.
 */
interface MigrationFigures {
  memoryMb: number;
  totalTimeMs?: number;
  downtimeMs?: number;
  pausedMs?: number;
  transferredBytes?: number;
  switchedToPostcopy: boolean;
  prediction?: { predictedTotalMs?: number };
  predictionErrorPercent?: number;
}

/** A past migration as `GET /v1/vms/{vm}/migrations` lists it. */
interface MigrationRecord {
  startedAt: string;
  from: string;
  to: string;
  strategy: string;
  status: string;
  figures: MigrationFigures;
}

/** Registers `vm` and its subcommands on the program. */
export function registerVmCommands(program: Command): void {
  const vm = program.command('vm').description('Virtual machines').option('--project <name>', 'project (default: default)');
  addCreate(vm);
  addListAndShow(vm);
  addPowerActions(vm);
  addDeleteAttachDetachSet(vm);
  addMigrate(vm);
  addSnapshotCommands(vm);
  addLogAndConsole(vm);
  addUsageCommand(vm, 'vm');
  addAttestCommand(vm);
}

function addCreate(vm: Command): void {
  const create = vm
    .command('create <name>')
    .description('Create and boot a VM')
    .requiredOption('--image <image>', 'image to boot (nubis image list)')
    .option('--cpus <n>', 'virtual CPUs present at its start (up to --max-cpus)', parseInteger('--cpus'), 1)
    .option('--memory <mib>', 'memory in MiB', parseInteger('--memory'), 256)
    .option('--host <host>', 'pin the VM to this host')
    .option('--publish <host:guest>', 'forward a host port to a guest port (repeatable)', parsePublish)
    .option('--network <name>', 'a NIC on this virtual network (repeatable: eth0, eth1, ...)', collect, [])
    .option('--ip <address>', 'address for the NIC of the --network in the same position (repeatable)', collect, [])
    .option('--secgroup <group>', 'security group of its network NICs (repeatable)', collect, [])
    .option('--disk <pool/volume>', 'attach a volume of the storage node as a virtio disk (repeatable: vda, vdb, ...)', collect, [])
    .option('--group <group>', 'placement group to join (nubis placement-group list)')
    .option('--dry-run', 'check everything and show where the VM would go and why; create nothing')
    .option('--ha', 'restart it on another host when its host fails (disks on storage-node volumes, or none)')
    .option('--ha-priority <n>', 'higher restarts first when a host fails', parseInteger('--ha-priority'))
    .option('--ha-group <group>', 'HA group whose hosts it prefers (nubis ha group list)')
    .option('--autostart', 'start it when its host comes back after a reboot')
    .option('--boot-order <n>', 'lower starts first at autostart', parseInteger('--boot-order'))
    .option('--boot-delay <seconds>', 'wait this long before the next VM starts at autostart', parseInteger('--boot-delay'))
    .option('--balance <auto|manual|never>', 'which balancing runs may move it (default auto; manual: only runs a person starts)', balancePolicy)
    .option('--no-wait', 'return once QEMU runs, without waiting for the guest to be ready')
    .option('--no-postcopy', 'live migration must not use post-copy (it throttles the guest instead)');
  addPlatformOptions(addMemoryOptions(addCpuControlOptions(addVcpuOptions(create, false), false), false)).action(createVm);
}

async function createVm(name: string, options: VmCreateOptions, command: Command): Promise<void> {
  const g = globals(command);
  if (options.ip.length > options.network.length)
    throw new NubisError('VALIDATION_FAILED', `Got ${options.ip.length} --ip for ${options.network.length} --network; give one --network per --ip`);
  const networks = options.network.map((network, index) => ({ network, ...(options.ip[index] ? { ip: options.ip[index] } : {}) }));
  const body = {
    name,
    image: options.image,
    cpus: options.cpus,
    ...vcpuLayoutOf(options),
    memoryMb: options.memory,
    waitReady: options.wait,
    ...(options.host ? { host: options.host } : {}),
    ...(options.publish ? { publish: options.publish } : {}),
    ...(networks.length ? { networks } : {}),
    ...(options.secgroup.length ? { secgroups: options.secgroup } : {}),
    ...(options.disk.length ? { disks: options.disk } : {}),
    ...(options.group ? { group: options.group } : {}),
    ...policiesOf(options),
    ...(options.postcopy ? {} : { allowPostcopy: false }),
    ...platformOf(options),
    ...(g.project ? { project: g.project } : {}),
  };
  if (options.dryRun) {
    const decision = await client(command).request<Static<typeof PlacementDecision>>('POST', '/v1/vms/plan', body);
    return g.json ? printJson(decision) : printDecision(decision);
  }
  const { operation } = await client(command).request<Static<typeof Accepted>>('POST', '/v1/vms', body);
  const final = await runOperation(command, `Creating ${name}`, operation);
  if (g.json) printJson(final.result);
  else printVm(final.result as Vm);
}

/** The HA, autostart and balancing fields of a create or set, from their options. */
function policiesOf(options: VmPolicyOptions): Record<string, unknown> {
  return {
    ...(options.ha !== undefined ? { ha: options.ha } : {}),
    ...(options.haPriority !== undefined ? { haPriority: options.haPriority } : {}),
    ...(options.haGroup !== undefined ? { haGroup: options.haGroup } : {}),
    ...(options.autostart !== undefined ? { autostart: options.autostart } : {}),
    ...(options.bootOrder !== undefined ? { bootOrder: options.bootOrder } : {}),
    ...(options.bootDelay !== undefined ? { bootDelaySeconds: options.bootDelay } : {}),
    ...(options.balance !== undefined ? { balance: options.balance } : {}),
    ...cpuControlsOf(options),
    ...memoryOf(options),
  };
}

function balancePolicy(value: string): VmBalancePolicy {
  if (value !== 'auto' && value !== 'manual' && value !== 'never')
    throw new NubisError('VALIDATION_FAILED', `--balance takes auto, manual or never, not ${value}`);
  return value;
}

/** `on` or `off` as a boolean. */
function onOff(option: string): (value: string) => boolean {
  return (value) => {
    if (value !== 'on' && value !== 'off') throw new NubisError('VALIDATION_FAILED', `${option} takes on or off, not ${value}`);
    return value === 'on';
  };
}

/** One line on why a host was chosen: its score against the runner-up, and how many hosts were refused. */
function whyChosen(decision: Static<typeof PlacementDecision>): string {
  const [best, second] = decision.ranked;
  const refused = decision.refused.length > 0 ? `; ${decision.refused.length} refused (${[...new Set(decision.refused.map((r) => r.filter))].join(', ')})` : '';
  return `${best ? `score ${best.score}` : 'no score'}${second ? ` vs ${second.host} ${second.score}` : ''}${refused}`;
}

/** Parses `8080:80`, `127.0.0.1:8080:80` or `8053:53/udp`. */
function parsePublish(value: string, previous: Array<Static<typeof PublishedPort>> = []): Array<Static<typeof PublishedPort>> {
  const match = /^(?:(\d{1,3}(?:\.\d{1,3}){3}):)?(\d+):(\d+)(?:\/(tcp|udp))?$/.exec(value);
  if (!match) throw new NubisError('VALIDATION_FAILED', `Cannot read --publish ${value}; write HOSTPORT:GUESTPORT, e.g. 8080:80 or 127.0.0.1:8080:80/tcp`);
  const protocol = match[4] === 'udp' ? 'udp' : 'tcp';
  return [...previous, { hostAddress: match[1] ?? '127.0.0.1', hostPort: Number(match[2]), guestPort: Number(match[3]), protocol }];
}

function addListAndShow(vm: Command): void {
  vm.command('list')
    .description('List VMs (every one, a page of the API at a time)')
    .option('--limit <n>', 'show at most this many (the first by name)', parseInteger('--limit'))
    .action(async (options: { limit?: number }, command: Command) => {
      const vms = await listVms(command, options.limit);
      if (globals(command).json) printJson(vms);
      else printVms(vms);
    });
  vm.command('show <vm>')
    .description('Show a VM')
    .action(async (name: string, _options: unknown, command: Command) => {
      const found = await client(command).request<Vm>('GET', `/v1/vms/${encodeURIComponent(name)}${projectQuery(command)}`);
      if (globals(command).json) printJson(found);
      else printVm(found);
    });
}

/** VMs in one answer of the API at most (its VM_PAGE_MAX). */
const API_PAGE = 1000;

/**
 * The VMs of the project (or all one may see), by name: page after page (`limit` and `marker`,
 * the last VM's id), up to `atMost`.
 */
async function listVms(command: Command, atMost = Number.POSITIVE_INFINITY): Promise<Vm[]> {
  if (!(atMost >= 1)) throw new NubisError('VALIDATION_FAILED', `--limit must be 1 or more, not ${atMost}`);
  const project = globals(command).project;
  const api = client(command);
  const vms: Vm[] = [];
  for (;;) {
    const limit = Math.min(API_PAGE, atMost - vms.length);
    const query = new URLSearchParams({ ...(project ? { project } : {}), limit: String(limit), ...(vms.length > 0 ? { marker: vms[vms.length - 1].id } : {}) });
    const page = await api.request<Vm[]>('GET', `/v1/vms?${query}`);
    vms.push(...page);
    // A short page is the last; a full one may be too (the next answer is then empty).
    if (page.length < limit || vms.length >= atMost) return vms;
  }
}

function printVms(vms: Vm[]): void {
  printTable(
    ['NAME', 'STATE', 'HOST', 'ACCEL', 'VCPUS', 'MEMORY', 'UPTIME', 'IPS', 'PORTS'],
    vms.map((vm) => [
      vm.name,
      vm.state === 'running' && !vm.ready ? 'running (booting)' : vm.state,
      vm.host,
      vm.accelerator,
      vm.cpus === vm.maxCpus ? vm.cpus : `${vm.cpus}/${vm.maxCpus}`,
      `${vm.memoryMb} MiB`,
      formatDuration(vm.uptimeSeconds),
      vm.guestIps.join(',') || undefined,
      vm.publish.map((p) => `${p.hostAddress}:${p.hostPort}->${p.guestPort}/${p.protocol}`).join(',') || undefined,
    ]),
  );
}

/** `vm show`'s line of what the VM does now (its host's latest usage sample), or undefined without one. */
function describeActivity(vm: Pick<Vm, 'activity'>): string | undefined {
  const now = vm.activity;
  if (!now) return undefined;
  const rate = (bytes: number | undefined) => (bytes === undefined ? '-' : `${formatSize(Math.round(bytes))}/s`);
  const cpu = now.cpu === undefined ? '-' : `${(now.cpu * 100).toFixed(0)}%`;
  return `CPU ${cpu}, disk read ${rate(now.diskReadBytesPerSec)} write ${rate(now.diskWriteBytesPerSec)}, network in ${rate(now.netRxBytesPerSec)} out ${rate(now.netTxBytesPerSec)} (at ${now.sampledAt})`;
}

function printVm(vm: Vm): void {
  const rows: Array<[string, unknown]> = [
    ['Name', vm.name],
    ['ID', vm.id],
    ['Project', vm.project],
    ['State', vm.state],
    ['Desired state', vm.desiredState],
    ['Guest ready', vm.ready ? `yes (${vm.readyAt})` : 'no'],
    ['Host', vm.host],
    ['Accelerator', vm.accelerator],
    ['vCPUs', describeVcpus(vm)],
    ...describeMemory(vm),
    ['Image', vm.image],
    ['Template', vm.template ? 'yes: read-only, never started; nubis vm clone makes VMs of it' : vm.linkedTo ? `linked clone of ${vm.linkedTo}` : undefined],
    ['PID', vm.pid],
    ['Started', vm.startedAt],
    ['Uptime', formatDuration(vm.uptimeSeconds)],
    ['Guest IPs', vm.guestIps.join(', ') || undefined],
    ['Published ports', vm.publish.map((p) => `${p.hostAddress}:${p.hostPort} -> ${p.guestPort}/${p.protocol}`).join(', ') || undefined],
    ['Last error', vm.lastError],
    ['High availability', vm.ha ? `on, priority ${vm.haPriority}${vm.haGroup ? `, group ${vm.haGroup}` : ''}` : 'off'],
    ['Autostart', vm.autostart ? `on, order ${vm.bootOrder}, then ${vm.bootDelaySeconds} s` : 'off'],
    ['Balancing', vm.balance],
    ['CPU controls', describeCpuControls(vm)],
    ['Disk limits', describeDiskLimits(vm)],
    ['NIC bandwidth', describeNicBandwidth(vm)],
    ['Activity', describeActivity(vm)],
    ['Platform', describePlatform(vm)],
    ['Post-copy', vm.allowPostcopy ? 'allowed' : 'denied'],
  ];
  for (const [key, value] of rows) if (value !== undefined) console.log(`${`${key}:`.padEnd(17)} ${value}`);
  if (vm.crashLogTail?.length) {
    console.log('Last console lines:');
    for (const line of vm.crashLogTail) console.log(`  ${line}`);
  }
}

/** start, stop, reboot, pause and resume: one operation each, on one VM. */
function addPowerActions(vm: Command): void {
  for (const action of ['start', 'stop', 'reboot', 'pause', 'resume'] as const) {
    const sub = vm.command(`${action} <vm>`).description(`${action[0].toUpperCase()}${action.slice(1)} a VM`);
    if (action === 'stop' || action === 'reboot') {
      sub
        .option('--force', action === 'stop' ? 'stop at once instead of an ACPI shutdown' : 'hard reset instead of a clean shutdown and start')
        .option('--timeout <seconds>', 'how long the guest may take to shut down before it is forced', parseInteger('--timeout'), 30);
    }
    sub.action(async (name: string, options: { force?: boolean; timeout?: number }, command: Command) => {
      const body = action === 'stop' || action === 'reboot' ? { force: Boolean(options.force), timeoutSeconds: options.timeout ?? 30 } : undefined;
      const { operation } = await client(command).request<Static<typeof Accepted>>(
        'POST',
        `/v1/vms/${encodeURIComponent(name)}/${action}${projectQuery(command)}`,
        body,
      );
      const final = await runOperation(command, `${action} ${name}`, operation);
      if (globals(command).json) printJson(final.result);
      else console.log(`${name}: ${(final.result as Vm).state}`);
    });
  }
}

function addDeleteAttachDetachSet(vm: Command): void {
  vm.command('delete <vm>')
    .description('Stop and delete a VM')
    .action(async (name: string, _options: unknown, command: Command) => {
      const { operation } = await client(command).request<Static<typeof Accepted>>('DELETE', `/v1/vms/${encodeURIComponent(name)}${projectQuery(command)}`);
      const final = await runOperation(command, `Deleting ${name}`, operation);
      if (globals(command).json) printJson(final.result);
      else console.log(`${name}: deleted`);
    });
  vm.command('attach <vm> <pool/volume>')
    .description('Attach a volume as a disk (hot-plugged when the VM runs)')
    .action(async (name: string, volumeRef: string, _options: unknown, command: Command) => {
      const { operation } = await client(command).request<Static<typeof Accepted>>(
        'POST',
        `/v1/vms/${encodeURIComponent(name)}/disks${projectQuery(command)}`,
        { volume: volumeRef },
      );
      const final = await runOperation(command, `Attaching ${volumeRef}`, operation);
      if (globals(command).json) return printJson(final.result);
      console.log(`${name}: disks ${(final.result as Vm).disks.map((d) => d.volume).join(', ')}`);
    });
  vm.command('detach <vm> <pool/volume>')
    .description('Detach a volume (a running guest must release it)')
    .action(async (name: string, volumeRef: string, _options: unknown, command: Command) => {
      const { operation } = await client(command).request<Static<typeof Accepted>>(
        'DELETE',
        `/v1/vms/${encodeURIComponent(name)}/disks/${volumeRef.split('/').map(encodeURIComponent).join('/')}${projectQuery(command)}`,
      );
      const final = await runOperation(command, `Detaching ${volumeRef}`, operation);
      if (globals(command).json) return printJson(final.result);
      console.log(`${name}: disks ${(final.result as Vm).disks.map((d) => d.volume).join(', ') || 'none'}`);
    });
  const set = vm
    .command('set <vm>')
    .description("Change a VM's policies")
    .option('--postcopy <allow|deny>', 'whether live migration may use post-copy')
    .option('--group <group>', "join this placement group ('' leaves its group)")
    .option('--ha <on|off>', 'restart it on another host when its host fails', onOff('--ha'))
    .option('--ha-priority <n>', 'higher restarts first when a host fails', parseInteger('--ha-priority'))
    .option('--ha-group <group>', "HA group whose hosts it prefers ('' leaves its group)")
    .option('--autostart <on|off>', 'start it when its host comes back after a reboot', onOff('--autostart'))
    .option('--boot-order <n>', 'lower starts first at autostart', parseInteger('--boot-order'))
    .option('--boot-delay <seconds>', 'wait this long before the next VM starts at autostart', parseInteger('--boot-delay'))
    .option('--balance <auto|manual|never>', 'which balancing runs may move it (manual: only runs a person starts)', balancePolicy);
  addNicBandwidthOptions(addDiskLimitOptions(addMemoryOptions(addCpuControlOptions(addVcpuOptions(set, true), true), true))).action(
    async (name: string, options: { postcopy?: string; group?: string; cpus?: number } & VmPolicyOptions, command: Command) => {
      if (options.postcopy !== undefined && options.postcopy !== 'allow' && options.postcopy !== 'deny')
        throw new NubisError('VALIDATION_FAILED', `--postcopy takes allow or deny, not ${options.postcopy}`);
      const vmPath = `/v1/vms/${encodeURIComponent(name)}${projectQuery(command)}`;
      const body = {
        ...(options.postcopy === undefined ? {} : { allowPostcopy: options.postcopy === 'allow' }),
        ...(options.group === undefined ? {} : { group: options.group }),
        ...(options.cpus === undefined ? {} : { cpus: options.cpus }),
        ...policiesOf(options),
        // A disk's limits go whole: what the options leave alone stays as the VM has it now.
        ...(givesDiskLimits(options) ? { diskLimits: diskLimitsOf(options, await client(command).request<Vm>('GET', vmPath)) } : {}),
        ...(await nicBandwidthOf(options, () => client(command).request<Vm>('GET', vmPath))),
      };
      if (Object.keys(body).length === 0)
        throw new NubisError(
          'VALIDATION_FAILED',
          'Give something to change, e.g. --postcopy deny, --group web, --ha on, --cpus 4, --cpu-limit 50%, --memory 512 or --disk-iops vdb=500',
        );
      const changed = await client(command).request<Vm>('PATCH', vmPath, body);
      if (globals(command).json) return printJson(changed);
      console.log(
        `${changed.name}: post-copy ${changed.allowPostcopy ? 'allowed' : 'denied'}${options.group !== undefined ? `, group ${options.group || 'none'}` : ''}, vCPUs ${describeVcpus(changed)}, CPU controls ${describeCpuControls(changed) ?? 'none'}, memory ${changed.memoryMb} of ${changed.maxMemoryMb} MiB, disk limits ${describeDiskLimits(changed) ?? 'none'}, NIC bandwidth ${describeNicBandwidth(changed) ?? 'none'}`,
      );
    },
  );
  vm.command('placement <vm>')
    .description('Where the VM has run: when, on which host, by whose action, and why the scheduler chose it')
    .action(async (name: string, _options: unknown, command: Command) => {
      const history = await client(command).request<Static<typeof PlacementHistory>>(
        'GET',
        `/v1/vms/${encodeURIComponent(name)}/placement${projectQuery(command)}`,
      );
      if (globals(command).json) return printJson(history);
      printTable(
        ['AT', 'HOST', 'ACTION', 'BY', 'WHY'],
        history.events.map((e) => [e.at, e.host, e.action, e.actor ?? 'system', whyChosen(e.decision)]),
      );
    });
}

function addMigrate(vm: Command): void {
  vm.command('migrate <vm>')
    .description('Live-migrate a VM to another host, showing stage, passes, dirty rate and remaining memory')
    .option('--to <host>', 'destination (default: the scheduler picks)')
    .option(
      '--strategy <strategy>',
      'precopy, postcopy (the VM moves at once and pulls its memory; a link broken mid-way pauses it until the link returns) or auto',
      'auto',
    )
    .option('--max-downtime <ms>', 'longest stop-and-copy accepted (default 300; auto aims at 20 first)', parseInteger('--max-downtime'))
    .option('--bandwidth <MB/s>', 'cap on the migration stream', parseInteger('--bandwidth'))
    .option('--timeout <seconds>', 'deadline for the switch-over (default 300)', parseInteger('--timeout'))
    .option('--on-timeout <action>', 'at the deadline: abort, or postcopy (default: postcopy when prepared, else abort)')
    .option('--tls', 'encrypt the stream with TLS between the two QEMUs (certificates of the Nubis CA for this migration alone)')
    .action(migrateVm);
  vm.command('migrations <vm>')
    .description('Past migrations of a VM with their figures')
    .action(async (name: string, _options: unknown, command: Command) => {
      const history = await client(command).request<MigrationRecord[]>('GET', `/v1/vms/${encodeURIComponent(name)}/migrations${projectQuery(command)}`);
      if (globals(command).json) return printJson(history);
      printTable(
        ['STARTED', 'FROM', 'TO', 'STRATEGY', 'STATUS', 'TOTAL MS', 'PREDICTED MS', 'DOWNTIME MS', 'PAUSED MS', 'SENT MiB', 'POSTCOPY'],
        history.map((h) => [
          h.startedAt,
          h.from,
          h.to,
          h.strategy,
          h.status,
          h.figures.totalTimeMs,
          h.figures.prediction?.predictedTotalMs,
          h.figures.downtimeMs,
          h.figures.pausedMs,
          h.figures.transferredBytes === undefined ? undefined : (h.figures.transferredBytes / 2 ** 20).toFixed(1),
          h.figures.switchedToPostcopy ? 'yes' : 'no',
        ]),
      );
    });
}

async function migrateVm(name: string, options: VmMigrateOptions, command: Command): Promise<void> {
  const body = {
    strategy: options.strategy,
    ...(options.to ? { to: options.to } : {}),
    ...(options.maxDowntime ? { maxDowntimeMs: options.maxDowntime } : {}),
    ...(options.bandwidth ? { bandwidthMbps: options.bandwidth } : {}),
    ...(options.timeout ? { completionTimeoutSeconds: options.timeout } : {}),
    ...(options.onTimeout ? { onTimeout: options.onTimeout } : {}),
    ...(options.tls ? { tls: true } : {}),
  };
  const { operation } = await client(command).request<Static<typeof Accepted>>(
    'POST',
    `/v1/vms/${encodeURIComponent(name)}/migrate${projectQuery(command)}`,
    body,
  );
  const final = await runOperation(command, `Migrating ${name}`, operation);
  if (globals(command).json) return printJson(final.result);
  const result = final.result as { from: string; to: string; figures: MigrationFigures };
  const f = result.figures;
  console.log(
    `${name}: ${result.from} -> ${result.to} in ${f.totalTimeMs} ms, QEMU downtime ${f.downtimeMs} ms, paused ${f.pausedMs ?? '?'} ms, ${((f.transferredBytes ?? 0) / 2 ** 20).toFixed(1)} MiB sent for ${f.memoryMb} MiB of memory${f.switchedToPostcopy ? ', post-copy' : ''}${options.tls ? ', over TLS' : ''}${f.predictionErrorPercent !== undefined ? `, predicted total off by ${f.predictionErrorPercent}%` : ''}`,
  );
}

function addLogAndConsole(vm: Command): void {
  vm.command('log <vm>')
    .description('Show the serial console output of a VM')
    .option('-n, --lines <n>', 'how many lines', parseInteger('--lines'), 100)
    .action(async (name: string, options: { lines: number }, command: Command) => {
      const g = globals(command);
      const query = `?lines=${options.lines}${g.project ? `&project=${encodeURIComponent(g.project)}` : ''}`;
      const log = await client(command).request<{ lines: string[] }>('GET', `/v1/vms/${encodeURIComponent(name)}/log${query}`);
      if (g.json) printJson(log);
      else for (const line of log.lines) console.log(line);
    });
  vm.command('console <vm>').description('Attach to the serial console of a VM (detach with Ctrl-])').action(attachConsole);
  vm.command('vnc <vm>')
    .description("Show the VM's screen in a native VNC viewer: a local port, and a password for the viewer (Ctrl-C ends)")
    .option('--listen <host:port>', 'where the viewer connects (port 0: any free port)', '127.0.0.1:5900')
    .action(openVnc);
}

const LISTEN_FORMAT = /^(localhost|(\d{1,3}\.){3}\d{1,3}):(\d{1,5})$/;

/** Relays a local port to the VM's screen (cli/vnc-proxy.ts) until interrupted. */
async function openVnc(name: string, options: { listen: string }, command: Command): Promise<void> {
  const listen = LISTEN_FORMAT.exec(options.listen);
  if (!listen || Number(listen[3]) > 65535)
    throw new NubisError('VALIDATION_FAILED', `Invalid --listen ${JSON.stringify(options.listen).slice(0, 60)}: give host:port, e.g. 127.0.0.1:5900`);
  const api = client(command);
  const proxy = await startVncProxy({
    listen: { host: listen[1], port: Number(listen[3]) },
    ticket: async () => {
      const issued = await api.request<{ path: string; password: string }>(
        'POST',
        `/v1/vms/${encodeURIComponent(name)}/console-ticket${projectQuery(command)}`,
        { kind: 'vnc' },
      );
      return { path: issued.path, password: issued.password };
    },
    webSocket: (path) => new WebSocket(`${api.target.url.replace(/^http/, 'ws')}${path}`, api.target.ca ? { ca: readCaFile(api.target.ca) } : {}),
    log: (message) => console.error(message),
  });
  if (globals(command).json) printJson({ address: proxy.address, password: proxy.password });
  else
    console.log(
      `The screen of ${name} is at ${proxy.address} (VNC password ${proxy.password}); connect a viewer, e.g. vncviewer ${proxy.address.replace(/:(\d+)$/, '::$1')}. Ctrl-C ends`,
    );
  await new Promise<void>((resolve) => {
    for (const signal of ['SIGINT', 'SIGTERM'] as const) process.once(signal, resolve);
  });
  proxy.close();
}

/** Joins the VM's serial console over the API's WebSocket, stdin to the guest and the guest to stdout. */
async function attachConsole(name: string, _options: unknown, command: Command): Promise<void> {
  const api = client(command);
  const url = `${api.target.url.replace(/^http/, 'ws')}/v1/vms/${encodeURIComponent(name)}/console${projectQuery(command)}`;
  // https -> wss; ws takes the CA per connection, as fetch does through api-fetch.ts.
  const socket = new WebSocket(url, { headers: { authorization: `Bearer ${api.target.token}` }, ...(api.target.ca ? { ca: readCaFile(api.target.ca) } : {}) });
  await new Promise<void>((resolve, reject) => {
    socket.on('open', () => {
      if (!globals(command).json) console.error(`Connected to the console of ${name}; detach with Ctrl-]`);
      if (process.stdin.isTTY) process.stdin.setRawMode(true);
      process.stdin.resume();
      process.stdin.on('data', (data: Buffer) => {
        // Ctrl-] (0x1d) detaches, as in telnet and virsh console; what came before it is sent.
        const detachAt = data.indexOf(0x1d);
        if (detachAt === -1) return socket.send(data);
        if (detachAt > 0) socket.send(data.subarray(0, detachAt));
        socket.close();
      });
      // Piped input that ends detaches too, instead of holding the console forever.
      process.stdin.on('end', () => socket.close());
    });
    socket.on('message', (data: Buffer) => process.stdout.write(data));
    socket.on('close', (code, reason) => {
      if (process.stdin.isTTY) process.stdin.setRawMode(false);
      process.stdin.pause();
      if (code >= 4000) reject(new NubisError('VM_CONSOLE_FAILED', reason.toString() || `Console closed (${code})`));
      else resolve();
    });
    // A refused attach is an HTTP answer before the upgrade: its code and message say why.
    socket.on('unexpected-response', (_request, response) => {
      let text = '';
      response.on('data', (chunk: Buffer) => (text += chunk.toString()));
      response.on('end', () => {
        let refusal: { code?: string; message?: string } = {};
        try {
          refusal = JSON.parse(text) as { code?: string; message?: string };
        } catch {}
        reject(new NubisError(refusal.code ?? 'VM_CONSOLE_FAILED', refusal.message ?? `Cannot attach to the console (HTTP ${response.statusCode})`));
      });
    });
    socket.on('error', (error) => reject(new NubisError('VM_CONSOLE_FAILED', `Cannot attach to the console: ${error.message}`)));
  });
  if (!globals(command).json) console.error('\nDetached');
}
