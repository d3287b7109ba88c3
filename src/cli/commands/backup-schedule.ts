/** `nubis backup schedule VM --every 1h --keep-last 24 ...`, `schedule list|show|delete`: backup schedules with retention. */
import type { Command } from 'commander';
import type { BackupRetention, BackupSchedule } from '../../wire/backup-schemas.ts';
import { client, globals, parseInteger, projectQuery } from '../common.ts';
import { printJson, printTable } from '../output.ts';

const schedulePath = (vm: string): string => `/v1/backup-schedules/${encodeURIComponent(vm)}`;

/** The retention flags, in the order PBS applies the rules, and the field each sets. */
const KEEP_OPTIONS: Array<[flag: string, rule: keyof BackupRetention, what: string]> = [
  ['--keep-last', 'keepLast', 'keep the N newest backups'],
  ['--keep-hourly', 'keepHourly', 'keep the newest backup of each of the N newest hours (UTC) that have one'],
  ['--keep-daily', 'keepDaily', 'keep the newest backup of each of the N newest days (UTC) that have one'],
  ['--keep-weekly', 'keepWeekly', 'keep the newest backup of each of the N newest ISO weeks that have one'],
  ['--keep-monthly', 'keepMonthly', 'keep the newest backup of each of the N newest months (UTC) that have one'],
  ['--keep-yearly', 'keepYearly', 'keep the newest backup of each of the N newest years (UTC) that have one'],
];

/** "last 24, daily 7", or "all" without a rule. */
export function describeRetention(retention: BackupRetention): string {
  const rules = KEEP_OPTIONS.filter(([, rule]) => retention[rule] !== undefined).map(([flag, rule]) => `${flag.slice(7)} ${retention[rule]}`);
  return rules.length > 0 ? rules.join(', ') : 'all';
}

/** How the last run ended, in a line: "ok bak-..., pruned 2", "FAILED: CODE: message", or "-". */
export function describeLastRun(schedule: BackupSchedule, maxMessage = Number.POSITIVE_INFINITY): string {
  const last = schedule.lastRun;
  if (!last) return '-';
  if (last.status === 'succeeded') return `ok ${last.backup ?? ''}${last.pruned > 0 ? `, pruned ${last.pruned}` : ''}`;
  return `FAILED: ${failureOf(schedule, maxMessage)}`;
}

/** Why the last run failed: "CODE: message", and the backup it took when only its pruning failed. */
export function failureOf(schedule: BackupSchedule, maxMessage = Number.POSITIVE_INFINITY): string {
  const last = schedule.lastRun;
  const error = last?.error ? `${last.error.code}: ${last.error.message}` : 'unknown error';
  const cut = error.length > maxMessage ? `${error.slice(0, maxMessage - 1)}…` : error;
  return last?.backup ? `${cut} (backup ${last.backup} was taken, pruned ${last.pruned})` : cut;
}

/** Registers `backup schedule` and its subcommands under `backup`. */
export function addScheduleCommands(backup: Command): void {
  const schedule = backup
    .command('schedule')
    .description('Backup schedules with retention: nubis backup schedule VM --every 1h --keep-last 24 --keep-daily 7 makes or replaces one');
  const set = schedule
    .command('set <vm>', { isDefault: true })
    .description("Make or replace a VM's schedule: a backup every interval (1m to 366d), then the VM's backups pruned by the --keep rules")
    .requiredOption('--every <interval>', 'how often: minutes, hours, days or weeks, e.g. 15m, 1h, 6h, 1d');
  for (const [flag, , what] of KEEP_OPTIONS) set.option(`${flag} <n>`, what, parseInteger(flag));
  set.action(async (vm: string, options: { every: string } & BackupRetention, command: Command) => {
    const retention = Object.fromEntries(KEEP_OPTIONS.filter(([, rule]) => options[rule] !== undefined).map(([, rule]) => [rule, options[rule]]));
    const saved = await client(command).request<BackupSchedule>('PUT', `${schedulePath(vm)}${projectQuery(command)}`, { every: options.every, retention });
    if (globals(command).json) return printJson(saved);
    console.log(`${saved.vm}: a backup every ${saved.every}, keeping ${describeRetention(saved.retention)}; next at ${saved.nextRunAt}`);
  });
  schedule
    .command('list')
    .description("List the project's backup schedules with their next run and how their last run ended")
    .action(async (_options: unknown, command: Command) => {
      const schedules = await client(command).request<BackupSchedule[]>('GET', `/v1/backup-schedules${projectQuery(command)}`);
      if (globals(command).json) return printJson(schedules);
      printTable(
        ['VM', 'EVERY', 'KEEP', 'NEXT RUN', 'LAST RUN', 'OUTCOME'],
        schedules.map((s) => [
          s.vm,
          s.every,
          describeRetention(s.retention),
          s.nextRunAt,
          s.running ? `running since ${s.running.since}` : s.lastRun?.startedAt,
          describeLastRun(s, 80),
        ]),
      );
    });
  schedule
    .command('show <vm>')
    .description("Show a VM's backup schedule and its last run")
    .action(async (vm: string, _options: unknown, command: Command) => {
      const shown = await client(command).request<BackupSchedule>('GET', `${schedulePath(vm)}${projectQuery(command)}`);
      if (globals(command).json) return printJson(shown);
      const last = shown.lastRun;
      const rows: Array<[string, string | null | undefined]> = [
        ['VM', shown.vm],
        ['Every', shown.every],
        ['Keep', describeRetention(shown.retention)],
        ['Next run', shown.nextRunAt],
        ['Running', shown.running ? `since ${shown.running.since}${shown.running.operation ? `, operation ${shown.running.operation}` : ''}` : undefined],
        ['Last run', last ? `${last.startedAt} to ${last.finishedAt}` : 'never'],
        ['Outcome', last ? describeLastRun(shown) : undefined],
        ['Operation', last?.operation],
      ];
      for (const [key, value] of rows) if (value) console.log(`${`${key}:`.padEnd(11)} ${value}`);
    });
  schedule
    .command('delete <vm>')
    .description("Delete a VM's backup schedule (its backups stay)")
    .action(async (vm: string, _options: unknown, command: Command) => {
      const deleted = await client(command).request<{ deleted: string }>('DELETE', `${schedulePath(vm)}${projectQuery(command)}`);
      if (globals(command).json) return printJson(deleted);
      console.log(`${deleted.deleted}: backup schedule deleted`);
    });
}
