/**
 * The `nubis` command. Every command has --json; long actions follow their operation's event
 * stream with a progress bar; a failure exits non-zero with a one-line reason.
 */
import { Command } from 'commander';
import WebSocket from 'ws';
import { NubisError, messageOf } from '../core/errors.ts';
import { DEFAULT_API_PORT, cacheDir, dataPaths, defaultDataDir } from '../core/paths.ts';
import { buildTinyImage, readTinyImage } from '../images/build-tiny.ts';
import type { Operation, Vm } from '../wire/schemas.ts';
import { client, collect, globals, parseInteger, projectQuery, runOperation } from './common.ts';
import { stageForImport } from './import-staging.ts';
import { down, up } from './local-services.ts';
import { formatDuration, formatSize, printJson, printTable } from './output.ts';

const program = new Command('nubis')
  .description('Nubis: real virtual machines on a pool of hosts')
  .option('--json', 'print machine-readable JSON')
  .option('--data <dir>', 'data folder of the local control plane (env NUBIS_DATA)', defaultDataDir())
  .option('--url <url>', 'API URL (env NUBIS_URL; default: from the data folder)')
  .option('--token <token>', 'API token (env NUBIS_TOKEN; default: the admin token in the data folder)')
  .configureHelp({ showGlobalOptions: true })
  .showHelpAfterError();

function printVms(vms: Vm[]): void {
  printTable(
    ['NAME', 'STATE', 'HOST', 'ACCEL', 'VCPUS', 'MEMORY', 'UPTIME', 'IPS', 'PORTS'],
    vms.map((vm) => [
      vm.name,
      vm.state === 'running' && !vm.ready ? 'running (booting)' : vm.state,
      vm.host,
      vm.accelerator,
      vm.cpus,
      `${vm.memoryMb} MiB`,
      formatDuration(vm.uptimeSeconds),
      vm.guestIps.join(',') || undefined,
      vm.publish.map((p) => `${p.hostAddress}:${p.hostPort}->${p.guestPort}/${p.protocol}`).join(',') || undefined,
    ]),
  );
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
    ['vCPUs', vm.cpus],
    ['Memory', `${vm.memoryMb} MiB`],
    ['Image', vm.image],
    ['PID', vm.pid],
    ['Started', vm.startedAt],
    ['Uptime', formatDuration(vm.uptimeSeconds)],
    ['Guest IPs', vm.guestIps.join(', ') || undefined],
    ['Published ports', vm.publish.map((p) => `${p.hostAddress}:${p.hostPort} -> ${p.guestPort}/${p.protocol}`).join(', ') || undefined],
    ['Last error', vm.lastError],
  ];
  for (const [key, value] of rows) if (value !== undefined) console.log(`${`${key}:`.padEnd(17)} ${value}`);
  if (vm.crashLogTail?.length) {
    console.log('Last console lines:');
    for (const line of vm.crashLogTail) console.log(`  ${line}`);
  }
}

/** Parses `8080:80`, `127.0.0.1:8080:80` or `8053:53/udp`. */
function parsePublish(value: string, previous: Array<Record<string, unknown>> = []): Array<Record<string, unknown>> {
  const match = /^(?:(\d{1,3}(?:\.\d{1,3}){3}):)?(\d+):(\d+)(?:\/(tcp|udp))?$/.exec(value);
  if (!match) throw new NubisError('VALIDATION_FAILED', `Cannot read --publish ${value}; write HOSTPORT:GUESTPORT, e.g. 8080:80 or 127.0.0.1:8080:80/tcp`);
  return [...previous, { hostAddress: match[1] ?? '127.0.0.1', hostPort: Number(match[2]), guestPort: Number(match[3]), protocol: match[4] ?? 'tcp' }];
}

// --- up / down / status ---------------------------------------------------------------------
program
  .command('up')
  .description('Start the control plane and the local host agent(s)')
  .option('--port <port>', 'API port', parseInteger('--port'), DEFAULT_API_PORT)
  .option('--hosts <count>', 'number of local host agents', parseInteger('--hosts'), 1)
  .option('--netns', 'run each host in a network namespace with an underlay link (default as root with 2+ hosts)')
  .option('--no-netns', 'run host agents as plain processes (user-mode networking only)')
  .option('-d, --detach', 'return once everything runs, leaving it in the background')
  .action(async (options: { port: number; hosts: number; detach?: boolean; netns?: boolean }, command: Command) => {
    const g = globals(command);
    const say = (line: string): void => void (g.json ? undefined : console.error(line));
    if (options.hosts < 1 || options.hosts > 16) throw new NubisError('VALIDATION_FAILED', `--hosts must be from 1 to 16, not ${options.hosts}`);
    const netns = options.netns ?? (options.hosts > 1 && process.getuid?.() === 0);
    const result = await up({ dataDir: g.data, port: options.port, hosts: options.hosts, detach: Boolean(options.detach), quiet: Boolean(g.json), netns }, say);
    if (g.json) printJson(result);
    else {
      console.log(`Nubis ${result.alreadyRunning ? 'was already running' : 'is running'}.`);
      console.log(`  API:          ${result.url}  (OpenAPI: ${result.url}/v1/openapi.json)`);
      console.log(`  Admin token:  ${result.adminTokenFile}`);
      console.log(`  Hosts:        ${result.hosts.join(', ')}`);
      console.log(`  Data folder:  ${result.dataDir}`);
      console.log('Next: npx nubis vm create web1 --image tiny --cpus 1 --memory 256');
    }
    if (options.detach) return;
    console.error('Running in the foreground: Ctrl-C stops Nubis and its VMs (nubis up --detach leaves it running).');
    await new Promise<void>((resolve) => {
      process.once('SIGINT', resolve);
      process.once('SIGTERM', resolve);
    });
    console.error('\nStopping Nubis');
    await down({ dataDir: g.data, keepVms: false }, (line) => console.error(line));
  });

program
  .command('down')
  .description('Stop what nubis up started; VMs are shut down cleanly first')
  .option('--keep-vms', 'leave the VMs running (the next nubis up re-adopts them)')
  .action(async (options: { keepVms?: boolean }, command: Command) => {
    const g = globals(command);
    const result = await down({ dataDir: g.data, keepVms: Boolean(options.keepVms) }, (line) => void (g.json ? undefined : console.error(line)));
    if (g.json) printJson(result);
    else
      console.log(
        `Stopped ${result.stoppedProcesses.join(', ') || 'nothing (nothing was running)'}${result.stoppedVms.length ? `; VMs stopped: ${result.stoppedVms.join(', ')}` : ''}`,
      );
  });

program
  .command('status')
  .description('Show whether Nubis runs, its hosts and VMs')
  .action(async (_options: unknown, command: Command) => {
    const status = await client(command).request<Record<string, unknown>>('GET', '/v1/status');
    if (globals(command).json) printJson(status);
    else
      console.log(
        `Nubis ${status.version}: ${status.hostsOnline}/${status.hosts} hosts online, ${status.vmsRunning}/${status.vms} VMs running (data ${status.dataDir})`,
      );
  });

// --- hosts ------------------------------------------------------------------------------------
const host = program.command('host').description('Hosts of the cluster');
host
  .command('list')
  .description('List hosts with their accelerator, capacity and allocation')
  .action(async (_options: unknown, command: Command) => {
    const hosts = await client(command).request<Array<Record<string, any>>>('GET', '/v1/hosts');
    if (globals(command).json) return printJson(hosts);
    printTable(
      ['NAME', 'STATUS', 'ACCEL', 'VMS', 'VCPUS', 'MEMORY (USED/TOTAL)'],
      hosts.map((h) => [h.name, h.status, h.accelerator, h.vmCount, `${h.allocatedCpus}/${h.cpus}`, `${h.allocatedMemoryMb}/${h.memoryMb} MiB`]),
    );
  });
host
  .command('show <host>')
  .description('Show a host, with why its accelerator was chosen')
  .action(async (name: string, _options: unknown, command: Command) => {
    const h = await client(command).request<Record<string, unknown>>('GET', `/v1/hosts/${encodeURIComponent(name)}`);
    if (globals(command).json) return printJson(h);
    for (const [key, value] of Object.entries(h)) console.log(`${`${key}:`.padEnd(20)} ${value}`);
  });

host
  .command('evacuate <host>')
  .description('Maintenance: place nothing on the host and live-migrate its running VMs away')
  .option('--parallel <n>', 'migrations at a time', parseInteger('--parallel'), 2)
  .action(async (name: string, options: { parallel: number }, command: Command) => {
    const { operation } = await client(command).request<{ operation: Operation }>('POST', `/v1/hosts/${encodeURIComponent(name)}/evacuate`, {
      parallel: options.parallel,
    });
    const final = await runOperation(command, `Evacuating ${name}`, operation);
    if (globals(command).json) return printJson(final.result);
    const results = (final.result as { results: Array<{ vm: string; status: string; to?: string }> }).results;
    printTable(
      ['VM', 'RESULT', 'NOW ON'],
      results.map((r) => [r.vm, r.status, r.to]),
    );
  });
host
  .command('restore <host>')
  .description('End maintenance: the host takes VMs again')
  .option('--move-back', 'live-migrate back the running VMs whose last migration took them off this host')
  .option('--parallel <n>', 'migrations at a time', parseInteger('--parallel'), 2)
  .action(async (name: string, options: { moveBack?: boolean; parallel: number }, command: Command) => {
    const answer = await client(command).request<Record<string, unknown> & { operation?: Operation }>('POST', `/v1/hosts/${encodeURIComponent(name)}/restore`, {
      moveBack: Boolean(options.moveBack),
      parallel: options.parallel,
    });
    if (answer.operation) {
      const final = await runOperation(command, `Moving VMs back to ${name}`, answer.operation);
      if (globals(command).json) return printJson(final.result);
      const results = (final.result as { results: Array<{ vm: string; status: string; to?: string }> }).results;
      return printTable(
        ['VM', 'RESULT', 'NOW ON'],
        results.map((r) => [r.vm, r.status, r.to]),
      );
    }
    if (globals(command).json) return printJson(answer);
    console.log(`${name}: ${answer.status}`);
  });

// --- VMs --------------------------------------------------------------------------------------
const vm = program.command('vm').description('Virtual machines').option('--project <name>', 'project (default: default)');
vm.command('create <name>')
  .description('Create and boot a VM')
  .requiredOption('--image <image>', 'image to boot (nubis image list)')
  .option('--cpus <n>', 'virtual CPUs', parseInteger('--cpus'), 1)
  .option('--memory <mib>', 'memory in MiB', parseInteger('--memory'), 256)
  .option('--host <host>', 'pin the VM to this host')
  .option('--publish <host:guest>', 'forward a host port to a guest port (repeatable)', parsePublish)
  .option('--network <name>', 'a NIC on this virtual network (repeatable: eth0, eth1, ...)', collect, [])
  .option('--ip <address>', 'address for the NIC of the --network in the same position (repeatable)', collect, [])
  .option('--secgroup <group>', 'security group of its network NICs (repeatable)', collect, [])
  .option('--disk <pool/volume>', 'attach a volume of the storage node as a virtio disk (repeatable: vda, vdb, ...)', collect, [])
  .option('--no-wait', 'return once QEMU runs, without waiting for the guest to be ready')
  .option('--no-postcopy', 'live migration must not use post-copy (it throttles the guest instead)')
  .action(
    async (
      name: string,
      options: {
        image: string;
        cpus: number;
        memory: number;
        host?: string;
        publish?: unknown[];
        network: string[];
        ip: string[];
        secgroup: string[];
        disk: string[];
        wait: boolean;
        postcopy: boolean;
      },
      command: Command,
    ) => {
      const g = globals(command);
      if (options.ip.length > options.network.length)
        throw new NubisError('VALIDATION_FAILED', `Got ${options.ip.length} --ip for ${options.network.length} --network; give one --network per --ip`);
      const networks = options.network.map((network, index) => ({ network, ...(options.ip[index] ? { ip: options.ip[index] } : {}) }));
      const body = {
        name,
        image: options.image,
        cpus: options.cpus,
        memoryMb: options.memory,
        waitReady: options.wait,
        ...(options.host ? { host: options.host } : {}),
        ...(options.publish ? { publish: options.publish } : {}),
        ...(networks.length ? { networks } : {}),
        ...(options.secgroup.length ? { secgroups: options.secgroup } : {}),
        ...(options.disk.length ? { disks: options.disk } : {}),
        ...(options.postcopy ? {} : { allowPostcopy: false }),
        ...(g.project ? { project: g.project } : {}),
      };
      const { operation } = await client(command).request<{ operation: Operation }>('POST', '/v1/vms', body);
      const final = await runOperation(command, `Creating ${name}`, operation);
      if (g.json) printJson(final.result);
      else printVm(final.result as Vm);
    },
  );
vm.command('list')
  .description('List VMs')
  .action(async (_options: unknown, command: Command) => {
    const vms = await client(command).request<Vm[]>('GET', `/v1/vms${projectQuery(command)}`);
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
for (const action of ['start', 'stop', 'reboot', 'pause', 'resume'] as const) {
  const sub = vm.command(`${action} <vm>`).description(`${action[0].toUpperCase()}${action.slice(1)} a VM`);
  if (action === 'stop' || action === 'reboot') {
    sub
      .option('--force', action === 'stop' ? 'stop at once instead of an ACPI shutdown' : 'hard reset instead of a clean shutdown and start')
      .option('--timeout <seconds>', 'how long the guest may take to shut down before it is forced', parseInteger('--timeout'), 30);
  }
  sub.action(async (name: string, options: { force?: boolean; timeout?: number }, command: Command) => {
    const body = action === 'stop' || action === 'reboot' ? { force: Boolean(options.force), timeoutSeconds: options.timeout ?? 30 } : undefined;
    const { operation } = await client(command).request<{ operation: Operation }>(
      'POST',
      `/v1/vms/${encodeURIComponent(name)}/${action}${projectQuery(command)}`,
      body,
    );
    const final = await runOperation(command, `${action} ${name}`, operation);
    if (globals(command).json) printJson(final.result);
    else console.log(`${name}: ${(final.result as Vm).state}`);
  });
}
vm.command('delete <vm>')
  .description('Stop and delete a VM')
  .action(async (name: string, _options: unknown, command: Command) => {
    const { operation } = await client(command).request<{ operation: Operation }>('DELETE', `/v1/vms/${encodeURIComponent(name)}${projectQuery(command)}`);
    const final = await runOperation(command, `Deleting ${name}`, operation);
    if (globals(command).json) printJson(final.result);
    else console.log(`${name}: deleted`);
  });
vm.command('attach <vm> <pool/volume>')
  .description('Attach a volume as a disk (hot-plugged when the VM runs)')
  .action(async (name: string, volumeRef: string, _options: unknown, command: Command) => {
    const { operation } = await client(command).request<{ operation: Operation }>('POST', `/v1/vms/${encodeURIComponent(name)}/disks${projectQuery(command)}`, {
      volume: volumeRef,
    });
    const final = await runOperation(command, `Attaching ${volumeRef}`, operation);
    if (globals(command).json) return printJson(final.result);
    console.log(`${name}: disks ${(final.result as Vm).disks.map((d) => d.volume).join(', ')}`);
  });
vm.command('detach <vm> <pool/volume>')
  .description('Detach a volume (a running guest must release it)')
  .action(async (name: string, volumeRef: string, _options: unknown, command: Command) => {
    const { operation } = await client(command).request<{ operation: Operation }>(
      'DELETE',
      `/v1/vms/${encodeURIComponent(name)}/disks/${volumeRef.split('/').map(encodeURIComponent).join('/')}${projectQuery(command)}`,
    );
    const final = await runOperation(command, `Detaching ${volumeRef}`, operation);
    if (globals(command).json) return printJson(final.result);
    console.log(`${name}: disks ${(final.result as Vm).disks.map((d) => d.volume).join(', ') || 'none'}`);
  });
vm.command('set <vm>')
  .description("Change a VM's policies")
  .option('--postcopy <allow|deny>', 'whether live migration may use post-copy')
  .action(async (name: string, options: { postcopy?: string }, command: Command) => {
    if (options.postcopy !== undefined && options.postcopy !== 'allow' && options.postcopy !== 'deny')
      throw new NubisError('VALIDATION_FAILED', `--postcopy takes allow or deny, not ${options.postcopy}`);
    const body = options.postcopy === undefined ? {} : { allowPostcopy: options.postcopy === 'allow' };
    const vm = await client(command).request<Vm>('PATCH', `/v1/vms/${encodeURIComponent(name)}${projectQuery(command)}`, body);
    if (globals(command).json) return printJson(vm);
    console.log(`${vm.name}: post-copy ${vm.allowPostcopy ? 'allowed' : 'denied'}`);
  });
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
  .action(
    async (
      name: string,
      options: { to?: string; strategy: string; maxDowntime?: number; bandwidth?: number; timeout?: number; onTimeout?: string },
      command: Command,
    ) => {
      const body = {
        strategy: options.strategy,
        ...(options.to ? { to: options.to } : {}),
        ...(options.maxDowntime ? { maxDowntimeMs: options.maxDowntime } : {}),
        ...(options.bandwidth ? { bandwidthMbps: options.bandwidth } : {}),
        ...(options.timeout ? { completionTimeoutSeconds: options.timeout } : {}),
        ...(options.onTimeout ? { onTimeout: options.onTimeout } : {}),
      };
      const { operation } = await client(command).request<{ operation: Operation }>(
        'POST',
        `/v1/vms/${encodeURIComponent(name)}/migrate${projectQuery(command)}`,
        body,
      );
      const final = await runOperation(command, `Migrating ${name}`, operation);
      if (globals(command).json) return printJson(final.result);
      const result = final.result as { from: string; to: string; figures: Record<string, number> };
      const f = result.figures;
      console.log(
        `${name}: ${result.from} -> ${result.to} in ${f.totalTimeMs} ms, QEMU downtime ${f.downtimeMs} ms, paused ${f.pausedMs ?? '?'} ms, ${((f.transferredBytes ?? 0) / 2 ** 20).toFixed(1)} MiB sent for ${f.memoryMb} MiB of memory${f.switchedToPostcopy ? ', post-copy' : ''}${f.predictionErrorPercent !== undefined ? `, predicted total off by ${f.predictionErrorPercent}%` : ''}`,
      );
    },
  );
vm.command('migrations <vm>')
  .description('Past migrations of a VM with their figures')
  .action(async (name: string, _options: unknown, command: Command) => {
    const history = await client(command).request<Array<Record<string, any>>>('GET', `/v1/vms/${encodeURIComponent(name)}/migrations${projectQuery(command)}`);
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
vm.command('console <vm>')
  .description('Attach to the serial console of a VM (detach with Ctrl-])')
  .action(async (name: string, _options: unknown, command: Command) => {
    const api = client(command);
    const url = `${api.target.url.replace(/^http/, 'ws')}/v1/vms/${encodeURIComponent(name)}/console${projectQuery(command)}`;
    const socket = new WebSocket(url, { headers: { authorization: `Bearer ${api.target.token}` } });
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
      socket.on('error', (error) => reject(new NubisError('VM_CONSOLE_FAILED', `Cannot attach to the console: ${error.message}`)));
    });
    if (!globals(command).json) console.error('\nDetached');
  });

// --- images -----------------------------------------------------------------------------------
const image = program.command('image').description('Guest images');
image
  .command('list')
  .description('List images')
  .action(async (_options: unknown, command: Command) => {
    const images = await client(command).request<Array<Record<string, any>>>('GET', '/v1/images');
    if (globals(command).json) return printJson(images);
    printTable(
      ['NAME', 'KIND', 'FORMAT', 'SIZE', 'BUILTIN'],
      images.map((i) => [i.name, i.kind, i.format, `${(i.sizeBytes / 1048576).toFixed(1)} MiB`, i.builtin ? 'yes' : 'no']),
    );
  });
image
  .command('build <name>')
  .description('Build a built-in image (tiny) into the local cache')
  .option('--force', 'rebuild even when the cached image is current')
  .option('--if-missing', 'do nothing when an image was built before (used by npm start)')
  .action(async (name: string, options: { force?: boolean; ifMissing?: boolean }, command: Command) => {
    if (name !== 'tiny') throw new NubisError('IMAGE_NOT_FOUND', `No built-in image ${name}; the built-in image is tiny`);
    const g = globals(command);
    const existing = options.ifMissing ? readTinyImage(cacheDir()) : undefined;
    const built =
      existing ??
      (await buildTinyImage({
        cacheDir: cacheDir(),
        force: options.force,
        onProgress: (message) => void (g.json ? undefined : console.error(`  ${message}`)),
      }));
    if (g.json) printJson(built);
    else console.log(`tiny: kernel ${built.kernelVersion}, initrd ${built.initrdPath}`);
  });
image
  .command('import <name> [file]')
  .description(
    "Import a qcow2 or raw disk image, or a kernel+initrd pair: the files are put into the control plane's import folder (<data>/import/) and checked there",
  )
  .option('--kernel <file>', 'kernel of a kernel+initrd image')
  .option('--initrd <file>', 'initrd of a kernel+initrd image')
  .option('--in-import-folder', "the files are already in the control plane's import folder: send their names as given (for a CLI on another machine)")
  .action(async (name: string, file: string | undefined, options: { kernel?: string; initrd?: string; inImportFolder?: boolean }, command: Command) => {
    const files = file ? [file] : [options.kernel, options.initrd].filter((f): f is string => f !== undefined);
    if (file && (options.kernel || options.initrd)) throw new NubisError('IMAGE_INVALID', 'Give either a disk image FILE or --kernel and --initrd, not both');
    if (!file && files.length !== 2) throw new NubisError('IMAGE_INVALID', 'Give a disk image FILE, or both --kernel and --initrd');
    const staged = options.inImportFolder ? { names: files, remove: async () => {} } : await stageForImport(dataPaths(globals(command).data).imports, files);
    try {
      const body = { name, ...(file ? { path: staged.names[0] } : { kernelPath: staged.names[0], initrdPath: staged.names[1] }) };
      const { operation } = await client(command).request<{ operation: Operation }>('POST', '/v1/images', body);
      const final = await runOperation(command, `Importing ${name}`, operation);
      if (globals(command).json) printJson(final.result);
      else console.log(`${name}: imported`);
    } catch (error) {
      // The control plane names the staged copy; the user knows the file they gave.
      if (error instanceof NubisError) {
        const message = staged.names.reduce((text, stagedName, index) => text.replaceAll(stagedName, files[index]), error.message);
        throw new NubisError(error.code, message, { cause: error, details: error.details });
      }
      throw error;
    } finally {
      await staged.remove();
    }
  });

// --- networks ---------------------------------------------------------------------------------
const network = program
  .command('network')
  .description('Virtual networks (VXLAN overlays across hosts)')
  .option('--project <name>', 'project (default: default)');
network
  .command('create <name>')
  .description('Create a virtual network')
  .requiredOption('--subnet <cidr>', 'IPv4 subnet, e.g. 10.10.0.0/24')
  .option('--gateway <ip>', 'gateway address handed to guests')
  .option('--dhcp', 'serve DHCP with fixed leases (otherwise guests get static settings)')
  .option('--nat', 'a NAT gateway at --gateway: VMs reach the outside; port forwards reach VMs')
  .option('--vni <n>', 'VXLAN network identifier (default: the next free one)', parseInteger('--vni'))
  .action(async (name: string, options: { subnet: string; gateway?: string; dhcp?: boolean; nat?: boolean; vni?: number }, command: Command) => {
    const g = globals(command);
    const created = await client(command).request<Record<string, unknown>>('POST', '/v1/networks', {
      name,
      subnet: options.subnet,
      dhcp: Boolean(options.dhcp),
      nat: Boolean(options.nat),
      ...(options.gateway ? { gateway: options.gateway } : {}),
      ...(options.vni ? { vni: options.vni } : {}),
      ...(g.project ? { project: g.project } : {}),
    });
    if (g.json) return printJson(created);
    console.log(`${name}: created (subnet ${created.subnet}, VNI ${created.vni}${created.dhcp ? `, DHCP from ${created.dhcpAddress}` : ''})`);
  });
network
  .command('list')
  .description('List networks')
  .action(async (_options: unknown, command: Command) => {
    const networks = await client(command).request<Array<Record<string, any>>>('GET', `/v1/networks${projectQuery(command)}`);
    if (globals(command).json) return printJson(networks);
    printTable(
      ['NAME', 'PROJECT', 'SUBNET', 'GATEWAY', 'DHCP', 'VNI', 'NICS', 'HOSTS'],
      networks.map((n) => [n.name, n.project, n.subnet, n.gateway, n.dhcp ? 'yes' : 'no', n.vni, n.nicCount, n.hosts.join(',') || undefined]),
    );
  });
network
  .command('show <network>')
  .description('Show a network')
  .action(async (name: string, _options: unknown, command: Command) => {
    const found = await client(command).request<Record<string, unknown>>('GET', `/v1/networks/${encodeURIComponent(name)}${projectQuery(command)}`);
    if (globals(command).json) return printJson(found);
    for (const [key, value] of Object.entries(found)) console.log(`${`${key}:`.padEnd(13)} ${Array.isArray(value) ? value.join(', ') : value}`);
  });
network
  .command('delete <network>')
  .description('Delete a network (refused while NICs use it)')
  .action(async (name: string, _options: unknown, command: Command) => {
    await client(command).request('DELETE', `/v1/networks/${encodeURIComponent(name)}${projectQuery(command)}`);
    if (globals(command).json) return printJson({ deleted: name });
    console.log(`${name}: deleted`);
  });
const forward = network.command('forward').description("Port forwards into VMs through the network's NAT gateway");
forward
  .command('add <network>')
  .description('Forward a port of the gateway host to a VM, e.g. nubis network forward add net1 --port 8080 --to web1:80')
  .requiredOption('--port <port>', 'host port', parseInteger('--port'))
  .requiredOption('--to <vm:port>', 'the VM and its port')
  .option('--protocol <protocol>', 'tcp or udp', 'tcp')
  .action(async (name: string, options: { port: number; to: string; protocol: string }, command: Command) => {
    const match = /^([^:]+):(\d+)$/.exec(options.to);
    if (!match) throw new NubisError('VALIDATION_FAILED', `Cannot read --to ${options.to}; write VM:PORT, e.g. web1:80`);
    const added = await client(command).request<Record<string, unknown>>('POST', `/v1/networks/${encodeURIComponent(name)}/forwards${projectQuery(command)}`, {
      protocol: options.protocol,
      hostPort: options.port,
      vm: match[1],
      vmPort: Number(match[2]),
    });
    if (globals(command).json) return printJson(added);
    console.log(`${added.listenAddress ?? '?'}:${added.hostPort}/${added.protocol} -> ${added.vm}:${added.vmPort}`);
  });
forward
  .command('list <network>')
  .description('List port forwards')
  .action(async (name: string, _options: unknown, command: Command) => {
    const forwards = await client(command).request<Array<Record<string, any>>>(
      'GET',
      `/v1/networks/${encodeURIComponent(name)}/forwards${projectQuery(command)}`,
    );
    if (globals(command).json) return printJson(forwards);
    printTable(
      ['LISTEN', 'PROTOCOL', 'VM', 'VM PORT', 'HOST'],
      forwards.map((f) => [`${f.listenAddress ?? '?'}:${f.hostPort}`, f.protocol, f.vm, f.vmPort, f.host]),
    );
  });
forward
  .command('delete <network> <port>')
  .description('Remove a port forward')
  .option('--protocol <protocol>', 'tcp or udp', 'tcp')
  .action(async (name: string, port: string, options: { protocol: string }, command: Command) => {
    await client(command).request('DELETE', `/v1/networks/${encodeURIComponent(name)}/forwards/${options.protocol}/${Number(port)}${projectQuery(command)}`);
    if (globals(command).json) return printJson({ deleted: `${port}/${options.protocol}` });
    console.log(`${name}: forward of ${port}/${options.protocol} removed`);
  });
network
  .command('probe <network> <command...>')
  .description('Run a command in a namespace attached to the network, e.g. nubis network probe net1 -- ping -c 3 10.10.0.2')
  .option('--on <host>', 'host to attach the probe on (default: the first carrying the network)')
  .option('--timeout <seconds>', 'deadline for the command', parseInteger('--timeout'), 30)
  .action(async (name: string, probeCommand: string[], options: { on?: string; timeout: number }, command: Command) => {
    const result = await client(command).request<{ host: string; address: string; exitCode: number; stdout: string; stderr: string }>(
      'POST',
      `/v1/networks/${encodeURIComponent(name)}/probe${projectQuery(command)}`,
      { command: probeCommand, timeoutSeconds: options.timeout, ...(options.on ? { host: options.on } : {}) },
    );
    if (globals(command).json) printJson(result);
    else {
      process.stdout.write(result.stdout);
      process.stderr.write(result.stderr);
    }
    process.exitCode = result.exitCode;
  });

// --- security groups ------------------------------------------------------------------------
const secgroup = program
  .command('secgroup')
  .description('Security groups: allow rules for traffic towards VMs')
  .option('--project <name>', 'project (default: default)');
secgroup
  .command('create <name>')
  .description('Create a security group (members reach each other; everything else needs a rule)')
  .option('--description <text>', 'what the group is for')
  .action(async (name: string, options: { description?: string }, command: Command) => {
    const g = globals(command);
    const created = await client(command).request<Record<string, unknown>>('POST', '/v1/secgroups', {
      name,
      ...(options.description ? { description: options.description } : {}),
      ...(g.project ? { project: g.project } : {}),
    });
    if (g.json) return printJson(created);
    console.log(`${name}: created`);
  });
secgroup
  .command('list')
  .description('List security groups')
  .action(async (_options: unknown, command: Command) => {
    const groups = await client(command).request<Array<Record<string, any>>>('GET', `/v1/secgroups${projectQuery(command)}`);
    if (globals(command).json) return printJson(groups);
    printTable(
      ['NAME', 'PROJECT', 'RULES', 'MEMBERS'],
      groups.map((group) => [group.name, group.project, group.rules.length, group.members.join(',') || undefined]),
    );
  });
secgroup
  .command('show <group>')
  .description('Show a security group with its rules and members')
  .action(async (name: string, _options: unknown, command: Command) => {
    const group = await client(command).request<Record<string, any>>('GET', `/v1/secgroups/${encodeURIComponent(name)}${projectQuery(command)}`);
    if (globals(command).json) return printJson(group);
    console.log(`${group.name} (${group.project}): members ${group.members.join(', ') || 'none'}`);
    printTable(
      ['RULE', 'DIRECTION', 'PROTOCOL', 'PORTS', 'PEER'],
      group.rules.map((rule: Record<string, any>) => [
        rule.id,
        rule.direction,
        rule.protocol,
        rule.portMin === undefined ? 'all' : rule.portMin === rule.portMax ? rule.portMin : `${rule.portMin}-${rule.portMax}`,
        rule.remoteGroup ? `group ${rule.remoteGroup}` : rule.cidr,
      ]),
    );
  });
secgroup
  .command('delete <group>')
  .description('Delete a security group no VM uses')
  .action(async (name: string, _options: unknown, command: Command) => {
    await client(command).request('DELETE', `/v1/secgroups/${encodeURIComponent(name)}${projectQuery(command)}`);
    if (globals(command).json) return printJson({ deleted: name });
    console.log(`${name}: deleted`);
  });
const rule = secgroup.command('rule').description('Rules of a security group');
rule
  .command('add <group>')
  .description("Allow traffic towards (or with --direction egress, from) the group's VMs, e.g. nubis secgroup rule add web --protocol tcp --port 80")
  .requiredOption('--protocol <protocol>', 'tcp, udp, icmp or any')
  .option('--port <port[-port]>', 'port or port range (tcp and udp)')
  .option('--cidr <cidr>', 'allowed sources (ingress) or destinations (egress); default 0.0.0.0/0')
  .option('--remote-group <group>', 'the members of this group instead of a CIDR')
  .option('--direction <direction>', 'ingress (towards the VMs) or egress (from them)', 'ingress')
  .action(async (name: string, options: { protocol: string; port?: string; cidr?: string; remoteGroup?: string; direction: string }, command: Command) => {
    let ports = {};
    if (options.port !== undefined) {
      const match = /^(\d+)(?:-(\d+))?$/.exec(options.port);
      if (!match) throw new NubisError('VALIDATION_FAILED', `Cannot read --port ${options.port}; write a port (80) or a range (8000-8080)`);
      ports = { portMin: Number(match[1]), portMax: Number(match[2] ?? match[1]) };
    }
    const body = {
      direction: options.direction,
      protocol: options.protocol,
      ...ports,
      ...(options.cidr ? { cidr: options.cidr } : {}),
      ...(options.remoteGroup ? { remoteGroup: options.remoteGroup } : {}),
    };
    const added = await client(command).request<Record<string, unknown>>(
      'POST',
      `/v1/secgroups/${encodeURIComponent(name)}/rules${projectQuery(command)}`,
      body,
    );
    if (globals(command).json) return printJson(added);
    console.log(`${name}: rule ${added.id} added`);
  });
rule
  .command('delete <group> <rule>')
  .description('Delete a rule by its id (nubis secgroup show GROUP lists them)')
  .action(async (name: string, ruleId: string, _options: unknown, command: Command) => {
    await client(command).request('DELETE', `/v1/secgroups/${encodeURIComponent(name)}/rules/${encodeURIComponent(ruleId)}${projectQuery(command)}`);
    if (globals(command).json) return printJson({ deleted: ruleId });
    console.log(`${name}: rule ${ruleId} deleted`);
  });

// --- storage ----------------------------------------------------------------------------------
const pool = program.command('pool').description('Storage pools: devices mapped into one address space with RAID');
pool
  .command('create <name>')
  .description(
    'Create a pool: on the storage node, e.g. nubis pool create p1 --layout raid5 --device /srv/a.img --device /srv/b.img --device /srv/c.img; or a dir pool of qcow2 files on hosts, e.g. nubis pool create local --kind dir',
  )
  .option('--kind <kind>', 'san (storage node, shared by every host) or dir (a folder on each host)', 'san')
  .option('--layout <layout>', 'san: raid0, raid1, raid5, raid6 or raid10')
  .option('--device <path>', 'san: member device, a file, a block device or nbd://... (repeatable)', collect, [])
  .option('--chunk <size>', 'san: chunk size, e.g. 64K')
  .option('--host <host>', 'dir: a host that gets a folder (repeatable; default every host)', collect, [])
  .option('--force', 'san: overwrite devices that hold a filesystem, a partition table or another pool (refused otherwise)')
  .action(
    async (name: string, options: { kind: string; layout?: string; device: string[]; chunk?: string; host: string[]; force?: boolean }, command: Command) => {
      const { resolve } = await import('node:path');
      const devices = options.device.map((device) => (device.startsWith('nbd') ? device : resolve(device)));
      const body =
        options.kind === 'dir'
          ? {
              name,
              kind: 'dir',
              ...(options.host.length ? { hosts: options.host } : {}),
              ...(options.layout ? { layout: options.layout } : {}),
              ...(devices.length ? { devices } : {}),
            }
          : {
              name,
              kind: options.kind,
              ...(options.layout ? { layout: options.layout } : {}),
              ...(devices.length ? { devices } : {}),
              ...(options.chunk ? { chunk: options.chunk } : {}),
              ...(options.host.length ? { hosts: options.host } : {}),
              ...(options.force ? { force: true } : {}),
            };
      const created = await client(command).request<Record<string, any>>('POST', '/v1/pools', body);
      if (globals(command).json) return printJson(created);
      if (created.kind === 'dir') console.log(`${name}: dir pool of qcow2 files on ${created.hosts.join(', ')}, ${formatSize(created.freeBytes)} free`);
      else
        console.log(
          `${name}: ${created.layout}, ${formatSize(created.sizeBytes)} usable, ${formatSize(created.wasteBytes)} unusable (unequal members and metadata)`,
        );
    },
  );
pool
  .command('list')
  .description('List pools with health and capacity')
  .action(async (_options: unknown, command: Command) => {
    const pools = await client(command).request<Array<Record<string, any>>>('GET', '/v1/pools');
    if (globals(command).json) return printJson(pools);
    printTable(
      ['NAME', 'KIND', 'LAYOUT', 'STATE', 'SIZE', 'ALLOCATED', 'PROVISIONED', 'VOLUMES'],
      pools.map((p) => [
        p.name,
        p.kind,
        p.layout,
        p.state,
        formatSize(p.sizeBytes),
        formatSize(p.allocatedBytes),
        `${formatSize(p.provisionedBytes)} (${p.overcommitRatio.toFixed(2)}x)`,
        p.volumes,
      ]),
    );
  });
pool
  .command('show <pool>')
  .description('Show a pool like zpool status: state, members and their error counters')
  .action(async (name: string, _options: unknown, command: Command) => {
    const p = await client(command).request<Record<string, any>>('GET', `/v1/pools/${encodeURIComponent(name)}`);
    if (globals(command).json) return printJson(p);
    console.log(
      `pool: ${p.name}  state: ${p.state}${p.readOnly ? ` (read-only: ${p.readOnlyReason})` : ''}  layout: ${p.layout}  chunk: ${p.chunkBytes / 1024}K`,
    );
    console.log(
      `size ${formatSize(p.sizeBytes)}, allocated ${formatSize(p.allocatedBytes)}, free ${formatSize(p.freeBytes)}, provisioned ${formatSize(p.provisionedBytes)} (${p.overcommitRatio.toFixed(2)}x)`,
    );
    for (const warning of p.warnings) console.log(`warning: ${warning}`);
    printTable(
      ['#', 'DEVICE', 'STATE', 'READ', 'WRITE', 'CKSUM'],
      p.members.map((m: Record<string, any>) => [m.index, m.path, m.state, m.readErrors, m.writeErrors, m.checksumErrors]),
    );
  });
pool
  .command('scrub <pool>')
  .description('Read everything, find silent corruption by checksum and repair it from redundancy')
  .option('--max-rate <MiB/s>', 'throttle', parseInteger('--max-rate'))
  .action(async (name: string, options: { maxRate?: number }, command: Command) => {
    const { operation } = await client(command).request<{ operation: Operation }>(
      'POST',
      `/v1/pools/${encodeURIComponent(name)}/scrub`,
      options.maxRate ? { maxMbPerSec: options.maxRate } : {},
    );
    const final = await runOperation(command, `Scrubbing ${name}`, operation);
    if (globals(command).json) return printJson(final.result);
    const r = final.result as Record<string, number>;
    console.log(
      `${name}: scanned ${formatSize(r.scannedBytes)}, ${r.checksumErrors} checksum errors, ${r.repairedBlocks} blocks repaired, ${r.unrepairedBlocks} unrepairable`,
    );
  });
pool
  .command('replace <pool> <member> <device>')
  .description('Replace a member (index or path) with a new device and rebuild online')
  .option('--max-rate <MiB/s>', 'throttle the rebuild so VMs keep running', parseInteger('--max-rate'))
  .option('--force', 'overwrite a new device that holds a filesystem, a partition table or another pool (refused otherwise)')
  .action(async (name: string, member: string, device: string, options: { maxRate?: number; force?: boolean }, command: Command) => {
    const { resolve } = await import('node:path');
    const body = {
      member: /^\d+$/.test(member) ? Number(member) : member,
      device: device.startsWith('nbd') ? device : resolve(device),
      ...(options.maxRate ? { maxMbPerSec: options.maxRate } : {}),
      ...(options.force ? { force: true } : {}),
    };
    const { operation } = await client(command).request<{ operation: Operation }>('POST', `/v1/pools/${encodeURIComponent(name)}/replace`, body);
    const final = await runOperation(command, `Rebuilding ${name}`, operation);
    if (globals(command).json) return printJson(final.result);
    console.log(`${name}: ${(final.result as Record<string, string>).state}`);
  });
pool
  .command('delete <pool>')
  .description('Delete an empty pool')
  .action(async (name: string, _options: unknown, command: Command) => {
    await client(command).request('DELETE', `/v1/pools/${encodeURIComponent(name)}`);
    if (globals(command).json) return printJson({ deleted: name });
    console.log(`${name}: deleted`);
  });

const volume = program.command('volume').description('Thin volumes of storage pools, served over NBD');
const volumePath = (ref: string): string => {
  const [poolName, volumeName] = ref.split('/');
  if (!poolName || !volumeName) throw new NubisError('VALIDATION_FAILED', `Write the volume as POOL/VOLUME, not ${ref}`);
  return `/v1/pools/${encodeURIComponent(poolName)}/volumes/${encodeURIComponent(volumeName)}`;
};
volume
  .command('create <name>')
  .description('Create a thin volume, e.g. nubis volume create data1 --pool p1 --size 20G')
  .requiredOption('--pool <pool>', 'pool')
  .requiredOption('--size <size>', 'size, e.g. 512M or 20G')
  .option('--host <host>', 'dir pools: the host that holds the qcow2 file (needed when the pool spans several)')
  .action(async (name: string, options: { pool: string; size: string; host?: string }, command: Command) => {
    const created = await client(command).request<Record<string, any>>('POST', `/v1/pools/${encodeURIComponent(options.pool)}/volumes`, {
      name,
      size: options.size,
      ...(options.host ? { host: options.host } : {}),
    });
    if (globals(command).json) return printJson(created);
    console.log(`${options.pool}/${name}: ${formatSize(created.sizeBytes)}${created.host ? ` on ${created.host}` : ''}`);
  });
volume
  .command('list')
  .description('List volumes (of one pool with --pool)')
  .option('--pool <pool>', 'only this pool')
  .action(async (options: { pool?: string }, command: Command) => {
    const api = client(command);
    const pools = options.pool ? [options.pool] : (await api.request<Array<{ name: string }>>('GET', '/v1/pools')).map((p) => p.name);
    const volumes = (await Promise.all(pools.map((p) => api.request<Array<Record<string, any>>>('GET', `/v1/pools/${encodeURIComponent(p)}/volumes`)))).flat();
    if (globals(command).json) return printJson(volumes);
    printTable(
      ['VOLUME', 'KIND', 'SIZE', 'ALLOCATED', 'ORIGIN', 'HOST', 'USED BY'],
      volumes.map((v) => [`${v.pool}/${v.name}`, v.kind, formatSize(v.sizeBytes), formatSize(v.allocatedBytes), v.originName, v.host, v.usedBy]),
    );
  });
volume
  .command('show <pool/volume>')
  .description('Show a volume')
  .action(async (ref: string, _options: unknown, command: Command) => {
    const found = await client(command).request<Record<string, unknown>>('GET', volumePath(ref));
    if (globals(command).json) return printJson(found);
    for (const [key, value] of Object.entries(found)) console.log(`${`${key}:`.padEnd(16)} ${value}`);
  });
for (const action of ['snapshot', 'clone'] as const) {
  volume
    .command(`${action} <pool/volume> <name>`)
    .description(action === 'snapshot' ? 'Take a read-only snapshot (instant, copy-on-write)' : 'Make a writable clone (instant, copy-on-write)')
    .action(async (ref: string, name: string, _options: unknown, command: Command) => {
      const made = await client(command).request<Record<string, unknown>>('POST', `${volumePath(ref)}/${action}`, { name });
      if (globals(command).json) return printJson(made);
      console.log(`${ref.split('/')[0]}/${name}: ${action} of ${ref}`);
    });
}
volume
  .command('resize <pool/volume> <size>')
  .description('Grow or shrink a volume (never below its data)')
  .action(async (ref: string, size: string, _options: unknown, command: Command) => {
    const resized = await client(command).request<Record<string, any>>('POST', `${volumePath(ref)}/resize`, { size });
    if (globals(command).json) return printJson(resized);
    console.log(`${ref}: ${formatSize(resized.sizeBytes)}`);
  });
volume
  .command('delete <pool/volume>')
  .description('Delete a volume no VM uses; its space returns to the pool')
  .action(async (ref: string, _options: unknown, command: Command) => {
    await client(command).request('DELETE', volumePath(ref));
    if (globals(command).json) return printJson({ deleted: ref });
    console.log(`${ref}: deleted`);
  });

// --- operations -------------------------------------------------------------------------------
const operation = program.command('operation').description('Long-running operations');
operation
  .command('list')
  .description('Recent operations')
  .option('--limit <n>', 'how many', parseInteger('--limit'), 20)
  .action(async (options: { limit: number }, command: Command) => {
    const operations = await client(command).request<Operation[]>('GET', `/v1/operations?limit=${options.limit}`);
    if (globals(command).json) return printJson(operations);
    printTable(
      ['ID', 'KIND', 'TARGET', 'STATUS', 'STAGE', 'CREATED'],
      operations.map((o) => [o.id, o.kind, o.target.name, o.status, o.stage, o.createdAt]),
    );
  });
operation
  .command('show <id>')
  .description('Show an operation')
  .action(async (id: string, _options: unknown, command: Command) => {
    const found = await client(command).request<Operation>('GET', `/v1/operations/${encodeURIComponent(id)}`);
    if (globals(command).json) return printJson(found);
    for (const [key, value] of Object.entries(found)) console.log(`${`${key}:`.padEnd(12)} ${typeof value === 'object' ? JSON.stringify(value) : value}`);
  });
operation
  .command('cancel <id>')
  .description('Cancel a running operation')
  .action(async (id: string, _options: unknown, command: Command) => {
    const found = await client(command).request<Operation>('POST', `/v1/operations/${encodeURIComponent(id)}/cancel`);
    if (globals(command).json) return printJson(found);
    console.log(`${id}: cancel requested`);
  });

// --- projects ---------------------------------------------------------------------------------
const project = program.command('project').description('Projects (tenants)');
project
  .command('list')
  .description('List projects')
  .action(async (_options: unknown, command: Command) => {
    const projects = await client(command).request<Array<Record<string, string>>>('GET', '/v1/projects');
    if (globals(command).json) return printJson(projects);
    printTable(
      ['NAME', 'ID', 'CREATED'],
      projects.map((p) => [p.name, p.id, p.createdAt]),
    );
  });
project
  .command('create <name>')
  .description('Create a project')
  .action(async (name: string, _options: unknown, command: Command) => {
    const created = await client(command).request<Record<string, string>>('POST', '/v1/projects', { name });
    if (globals(command).json) return printJson(created);
    console.log(`${name}: created`);
  });

// --- daemons (started by `nubis up`) ----------------------------------------------------------
const daemon = program.command('daemon').description('Run a Nubis service in the foreground (nubis up does this for you)');
// Everything a service writes (the database, secrets, VM folders, QEMU's serial logs, pool
// files) is its owner's alone unless a file says otherwise.
daemon.hook('preAction', () => {
  process.umask(0o077);
});
daemon
  .command('control-plane')
  .description('Run the control plane')
  .option('--port <port>', 'API port', parseInteger('--port'), DEFAULT_API_PORT)
  .option('--listen <address>', 'address to listen on', '127.0.0.1')
  .action(async (options: { port: number; listen: string }, command: Command) => {
    const { startControlPlane } = await import('../app/control-plane.ts');
    const { createLogger } = await import('../core/logger.ts');
    const logger = createLogger('control-plane');
    const running = await startControlPlane({ dataDir: globals(command).data, cacheDir: cacheDir(), host: options.listen, port: options.port, logger });
    await waitForSignal();
    logger.info('stopping');
    await running.stop();
  });
daemon
  .command('agent')
  .description('Run a host agent')
  .requiredOption('--name <name>', 'host name')
  .requiredOption('--control-url <url>', 'control plane URL (http://... or unix:/path)')
  .option('--netns <name>', 'the network namespace this host runs in')
  .option('--underlay-ip <address>', "this host's underlay address (VXLAN endpoint)")
  .action(async (options: { name: string; controlUrl: string; netns?: string; underlayIp?: string }, command: Command) => {
    const { startAgent } = await import('../host/agent.ts');
    const { createLogger } = await import('../core/logger.ts');
    const { readFile } = await import('node:fs/promises');
    const { join } = await import('node:path');
    const dataDir = globals(command).data;
    const tiny = readTinyImage(cacheDir());
    if (!tiny) throw new NubisError('IMAGE_NOT_FOUND', 'The tiny image is not built; run npx nubis image build tiny');
    const logger = createLogger(`agent ${options.name}`);
    const agent = await startAgent({
      name: options.name,
      hostDir: join(dataPaths(dataDir).hostsDir, options.name),
      controlUrl: options.controlUrl,
      joinToken: (await readFile(dataPaths(dataDir).joinToken, 'utf8')).trim(),
      probeGuest: { kernelPath: tiny.kernelPath, initrdPath: tiny.initrdPath, identity: tiny.sha256 },
      cacheDir: cacheDir(),
      logger,
      hostNs: options.netns,
      underlayIp: options.underlayIp,
    });
    await Promise.race([waitForSignal(), agent.ended]);
    logger.info('stopping; VMs keep running');
    await agent.stop();
  });

daemon
  .command('storage')
  .description('Run the storage node: pools, volumes and their NBD exports')
  .option('--nbd-tcp <host:port>', 'also serve NBD on TCP')
  .option('--nbd-tls-dir <dir>', "require TLS on TCP: server-cert.pem, server-key.pem and, for client certificates, ca-cert.pem (QEMU's file names)")
  .action(async (options: { nbdTcp?: string; nbdTlsDir?: string }, command: Command) => {
    const { startStorageNode } = await import('../storage/storage-node.ts');
    const { createLogger } = await import('../core/logger.ts');
    const { existsSync, readFileSync } = await import('node:fs');
    const { join } = await import('node:path');
    const paths = dataPaths(globals(command).data);
    const logger = createLogger('storage');
    const tcp = options.nbdTcp ? /^(.+):(\d+)$/.exec(options.nbdTcp) : undefined;
    if (options.nbdTcp && !tcp) throw new NubisError('VALIDATION_FAILED', `--nbd-tcp takes HOST:PORT, not ${options.nbdTcp}`);
    if (options.nbdTlsDir && !tcp) throw new NubisError('VALIDATION_FAILED', '--nbd-tls-dir protects the TCP listener: give --nbd-tcp too');
    const tlsFile = (name: string): string => join(options.nbdTlsDir!, name);
    if (options.nbdTlsDir)
      for (const name of ['server-cert.pem', 'server-key.pem'])
        if (!existsSync(tlsFile(name))) throw new NubisError('VALIDATION_FAILED', `${tlsFile(name)} is missing`);
    const node = await startStorageNode({
      poolsDir: paths.storagePools,
      nbdSocket: paths.storageNbdSocket,
      manageSocket: paths.storageManageSocket,
      ...(tcp ? { nbdTcp: { host: tcp[1], port: Number(tcp[2]) } } : {}),
      ...(options.nbdTlsDir
        ? {
            nbdTls: {
              cert: readFileSync(tlsFile('server-cert.pem')),
              key: readFileSync(tlsFile('server-key.pem')),
              ...(existsSync(tlsFile('ca-cert.pem')) ? { ca: readFileSync(tlsFile('ca-cert.pem')) } : {}),
            },
          }
        : {}),
    });
    logger.info({ pools: node.service.listPools().map((pool) => pool.name) }, 'storage node serving');
    await waitForSignal();
    logger.info('stopping');
    await node.stop();
  });

function waitForSignal(): Promise<void> {
  return new Promise((resolve) => {
    process.once('SIGINT', () => resolve());
    process.once('SIGTERM', () => resolve());
  });
}

try {
  await program.parseAsync(process.argv);
} catch (error) {
  const code = error instanceof NubisError ? error.code : 'ERROR';
  if (program.opts().json) console.error(JSON.stringify({ code, message: messageOf(error) }));
  else console.error(`Error: ${messageOf(error)}`);
  process.exitCode = 1;
}
