#!/usr/bin/env node
// Runs every test with Node's test runner: unit tests beside the code (src/**/*.test.ts), then the
// integration tests under test/ that boot real VMs, one file at a time (two cores, TCG guests).
// Arguments narrow the run to files whose path contains one of them.
import { spawnSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const repoRoot = join(dirname(fileURLToPath(import.meta.url)), '..');

function findTests(dir) {
  const found = [];
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) found.push(...findTests(path));
    else if (entry.name.endsWith('.test.ts')) found.push(relative(repoRoot, path));
  }
  return found.sort();
}

const filters = process.argv.slice(2);
const files = [...findTests(join(repoRoot, 'src')), ...findTests(join(repoRoot, 'test'))].filter(
  (file) => filters.length === 0 || filters.some((filter) => file.includes(filter)),
);
if (files.length === 0) {
  console.error(`No test files match ${filters.join(', ')}`);
  process.exit(1);
}
const result = spawnSync(
  process.execPath,
  ['--import', 'tsx', '--test', '--test-concurrency=1', '--test-reporter=spec', ...files],
  { cwd: repoRoot, stdio: 'inherit' },
);
process.exit(result.status ?? 1);
