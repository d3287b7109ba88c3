/** `nubis audit`: read the tamper-evident audit log, verify it, prove entries, export it. */
import { readFile, writeFile } from 'node:fs/promises';
import type { Static } from '@sinclair/typebox';
import type { Command } from 'commander';
import type { AuditEntry, AuditVerifyReport, ConsistencyProof, InclusionProof } from '../../wire/access-schemas.ts';
import { client, globals, parseInteger } from '../common.ts';
import { printJson, printTable } from '../output.ts';
import { NubisError } from '../../core/errors.ts';

/** Registers `audit` and its subcommands on the program. */
export function registerAuditCommands(program: Command): void {
  const audit = program.command('audit').description('The tamper-evident audit log (a Merkle tree with signed heads, RFC 9162)');
  audit
    .command('list')
    .description('Entries, newest first: of a project (its owners), or all (platform admins)')
    .option('--project <name>', 'of this project')
    .option('--user <name>', 'of this user')
    .option('--since <time>', 'from this ISO time on, e.g. 2026-11-29T10:00:00Z')
    .option('--limit <n>', 'at most this many', parseInteger('--limit'), 100)
    .action(async (options: { project?: string; user?: string; since?: string; limit: number }, command: Command) => {
      const query = new URLSearchParams({ limit: String(options.limit) });
      for (const key of ['project', 'user', 'since'] as const) if (options[key]) query.set(key, options[key] as string);
      const entries = await client(command).request<Array<Static<typeof AuditEntry>>>('GET', `/v1/audit?${query}`);
      if (globals(command).json) return printJson(entries);
      printTable(
        ['SEQ', 'AT', 'USER', 'TOKEN', 'PROJECT', 'ACTION', 'ROUTE', 'RESULT'],
        entries.map((e) => [e.seq, e.at, e.user ?? '-', e.token, e.project, e.action, `${e.method} ${e.route}`, `${e.result}${e.code ? ` ${e.code}` : ''}`]),
      );
    });
  audit
    .command('verify')
    .description('Recompute the tree, check every signed head, and a head kept outside the data folder')
    .option('--head <file>', 'a published head (JSON) to check the log against (default: the file Nubis publishes to)')
    .action(async (options: { head?: string }, command: Command) => {
      const head = options.head ? JSON.parse(await readFile(options.head, 'utf8')) : undefined;
      const report = await client(command).request<Static<typeof AuditVerifyReport>>('POST', '/v1/audit/verify', head ? { head } : {});
      if (globals(command).json) printJson(report);
      else {
        for (const problem of report.problems) console.log(`PROBLEM: ${problem}`);
        for (const note of report.notes) console.log(`note: ${note}`);
        const against = report.externalHead ? `, checked against an external head of ${report.externalHead.treeSize} entries` : '';
        console.log(`${report.ok ? 'OK' : 'FAILED'}: ${report.entries} entries, ${report.heads} signed heads${against}`);
      }
      if (!report.ok) throw new NubisError('AUDIT_TAMPERED', `The audit log failed verification (${report.problems.length} problems)`);
    });
  audit
    .command('proof <seq>')
    .description('Inclusion proof of an entry in a signed tree')
    .option('--tree-size <n>', 'the tree size (default: the latest signed head)', parseInteger('--tree-size'))
    .action(async (seq: string, options: { treeSize?: number }, command: Command) => {
      const proof = await client(command).request<Static<typeof InclusionProof>>(
        'GET',
        `/v1/audit/entries/${encodeURIComponent(seq)}/proof${options.treeSize ? `?treeSize=${options.treeSize}` : ''}`,
      );
      if (globals(command).json) return printJson(proof);
      console.log(`entry ${proof.seq} (leaf ${proof.leafIndex}) in tree ${proof.treeSize}, root ${proof.rootHash}\nleaf ${proof.leafHash}`);
      for (const hash of proof.proof) console.log(`  ${hash}`);
    });
  audit
    .command('consistency <from> <to>')
    .description('Consistency proof: the tree of TO entries extends the tree of FROM entries')
    .action(async (from: string, to: string, _options: unknown, command: Command) => {
      const proof = await client(command).request<Static<typeof ConsistencyProof>>(
        'GET',
        `/v1/audit/consistency?from=${encodeURIComponent(from)}&to=${encodeURIComponent(to)}`,
      );
      if (globals(command).json) return printJson(proof);
      console.log(`tree ${proof.fromSize} (root ${proof.fromRoot}) -> tree ${proof.toSize} (root ${proof.toRoot})`);
      for (const hash of proof.proof) console.log(`  ${hash}`);
    });
  audit
    .command('export <file>')
    .description('Write log, heads and public key for offline verification (node scripts/verify-audit-export.mjs FILE)')
    .action(async (file: string, _options: unknown, command: Command) => {
      const exported = await client(command).request<{ entries: unknown[]; heads: unknown[] }>('GET', '/v1/audit/export');
      await writeFile(file, `${JSON.stringify(exported)}\n`, { mode: 0o600 });
      if (globals(command).json) return printJson({ file, entries: exported.entries.length, heads: exported.heads.length });
      console.log(`${file}: ${exported.entries.length} entries, ${exported.heads.length} signed heads`);
    });
}
