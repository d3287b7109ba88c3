import assert from 'node:assert/strict';
import { closeSync, mkdtempSync, openSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { isNubisError } from './errors.ts';
import { runCommand } from './run-command.ts';

describe('runCommand', () => {
  it('resolves with what the program printed', async () => {
    const output = await runCommand('sh', ['-c', 'echo out; echo err >&2'], { timeoutMs: 5000 });
    assert.deepEqual(output, { stdout: 'out\n', stderr: 'err\n' });
  });

  it('rejects a non-zero exit with its status and the end of stderr', async () => {
    await assert.rejects(runCommand('sh', ['-c', 'echo broken >&2; exit 3'], { timeoutMs: 5000 }), (error) => {
      assert.ok(isNubisError(error, 'COMMAND_FAILED'));
      assert.match(error.message, /exited with status 3: broken/);
      assert.equal(error.details?.exitCode, 3);
      return true;
    });
  });

  it('names a program that is not installed', async () => {
    await assert.rejects(runCommand('nubis-no-such-program', [], { timeoutMs: 5000 }), (error) => isNubisError(error, 'COMMAND_MISSING'));
  });

  it('kills a program that passes its deadline', async () => {
    const started = Date.now();
    await assert.rejects(runCommand('sleep', ['30'], { timeoutMs: 200 }), (error) => isNubisError(error, 'COMMAND_TIMEOUT'));
    // A grandchild that keeps the output pipes open does not hold the caller either.
    await assert.rejects(runCommand('sh', ['-c', 'sleep 30; true'], { timeoutMs: 200 }), (error) => isNubisError(error, 'COMMAND_TIMEOUT'));
    assert.ok(Date.now() - started < 5000);
  });

  it('kills a program when the signal aborts and rejects with its reason', async () => {
    const controller = new AbortController();
    const reason = new Error('cancelled by test');
    setTimeout(() => controller.abort(reason), 100);
    await assert.rejects(runCommand('sleep', ['30'], { timeoutMs: 60_000, signal: controller.signal }), (error) => error === reason);
    await assert.rejects(runCommand('true', [], { timeoutMs: 5000, signal: controller.signal }), (error) => error === reason);
  });

  it("gives every byte back with encoding 'latin1', also bytes that are not UTF-8", async () => {
    const { stdout } = await runCommand('printf', ['a\\377\\376/\\303\\234'], { timeoutMs: 5000, encoding: 'latin1' });
    assert.deepEqual(Buffer.from(stdout, 'latin1'), Buffer.from([0x61, 0xff, 0xfe, 0x2f, 0xc3, 0x9c]));
  });

  it('hands open files to the program as fds 3 and up', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'nubis-run-command-'));
    try {
      writeFileSync(join(dir, 'file'), 'from fd 3');
      const fd = openSync(join(dir, 'file'), 'r');
      try {
        assert.equal((await runCommand('cat', ['/dev/fd/3'], { timeoutMs: 5000, passFds: [fd] })).stdout, 'from fd 3');
      } finally {
        closeSync(fd);
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
