import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { after, before, describe, it } from 'node:test';
import { generateOpenApi } from '../../scripts/write-openapi.ts';
import { repoRoot } from '../core/paths.ts';

const run = promisify(execFile);

// The linters' own settings: no telemetry, no update check (the machines that run the tests
// may have no internet, and a lint must not depend on it).
const linterEnv = { ...process.env, REDOCLY_TELEMETRY: 'off', REDOCLY_SUPPRESS_UPDATE_NOTICE: 'true', NO_UPDATE_NOTIFIER: '1' };

/** Runs a linter from node_modules/.bin; a linter exits 1 when it found errors, so stdout is read either way. */
async function lint(bin: string, args: string[]): Promise<string> {
  try {
    return (await run(join(repoRoot, 'node_modules', '.bin', bin), args, { cwd: repoRoot, env: linterEnv, maxBuffer: 64 * 2 ** 20, timeout: 120_000 })).stdout;
  } catch (error) {
    const stdout = (error as { stdout?: string }).stdout;
    if (stdout) return stdout;
    throw error;
  }
}

describe('OpenAPI document lint (Redocly recommended, Spectral OWASP)', () => {
  let dir: string;
  let documentPath: string;

  before(async () => {
    // Inside the repository (.cache is ignored by git) so that redocly.yaml and .spectral.yaml
    // apply; a per-run folder so that parallel runs do not collide.
    mkdirSync(join(repoRoot, '.cache'), { recursive: true });
    dir = mkdtempSync(join(repoRoot, '.cache', 'openapi-lint-'));
    documentPath = join(dir, 'openapi.json');
    writeFileSync(documentPath, await generateOpenApi());
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('has no Redocly errors', async () => {
    const report = JSON.parse(await lint('redocly', ['lint', documentPath, '--format=json', `--config=${join(repoRoot, 'redocly.yaml')}`])) as {
      totals: { errors: number; warnings: number };
      problems: Array<{ ruleId: string; severity: string; message: string; location?: Array<{ pointer?: string }> }>;
    };
    console.log(`redocly: ${report.totals.errors} errors, ${report.totals.warnings} warnings`);
    const errors = report.problems.filter((p) => p.severity === 'error').map((p) => `${p.ruleId} ${p.location?.[0]?.pointer ?? ''}: ${p.message}`);
    assert.deepEqual(errors, [], `Redocly errors:\n${errors.join('\n')}`);
    assert.equal(report.totals.errors, 0);
  });

  it('has no Spectral (OWASP) errors', async () => {
    const results = JSON.parse(
      await lint('spectral', ['lint', documentPath, '--format=json', '--quiet', `--ruleset=${join(repoRoot, '.spectral.yaml')}`]),
    ) as Array<{
      code: string;
      severity: number;
      message: string;
      path: string[];
    }>;
    // Spectral severities: 0 error, 1 warning, 2 info, 3 hint.
    const errors = results.filter((r) => r.severity === 0).map((r) => `${r.code} ${r.path.join('.')}: ${r.message}`);
    console.log(`spectral: ${errors.length} errors, ${results.filter((r) => r.severity === 1).length} warnings`);
    assert.deepEqual(errors, [], `Spectral errors:\n${errors.join('\n')}`);
  });
});
