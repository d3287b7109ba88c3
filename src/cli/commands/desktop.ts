/**
 * `nubis desktop`: desktop pools (VDI). `desktop pool ...` manages pools (desktop.manage on the
 * project); `desktop list|connect|leave` are for the users a pool is granted to: connect gets
 * their desktop and prints the address of its page in the web UI.
 */
import type { Command } from 'commander';
import { NubisError } from '../../core/errors.ts';
import type { DesktopAssignment, DesktopPool, MyDesktop } from '../../wire/desktop-schemas.ts';
import type { Operation } from '../../wire/schemas.ts';
import { client, globals, parseInteger, projectQuery, runOperation } from '../common.ts';
import { printJson, printTable } from '../output.ts';

/** `300`, `300s`, `5m`, `1h`: seconds. */
function parseGrace(value: string): number {
  const match = /^(\d{1,6})(s|m|h)?$/.exec(value);
  if (!match) throw new NubisError('VALIDATION_FAILED', `--grace takes seconds or a duration like 5m or 1h, not ${value}`);
  return Number(match[1]) * { s: 1, m: 60, h: 3600 }[(match[2] ?? 's') as 's' | 'm' | 'h'];
}

const poolPath = (name: string, rest = ''): string => `/v1/desktop-pools/${encodeURIComponent(name)}${rest}`;

export function registerDesktopCommands(program: Command): void {
  const desktop = program.command('desktop').description('Desktops from desktop pools (VDI)').option('--project <name>', 'project (default: default)');
  addPoolCommands(desktop.command('pool').description('Desktop pools: desktops cloned from one base volume, handed out to users'));
  addUserCommands(desktop);
}

function printPool(pool: DesktopPool): void {
  console.log(
    `Desktop pool ${pool.name} (project ${pool.project}): ${pool.mode}, ${pool.size} desktops at most, ${pool.spare} spare, grace ${pool.graceSeconds} s`,
  );
  console.log(
    `Image ${pool.image}, base ${pool.base} (snapshot ${pool.snapshot}), ${pool.cpus} vCPU, ${pool.memoryMb} MiB${pool.network ? `, network ${pool.network}` : ''}`,
  );
  console.log(`Access: ${pool.entitled.join(', ') || 'nobody yet (nubis desktop pool grant)'}`);
  if (pool.desktops.length === 0) return;
  console.log('');
  printTable(
    ['DESKTOP', 'STATE', 'USER', 'SINCE', 'DISK', 'DETAIL'],
    pool.desktops.map((d) => [d.vm, d.state, d.assignedTo ?? '-', d.assignedAt ?? '-', d.volume, d.error ?? '']),
  );
}

function addPoolCommands(pool: Command): void {
  addPoolCreate(pool);
  addPoolReads(pool);
  pool
    .command('delete <name>')
    .description('Delete a pool with its desktops, their disks and its snapshot')
    .option('--force', 'also while desktops are assigned (their users lose them)')
    .action(async (name: string, options: { force?: boolean }, command: Command) => {
      const query = new URLSearchParams();
      const project = globals(command).project;
      if (project) query.set('project', project);
      if (options.force) query.set('force', 'true');
      const { operation } = await client(command).request<{ operation: Operation }>('DELETE', poolPath(name, query.size > 0 ? `?${query}` : ''));
      const final = await runOperation(command, `Deleting desktop pool ${name}`, operation);
      if (globals(command).json) return printJson(final);
      console.log(`Deleted desktop pool ${name}`);
    });
  pool
    .command('update-base <name>')
    .description("Snapshot the pool's base again: free desktops are reset onto it, held floating ones at their next reset")
    .action(async (name: string, _options: unknown, command: Command) => {
      const { operation } = await client(command).request<{ operation: Operation }>('POST', poolPath(name, `/update-base${projectQuery(command)}`));
      const final = await runOperation(command, `Updating the base of desktop pool ${name}`, operation);
      if (globals(command).json) return printJson(final.result);
      printPool(final.result as DesktopPool);
    });
  for (const action of ['grant', 'revoke'] as const) {
    pool
      .command(`${action} <name> [user]`)
      .description(
        action === 'grant' ? 'Let a user (or --group) get desktops from the pool' : "Take a user's (or --group's) access away; their desktop is reset",
      )
      .option('--group <group>', 'an OpenID Connect group instead of a user')
      .action(async (name: string, user: string | undefined, options: { group?: string }, command: Command) => {
        if ((user === undefined) === (options.group === undefined)) throw new NubisError('VALIDATION_FAILED', 'Name a user or give --group, one of them');
        const project = globals(command).project;
        const who = { ...(user ? { user } : {}), ...(options.group ? { group: options.group } : {}), ...(project ? { project } : {}) };
        const changed =
          action === 'grant'
            ? await client(command).request<DesktopPool>('POST', poolPath(name, '/grants'), who)
            : await client(command).request<DesktopPool>('DELETE', poolPath(name, `/grants?${new URLSearchParams(who)}`));
        if (globals(command).json) return printJson(changed);
        console.log(`Desktop pool ${name}: access for ${changed.entitled.join(', ') || 'nobody'}`);
      });
  }
}

/**
 * Waits until the desktop handed out runs. A user of a pool may hold no role on its project, so
 * the operation readying it is not theirs to follow: their own desktop list is.
 */
async function waitRunning(command: Command, assignment: DesktopAssignment): Promise<DesktopAssignment['desktop']> {
  const api = client(command);
  const deadline = Date.now() + 300_000;
  const tell = !globals(command).json && process.stderr.isTTY;
  for (;;) {
    const mine = (await api.request<MyDesktop[]>('GET', '/v1/desktops')).find((m) => m.pool === assignment.pool && m.project === assignment.project);
    const desktop = mine?.desktop;
    if (!desktop) throw new NubisError('DESKTOP_NOT_ASSIGNED', `Desktop ${assignment.desktop.vm} was taken back while it was readied; connect again`);
    if (desktop.state === 'running') return desktop;
    if (desktop.state === 'broken') throw new NubisError('DESKTOP_BROKEN', `Desktop ${desktop.vm} is broken: ${desktop.error ?? 'unknown'}`);
    if (Date.now() > deadline) throw new NubisError('DESKTOP_NOT_READY', `Desktop ${desktop.vm} is still ${desktop.state} after 5 minutes`);
    if (tell) process.stderr.write(`\rDesktop ${desktop.vm}: ${desktop.state}...   `);
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
}

function addUserCommands(desktop: Command): void {
  desktop
    .command('list')
    .description('My desktops: the pools you may use and the desktop you hold in each')
    .action(async (_options: unknown, command: Command) => {
      const mine = await client(command).request<MyDesktop[]>('GET', '/v1/desktops');
      if (globals(command).json) return printJson(mine);
      printTable(
        ['POOL', 'PROJECT', 'MODE', 'DESKTOP', 'STATE'],
        mine.map((m) => [m.pool, m.project, m.mode, m.desktop?.vm ?? '-', m.desktop?.state ?? '-']),
      );
    });
  desktop
    .command('connect <pool>')
    .description('Get your desktop of a pool (booting it if needed) and print the address of its page in the web UI')
    .action(async (pool: string, _options: unknown, command: Command) => {
      const api = client(command);
      const assignment = await api.request<DesktopAssignment>('POST', poolPath(pool, `/connect${projectQuery(command)}`));
      const ready = assignment.desktop.state === 'running' ? assignment : { ...assignment, desktop: await waitRunning(command, assignment) };
      const url = `${api.target.url}/desktops/${encodeURIComponent(pool)}${projectQuery(command)}`;
      if (globals(command).json) return printJson({ ...ready, url });
      console.log(`Desktop ${ready.desktop.vm} of pool ${pool} is yours (${ready.mode})`);
      console.log(url);
    });
  desktop
    .command('leave <pool>')
    .description('Log off from your desktop of a pool: a floating one is reset to a clean disk, a dedicated one is kept')
    .action(async (pool: string, _options: unknown, command: Command) => {
      const left = await client(command).request<{ pool: string; desktop?: string; operation?: Operation }>(
        'POST',
        poolPath(pool, `/leave${projectQuery(command)}`),
      );
      if (globals(command).json) return printJson(left);
      console.log(`Left desktop ${left.desktop} of pool ${pool}${left.operation ? '; it is being reset to a clean disk' : ''}`);
    });
}

function addPoolCreate(pool: Command): void {
  pool
    .command('create <name>')
    .description('Create a pool: snapshots the base, then boots the spare desktops')
    .requiredOption('--image <image>', 'what the desktops boot (e.g. tiny)')
    .requiredOption('--base <pool/volume>', 'a storage-node volume: each desktop gets its own copy-on-write clone of a snapshot of it')
    .requiredOption('--size <n>', 'desktops at most', parseInteger('--size'))
    .requiredOption('--mode <mode>', 'floating (any free desktop, reset when its user leaves) or dedicated (the same one every time)')
    .option('--spare <k>', 'unassigned desktops kept booted (default 1)', parseInteger('--spare'))
    .option('--grace <duration>', 'reset a floating desktop whose user stays disconnected this long (default 5m)', parseGrace)
    .option('--cpus <n>', 'vCPUs per desktop (default 1)', parseInteger('--cpus'))
    .option('--memory <mib>', 'memory per desktop in MiB (default 256)', parseInteger('--memory'))
    .option('--network <network>', 'the virtual network of their NIC (default: user-mode network)')
    .action(
      async (
        name: string,
        options: { image: string; base: string; size: number; mode: string; spare?: number; grace?: number; cpus?: number; memory?: number; network?: string },
        command: Command,
      ) => {
        if (options.mode !== 'floating' && options.mode !== 'dedicated')
          throw new NubisError('VALIDATION_FAILED', `--mode is floating or dedicated, not ${options.mode}`);
        const project = globals(command).project;
        const { operation } = await client(command).request<{ operation: Operation }>('POST', '/v1/desktop-pools', {
          name,
          image: options.image,
          base: options.base,
          size: options.size,
          mode: options.mode,
          ...(options.spare !== undefined ? { spare: options.spare } : {}),
          ...(options.grace !== undefined ? { graceSeconds: options.grace } : {}),
          ...(options.cpus !== undefined ? { cpus: options.cpus } : {}),
          ...(options.memory !== undefined ? { memoryMb: options.memory } : {}),
          ...(options.network ? { network: options.network } : {}),
          ...(project ? { project } : {}),
        });
        const final = await runOperation(command, `Creating desktop pool ${name}`, operation);
        if (globals(command).json) return printJson(final.result);
        printPool(final.result as DesktopPool);
      },
    );
}

function addPoolReads(pool: Command): void {
  pool
    .command('list')
    .description('List desktop pools')
    .action(async (_options: unknown, command: Command) => {
      const pools = await client(command).request<DesktopPool[]>('GET', `/v1/desktop-pools${projectQuery(command)}`);
      if (globals(command).json) return printJson(pools);
      printTable(
        ['NAME', 'PROJECT', 'MODE', 'IMAGE', 'BASE', 'DESKTOPS', 'IN USE', 'SPARE', 'GRACE'],
        pools.map((p) => [
          p.name,
          p.project,
          p.mode,
          p.image,
          p.base,
          `${p.desktops.length}/${p.size}`,
          p.desktops.filter((d) => d.assignedTo).length,
          p.spare,
          `${p.graceSeconds} s`,
        ]),
      );
    });
  pool
    .command('show <name>')
    .description('Show a pool: its desktops, their states and users, and who may use it')
    .action(async (name: string, _options: unknown, command: Command) => {
      const found = await client(command).request<DesktopPool>('GET', poolPath(name, projectQuery(command)));
      if (globals(command).json) return printJson(found);
      printPool(found);
    });
}
