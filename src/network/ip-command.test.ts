import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { parseJsonOutput, runCommand } from './ip-command.ts';

describe('runCommand', () => {
  it('returns output of a successful command', async () => {
    assert.deepEqual(await runCommand('sh', ['-c', 'echo out; echo err >&2']), { exitCode: 0, stdout: 'out\n', stderr: 'err\n' });
  });

  it('names the command and its stderr when it fails, unless failure is allowed', async () => {
    await assert.rejects(runCommand('sh', ['-c', 'echo "RTNETLINK answers: File exists" >&2; exit 2']), (error: Error & { code: string }) => {
      assert.equal(error.code, 'NET_COMMAND_FAILED');
      assert.match(error.message, /^sh -c .* failed: RTNETLINK answers: File exists$/);
      return true;
    });
    assert.equal((await runCommand('sh', ['-c', 'exit 3'], { allowFailure: true })).exitCode, 3);
    await assert.rejects(runCommand('/nonexistent/tool', []), { code: 'NET_COMMAND_FAILED' });
  });

  it('kills a command that overruns its deadline or is aborted', async () => {
    await assert.rejects(runCommand('sleep', ['5'], { timeoutMs: 100 }), { code: 'NET_COMMAND_TIMEOUT' });
    const controller = new AbortController();
    setTimeout(() => controller.abort(), 50);
    await assert.rejects(runCommand('sleep', ['5'], { signal: controller.signal }), { code: 'NET_COMMAND_ABORTED' });
    await assert.rejects(runCommand('sleep', ['5'], { signal: AbortSignal.abort() }), { code: 'NET_COMMAND_ABORTED' });
  });

  it('feeds standard input', async () => {
    assert.equal((await runCommand('cat', [], { input: 'hello' })).stdout, 'hello');
  });
});

describe('parseJsonOutput', () => {
  it('reads JSON and treats no output as an empty list', () => {
    assert.deepEqual(parseJsonOutput('[{"a":1}]', 'x'), [{ a: 1 }]);
    assert.deepEqual(parseJsonOutput('\n', 'x'), []);
    assert.throws(() => parseJsonOutput('nope', 'x'), { code: 'NET_COMMAND_FAILED' });
  });
});
