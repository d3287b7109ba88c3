/** `nubis backup create|list|show|verify|delete|restore|file-restore|collect|schedule`: backups of VMs in the backup store. */
import type { Static } from '@sinclair/typebox';
import type { Command } from 'commander';
import { writeFileSync } from 'node:fs';
import type { Backup, BackupAudit, BackupSchedule, BackupSearchHit, BackupVerification, RestoredFile } from '../../wire/backup-schemas.ts';
import type { Accepted, Vm } from '../../wire/schemas.ts';
import { client, globals, parseInteger, projectQuery, runOperation } from '../common.ts';
import { formatSize } from '../../storage/size.ts';
import { printJson, printTable } from '../output.ts';
import { addScheduleCommands, failureOf } from './backup-schedule.ts';

const backupPath = (backup: string): string => `/v1/backups/${encodeURIComponent(backup)}`;

/** Registers `backup` and its subcommands on the program. */
export function registerBackupCommands(program: Command): void {
  const backup = program.command('backup').description('Backups of VMs: encrypted before they leave the host, deduplicated, incremental');
  backup
    .command('create <vm>')
    .description("Back a VM's disks up, crash-consistent while it runs; only chunks the store has not got are sent")
    .action(async (vm: string, _options: unknown, command: Command) => {
      const { operation } = await client(command).request<Static<typeof Accepted>>('POST', `/v1/backups${projectQuery(command)}`, { vm });
      const final = await runOperation(command, `Backing up ${vm}`, operation);
      if (globals(command).json) return printJson(final.result);
      const taken = final.result as Backup;
      console.log(
        `${taken.id}: ${vm}, ${formatSize(taken.sizeBytes)} of disks, ${formatSize(taken.sentBytes)} sent in ${(taken.durationMs / 1000).toFixed(1)} s`,
      );
    });
  backup
    .command('list')
    .description("List the project's backups, oldest first, then the schedules whose last run failed")
    .option('--vm <vm>', 'only the backups of this VM')
    .action(async (options: { vm?: string }, command: Command) => {
      const query = projectQuery(command);
      const vm = options.vm ? `${query ? '&' : '?'}vm=${encodeURIComponent(options.vm)}` : '';
      const backups = await client(command).request<Backup[]>('GET', `/v1/backups${query}${vm}`);
      if (globals(command).json) return printJson(backups);
      printTable(
        ['ID', 'VM', 'VM WAS', 'SIZE', 'SENT', 'TOOK', 'TAKEN'],
        backups.map((b) => [b.id, b.vm, b.vmState, formatSize(b.sizeBytes), formatSize(b.sentBytes), `${(b.durationMs / 1000).toFixed(1)} s`, b.createdAt]),
      );
      // A backup that is missing because its scheduled run failed shows here too, as its FAILED
      // line: the list alone would look complete (older failures: nubis operation list).
      const schedules = await client(command).request<BackupSchedule[]>('GET', `/v1/backup-schedules${query}`);
      const failed = schedules.filter((s) => s.lastRun?.status === 'failed' && (!options.vm || s.vm === options.vm));
      if (failed.length === 0) return;
      console.log('');
      printTable(
        ['LAST SCHEDULED RUN', 'VM', 'AT', 'ERROR'],
        failed.map((s) => ['FAILED', s.vm, s.lastRun?.startedAt, failureOf(s, 100)]),
      );
    });
  backup
    .command('show <backup>')
    .description('Show a backup: its disks, what it sent, what the store keeps')
    .action(async (id: string, _options: unknown, command: Command) => {
      const shown = await client(command).request<Backup>('GET', `${backupPath(id)}${projectQuery(command)}`);
      if (globals(command).json) return printJson(shown);
      console.log(`${shown.id}: VM ${shown.vm} (${shown.vmState}) at ${shown.createdAt}, stored ${formatSize(shown.storedBytes)}`);
      printTable(
        ['DISK', 'SOURCE', 'SIZE', 'CHUNKS', 'ZERO', 'NEW', 'SENT', 'READ'],
        shown.disks.map((d) => [
          d.id,
          d.source,
          formatSize(d.sizeBytes),
          String(d.chunks),
          String(d.zeroChunks),
          String(d.newChunks),
          formatSize(d.sentBytes),
          // What changed-block tracking spared: only the chunks written since an earlier backup were read.
          d.readBytes === undefined ? '' : `${formatSize(d.readBytes)}${d.changedSince ? ` (changed since ${d.changedSince})` : ''}`,
        ]),
      );
    });
  backup
    .command('verify <backup>')
    .description("Check every chunk of a backup: present, unaltered, and opening with the project's key")
    .action(async (id: string, _options: unknown, command: Command) => {
      const { operation } = await client(command).request<Static<typeof Accepted>>('POST', `${backupPath(id)}/verify${projectQuery(command)}`);
      const final = await runOperation(command, `Verifying ${id}`, operation);
      if (globals(command).json) return printJson(final.result);
      console.log(`${id}: intact, ${(final.result as BackupVerification).checkedChunks} chunks checked`);
    });
  backup
    .command('delete <backup>')
    .description('Delete a backup (its chunks go at the next collection when no other backup uses them)')
    .action(async (id: string, _options: unknown, command: Command) => {
      const deleted = await client(command).request<{ deleted: string }>('DELETE', `${backupPath(id)}${projectQuery(command)}`);
      if (globals(command).json) return printJson(deleted);
      console.log(`${id}: deleted`);
    });
  addRestoreCommands(backup);
  addAuditCommands(backup);
  addScheduleCommands(backup);
}

function addAuditCommands(backup: Command): void {
  backup
    .command('challenge [backup]')
    .description("Make the store prove it still holds a backup's data (every backup's without one), without reading it back")
    .option('--blocks <n>', 'random 4 KiB blocks to challenge (460 finds 1% damage with >99% probability)', parseInteger('--blocks'))
    .action(async (id: string | undefined, options: { blocks?: number }, command: Command) => {
      const body = { ...(id ? { backup: id } : {}), ...(options.blocks ? { blocks: options.blocks } : {}) };
      const audits = await client(command).request<BackupAudit[]>('POST', `/v1/backups/challenge${projectQuery(command)}`, body);
      if (globals(command).json) return printJson(audits);
      printTable(
        ['BACKUP', 'RESULT', 'BLOCKS', 'PROOF', 'STORE', 'VERIFY'],
        audits.map((a) => [
          a.backup,
          a.passed ? 'passed' : `FAILED${a.error ? `: ${a.error}` : ''}`,
          String(a.blocks),
          formatSize(a.proofBytes),
          `${a.storeMs} ms`,
          `${a.verifyMs} ms`,
        ]),
      );
      if (audits.some((a) => !a.passed)) process.exitCode = 1;
    });
  backup
    .command('audits <backup>')
    .description("List a backup's proof-of-retrievability challenges, oldest first")
    .action(async (id: string, _options: unknown, command: Command) => {
      const audits = await client(command).request<BackupAudit[]>('GET', `${backupPath(id)}/audits${projectQuery(command)}`);
      if (globals(command).json) return printJson(audits);
      printTable(
        ['AT', 'RESULT', 'BLOCKS', 'STORE', 'VERIFY'],
        audits.map((a) => [a.at, a.passed ? 'passed' : `FAILED${a.error ? `: ${a.error}` : ''}`, String(a.blocks), `${a.storeMs} ms`, `${a.verifyMs} ms`]),
      );
    });
  backup
    .command('search <word>')
    .description("Find the backed-up files whose name has WORD, from the backups' encrypted catalogs (the store never sees the word)")
    .action(async (word: string, _options: unknown, command: Command) => {
      const hits = await client(command).request<BackupSearchHit[]>('POST', `/v1/backups/search${projectQuery(command)}`, { word });
      if (globals(command).json) return printJson(hits);
      printTable(
        ['BACKUP', 'VM', 'TAKEN', 'DISK', 'PATH'],
        hits.flatMap((hit) => hit.files.map((file) => [hit.backup, hit.vm, hit.createdAt, file.disk, file.path])),
      );
    });
}

function addRestoreCommands(backup: Command): void {
  backup
    .command('restore <backup>')
    .description('Make a new VM of a backup: its volumes restored into new dir-pool volumes NAME-VOLUME')
    .requiredOption('--as <name>', 'name of the new VM')
    .option('--pool <pool>', 'dir pool for the restored volumes (default: each volume its own pool)')
    .option('--host <host>', "host of the pool's folder the volumes go to")
    .option('--live', 'start the VM at once: its disks read the backup on first use while the rest is pulled in the background')
    .action(async (id: string, options: { as: string; pool?: string; host?: string; live?: boolean }, command: Command) => {
      const body = {
        name: options.as,
        ...(options.pool ? { pool: options.pool } : {}),
        ...(options.host ? { host: options.host } : {}),
        ...(options.live ? { live: true } : {}),
      };
      const { operation } = await client(command).request<Static<typeof Accepted>>('POST', `${backupPath(id)}/restore${projectQuery(command)}`, body);
      const final = await runOperation(command, `Restoring ${id} as ${options.as}`, operation);
      if (globals(command).json) return printJson(final.result);
      const vm = final.result as Vm & { restore: { live: boolean; runningAfterMs: number; doneAfterMs?: number } };
      const seconds = (ms: number) => `${(ms / 1000).toFixed(1)} s`;
      const times = vm.restore.live
        ? `running after ${seconds(vm.restore.runningAfterMs)}, all of its disks in after ${seconds(vm.restore.doneAfterMs ?? 0)}`
        : `running after ${seconds(vm.restore.runningAfterMs)}`;
      console.log(`${vm.name}: restored from ${id} on ${vm.host}, ${vm.state}, ${times}`);
    });
  backup
    .command('file-restore <backup> <path>')
    .description('Restore one file of a backup (as backup search names it), without a VM')
    .option('--disk <disk>', 'the disk it is on, as backup search names it (root, or pool/volume); needed when the backup holds several')
    .option('--output <file>', 'write it to this new file (default: standard output)')
    .action(async (id: string, path: string, options: { disk?: string; output?: string }, command: Command) => {
      const body = { path, ...(options.disk ? { disk: options.disk } : {}) };
      const restored = await client(command).request<RestoredFile>('POST', `${backupPath(id)}/file-restore${projectQuery(command)}`, body);
      const content = Buffer.from(restored.contentBase64, 'base64');
      // 'wx': an existing file is never overwritten.
      if (options.output) writeFileSync(options.output, content, { flag: 'wx', mode: 0o600 });
      if (globals(command).json) return printJson({ ...restored, ...(options.output ? { output: options.output, contentBase64: undefined } : {}) });
      if (options.output)
        console.log(`${options.output}: ${restored.path} of ${restored.disk} in ${id}, ${restored.sizeBytes} bytes, sha256 ${restored.sha256}`);
      else process.stdout.write(content);
    });
  backup
    .command('collect')
    .description('Remove the chunks no backup uses any more (admin)')
    .option('--grace <seconds>', 'keep chunks written or found this recently', parseInteger('--grace'), 86_400)
    .action(async (options: { grace: number }, command: Command) => {
      const done = await client(command).request<{ removedChunks: number; freedBytes: number; keptChunks: number }>('POST', '/v1/backup-store/collect', {
        graceSeconds: options.grace,
      });
      if (globals(command).json) return printJson(done);
      console.log(`Removed ${done.removedChunks} chunks (${formatSize(done.freedBytes)}), kept ${done.keptChunks}`);
    });
}
