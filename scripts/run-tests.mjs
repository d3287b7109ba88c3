#!/usr/bin/env node
// `npm test` after setup: the static checks (types, import circles, lint and format), then every
// test file with Node's test runner, each in a process of its own, printing each file's time as it
// ends and a table of them at the close. Files that boot guests run one at a time (two cores, TCG
// guests); beside them a second lane runs, one at a time too, the files that boot none (unit
// tests under src/, the API against a fake cluster under test/api and test/access), so those
// minutes hide in the guests' waits. NUBIS_TEST_LANES=1 runs everything in one lane.
// Arguments narrow the run to files whose path contains one of them and skip the static checks
// (add --checks to run them anyway).
import { spawn, spawnSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const repoRoot = join(dirname(fileURLToPath(import.meta.url)), '..');
const bin = (name) => join(repoRoot, 'node_modules', '.bin', name);

function findTests(dir) {
  const found = [];
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) found.push(...findTests(path));
    else if (entry.name.endsWith('.test.ts')) found.push(relative(repoRoot, path));
  }
  return found.sort();
}

const args = process.argv.slice(2);
const filters = args.filter((arg) => !arg.startsWith('--'));
const runChecks = filters.length === 0 || args.includes('--checks');
const files = [...findTests(join(repoRoot, 'src')), ...findTests(join(repoRoot, 'test'))].filter(
  (file) => filters.length === 0 || filters.some((filter) => file.includes(filter)),
);
if (files.length === 0) {
  console.error(`No test files match ${filters.join(', ')}`);
  process.exit(1);
}

const seconds = (ms) => `${(ms / 1000).toFixed(1)} s`;
const failedChecks = [];
if (runChecks) {
  const checks = [
    ['type check (tsc --noEmit)', bin('tsc'), ['--noEmit', '-p', repoRoot]],
    ['import circles', process.execPath, [join(repoRoot, 'scripts', 'check-import-cycles.mjs')]],
    ['function and file sizes', process.execPath, [join(repoRoot, 'scripts', 'check-sizes.mjs')]],
    ['lint and format (biome ci)', bin('biome'), ['ci', repoRoot]],
  ];
  for (const [name, command, commandArgs] of checks) {
    const started = Date.now();
    const result = spawnSync(command, commandArgs, { cwd: repoRoot, stdio: 'inherit' });
    const ok = result.status === 0;
    if (!ok) failedChecks.push(name);
    console.log(`${ok ? '✔' : '✖'} ${name} (${seconds(Date.now() - started)})`);
  }
}

/** Files that boot no guest: they may run beside the ones that do. */
const LIGHT = [/^src\//, /^test\/api\//, /^test\/access\//];

/**
 * Runs one test file in its own process; resolves with its counts. Its output is echoed as it
 * comes when `live`, else printed in one block when the file ends (so two lanes never interleave
 * inside a file's report).
 */
function runFile(file, live) {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, ['--import', 'tsx', '--test', '--test-reporter=spec', file], {
      cwd: repoRoot,
      stdio: ['ignore', 'pipe', live ? 'inherit' : 'pipe'],
    });
    let output = '';
    const collect = (chunk) => {
      output += chunk;
      if (live) process.stdout.write(chunk);
    };
    child.stdout.on('data', collect);
    child.stderr?.on('data', collect);
    child.on('close', (code) => {
      if (!live) process.stdout.write(`\n${output}`);
      const count = (name) => Number(new RegExp(`^ℹ ${name} (\\d+)$`, 'm').exec(output)?.[1] ?? 0);
      // A file that dies before its tests report counts as one failure.
      const failed = count('fail') + count('cancelled') || (code === 0 ? 0 : 1);
      // The reporter's own account of what failed, printed again at the very end of the run, where
      // a reader of the last lines of a long log (CI) finds it.
      const failures = failed > 0 ? (/\n✖ failing tests:\n([\s\S]*)$/.exec(output)?.[1] ?? output.slice(-3000)) : '';
      resolve({ passed: count('pass'), failed, skipped: count('skipped') + count('todo'), failures });
    });
  });
}

const times = [];
const totals = { passed: 0, failed: 0, skipped: 0 };
const startedAll = Date.now();

/** Runs `lane`'s files one after another. */
async function runLane(lane, live) {
  for (const file of lane) {
    const started = Date.now();
    const counts = await runFile(file, live);
    const ms = Date.now() - started;
    times.push({ file, ms, ...counts });
    for (const key of Object.keys(totals)) totals[key] += counts[key];
    console.log(`── ${file}: ${seconds(ms)}, ${counts.passed} passed, ${counts.failed} failed${counts.skipped ? `, ${counts.skipped} skipped` : ''}`);
  }
}

const oneLane = process.env.NUBIS_TEST_LANES === '1';
const light = oneLane ? [] : files.filter((file) => LIGHT.some((pattern) => pattern.test(file)));
const heavy = files.filter((file) => !light.includes(file));
// With one lane empty the other streams its output live, as a run of a single file should.
await Promise.all([runLane(heavy, true), runLane(light, heavy.length === 0)]);
times.sort((a, b) => a.file.localeCompare(b.file));

console.log('\nTime per test file:');
for (const { file, ms, failed } of times) console.log(`  ${seconds(ms).padStart(8)}  ${failed ? '✖' : '✔'} ${file}`);
console.log(
  `  ${seconds(Date.now() - startedAll).padStart(8)}  all files${light.length > 0 && heavy.length > 0 ? ` (${light.length} of them beside the others)` : ''}`,
);
for (const { file, failures } of times.filter((time) => time.failed > 0)) console.log(`\nWhat failed in ${file}:\n${failures.trim().slice(0, 6000)}`);
if (failedChecks.length > 0) console.log(`Static checks failed: ${failedChecks.join(', ')}`);
console.log(`${totals.passed} passed, ${totals.failed + failedChecks.length} failed, ${totals.skipped} skipped`);
process.exit(totals.failed + failedChecks.length > 0 ? 1 : 0);
