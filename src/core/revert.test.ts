import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { Revert } from './revert.ts';

describe('Revert', () => {
  it('undoes the steps newest first when the build fails, and rethrows the original error', async () => {
    const undone: string[] = [];
    await assert.rejects(
      Revert.run(async (revert) => {
        revert.add('one', () => undone.push('one'));
        revert.add('two', async () => undone.push('two'));
        throw new Error('step three failed');
      }),
      /step three failed/,
    );
    assert.deepEqual(undone, ['two', 'one']);
  });

  it('keeps undoing after a failing undo and reports it on the error', async () => {
    const undone: string[] = [];
    const error = await Revert.run(async (revert) => {
      revert.add('one', () => undone.push('one'));
      revert.add('two', () => {
        throw new Error('cannot');
      });
      throw new Error('boom');
    }).catch((caught: unknown) => caught as Error & { undoFailures?: string[] });
    assert.deepEqual(undone, ['one']);
    assert.deepEqual(error.undoFailures, ['two: cannot']);
  });

  it('runs no undo when the build succeeds', async () => {
    let undone = false;
    assert.equal(
      await Revert.run(async (revert) => {
        revert.add('x', () => (undone = true));
        return 42;
      }),
      42,
    );
    assert.equal(undone, false);
  });
});
