/** `nubis cluster`: how even the hosts are, balancing them by live migration, and the balancer's settings. */
import type { Static } from '@sinclair/typebox';
import type { Command } from 'commander';
import { NubisError } from '../../core/errors.ts';
import type { BalanceMove, BalanceProposal, BalanceRun, ClusterSettings, ClusterView } from '../../wire/cluster-schemas.ts';
import type { Accepted } from '../../wire/schemas.ts';
import { client, globals, parseInteger, runOperation } from '../common.ts';
import { formatDuration, formatSize, printJson, printTable } from '../output.ts';

type Move = Static<typeof BalanceMove> & { status?: string; error?: string };

/** Registers `cluster` and its subcommands on the program. */
export function registerClusterCommands(program: Command): void {
  const cluster = program.command('cluster').description('The cluster as a whole: balancing VMs across hosts');
  cluster
    .command('show')
    .description("The balancing settings, each host's load, the imbalance and the last balancing run")
    .action(async (_options: unknown, command: Command) => {
      const view = await client(command).request<ClusterView>('GET', '/v1/cluster');
      if (globals(command).json) return printJson(view);
      printView(view);
    });
  cluster
    .command('set')
    .description('Set the balancing policy and the rule for migration TLS')
    .option('--balance <mode>', 'auto (the background balancer moves VMs), manual (only cluster balance) or off', parseMode)
    .option('--threshold <1..5>', '1 careful (act above 0.30 imbalance) .. 5 eager (above 0.05); default 3', parseInteger('--threshold'))
    .option('--interval <duration>', 'time between background rounds, e.g. 60s, 5m (default 5m)', parseDuration('--interval'))
    .option('--cooldown <duration>', 'a VM that moved stays at least this long, e.g. 1h (default 1h)', parseDuration('--cooldown'))
    .option('--max-moves <n>', 'the most moves one run makes (default 8)', parseInteger('--max-moves'))
    .option('--migration-tls <rule>', 'optional (a live migration uses TLS when asked with --tls) or required (one without is refused)', parseMigrationTls)
    .action(async (options: ClusterSetOptions, command: Command) => {
      const body = {
        ...(options.balance !== undefined ? { balance: options.balance } : {}),
        ...(options.threshold !== undefined ? { threshold: options.threshold } : {}),
        ...(options.interval !== undefined ? { intervalSeconds: options.interval } : {}),
        ...(options.cooldown !== undefined ? { cooldownSeconds: options.cooldown } : {}),
        ...(options.maxMoves !== undefined ? { maxMoves: options.maxMoves } : {}),
        ...(options.migrationTls !== undefined ? { migrationTls: options.migrationTls } : {}),
      };
      if (Object.keys(body).length === 0)
        throw new NubisError('VALIDATION_FAILED', 'Give something to set, e.g. --balance auto, --threshold 2 or --migration-tls required');
      const view = await client(command).request<ClusterView>('PATCH', '/v1/cluster', body);
      if (globals(command).json) return printJson(view);
      console.log(describeSettings(view.settings));
    });
  cluster
    .command('balance')
    .description('Even out the hosts by live migration: each move with its benefit and predicted cost')
    .option('--dry-run', 'only show the proposal; nothing moves')
    .action(async (options: { dryRun?: boolean }, command: Command) => {
      const answer = await client(command).request<BalanceProposal | Static<typeof Accepted>>('POST', '/v1/cluster/balance', {
        dryRun: Boolean(options.dryRun),
      });
      if (!('operation' in answer)) {
        if (globals(command).json) return printJson(answer);
        return printProposal(answer, Boolean(options.dryRun));
      }
      const final = await runOperation(command, 'Balancing the cluster', answer.operation);
      const run = final.result as BalanceRun;
      if (globals(command).json) printJson(run);
      else printRun(run);
      // A move that did not complete leaves the cluster less even than planned: say so in the exit code.
      if (run.moves.some((move) => move.status !== 'completed')) process.exitCode = 1;
    });
}

interface ClusterSetOptions {
  balance?: string;
  threshold?: number;
  interval?: number;
  cooldown?: number;
  maxMoves?: number;
  migrationTls?: string;
}

function parseMigrationTls(value: string): string {
  if (!['optional', 'required'].includes(value)) throw new NubisError('VALIDATION_FAILED', `--migration-tls must be optional or required, not ${value}`);
  return value;
}

function parseMode(value: string): string {
  if (!['auto', 'manual', 'off'].includes(value)) throw new NubisError('VALIDATION_FAILED', `--balance must be auto, manual or off, not ${value}`);
  return value;
}

/** A parser of durations as `90`, `90s`, `5m`, `1h` or `1d`, to seconds. */
export function parseDuration(name: string): (value: string) => number {
  const units: Record<string, number> = { '': 1, s: 1, m: 60, h: 3600, d: 86400 };
  return (value: string): number => {
    const match = /^(\d+)(s|m|h|d)?$/.exec(value);
    if (!match) throw new NubisError('VALIDATION_FAILED', `${name} must be a duration such as 60s, 5m or 1h, not ${value}`);
    return Number(match[1]) * units[match[2] ?? ''];
  };
}

function describeSettings(settings: ClusterSettings): string {
  return `Balancing ${settings.balance}, threshold ${settings.threshold}, every ${formatDuration(settings.intervalSeconds)}, cooldown ${formatDuration(settings.cooldownSeconds)}, at most ${settings.maxMoves} moves per run; migration TLS ${settings.migrationTls}`;
}

function printView(view: ClusterView): void {
  console.log(describeSettings(view.settings));
  const { imbalance } = view;
  console.log(
    `Imbalance ${imbalance.value} (acts above ${imbalance.actAbove}, stops at ${imbalance.target}; ${imbalance.roundsAbove} background round(s) above in a row)`,
  );
  printTable(
    ['HOST', 'STATUS', 'LOAD', 'MEMORY', 'VCPUS'],
    imbalance.hosts.map((h) => [h.host, h.status, percent(h.load.load), percent(h.load.memory), percent(h.load.cpu)]),
  );
  if (view.running) console.log(`\nA balancing run is under way: operation ${view.running}`);
  if (view.lastRun) {
    console.log('');
    printRun(view.lastRun);
  }
}

function printProposal(proposal: BalanceProposal, dryRun: boolean): void {
  const outcomes: Record<BalanceProposal['outcome'], string> = {
    'below-threshold': `nothing to do: the imbalance is not above ${proposal.threshold.actAbove}`,
    balanced: `brings it to ${proposal.imbalanceAfter}, at or under the target ${proposal.threshold.target}`,
    'no-move-pays': proposal.moves.length > 0 ? `brings it to ${proposal.imbalanceAfter}; no further move pays` : 'no move pays for its cost',
    'max-moves': `brings it to ${proposal.imbalanceAfter} at the limit of moves per run`,
    'too-few-hosts': 'fewer than two hosts are online',
  };
  console.log(`Imbalance ${proposal.imbalanceBefore} (threshold ${proposal.threshold.level}): ${outcomes[proposal.outcome]}`);
  if (proposal.moves.length > 0) printMoves(proposal.moves);
  else if (!dryRun) console.log('Nothing moved.');
  if (proposal.held.length > 0) {
    console.log('\nStaying:');
    printTable(
      ['VM', 'HOST', 'WHY'],
      proposal.held.map((h) => [h.vm, h.host, h.reason]),
    );
  }
}

function printRun(run: BalanceRun): void {
  const after = run.imbalanceAfter === undefined ? '' : ` -> ${run.imbalanceAfter}`;
  console.log(
    `Last run ${run.at} (${run.trigger}${run.operationId ? `, operation ${run.operationId}` : ''}): imbalance ${run.imbalanceBefore}${after}, ${run.outcome}`,
  );
  if (run.moves.length > 0) printMoves(run.moves);
}

function printMoves(moves: Move[]): void {
  const withStatus = moves.some((m) => m.status !== undefined);
  printTable(
    ['VM', 'PROJECT', 'FROM', 'TO', 'BENEFIT', 'PREDICTED', 'SENDS', ...(withStatus ? ['RESULT'] : [])],
    moves.map((m) => [
      m.vm,
      m.project,
      m.from,
      m.to,
      m.benefit.toFixed(3),
      m.cost.timeMs === undefined ? undefined : `${(m.cost.timeMs / 1000).toFixed(1)} s`,
      m.cost.bytes === undefined ? undefined : formatSize(m.cost.bytes),
      ...(withStatus ? [`${m.status ?? ''}${m.error ? `: ${m.error}` : ''}`] : []),
    ]),
  );
}

function percent(share: number): string {
  return `${Math.round(share * 100)}%`;
}
