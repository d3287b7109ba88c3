#!/usr/bin/env node
// The `nubis` command: runs the TypeScript CLI through tsx, so there is no build step.
import { spawnSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const repoRoot = join(dirname(fileURLToPath(import.meta.url)), '..');
const result = spawnSync(process.execPath, ['--import', 'tsx', join(repoRoot, 'src/cli/main.ts'), ...process.argv.slice(2)], {
  stdio: 'inherit',
});
if (result.signal) process.kill(process.pid, result.signal);
process.exit(result.status ?? 1);
