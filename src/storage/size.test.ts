import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { isNubisError } from '../core/errors.ts';
import { formatSize, parseSize } from './size.ts';

describe('parseSize', () => {
  it('reads binary multiples the way qemu-img writes them', () => {
    assert.equal(parseSize('20G'), 20 * 2 ** 30);
    assert.equal(parseSize('512MiB'), 512 * 2 ** 20);
    assert.equal(parseSize('1.5T'), 1.5 * 2 ** 40);
    assert.equal(parseSize('4096'), 4096);
    assert.equal(parseSize(' 64k '), 65536);
    assert.equal(parseSize(1024), 1024);
  });

  it('names the value that does not parse', () => {
    for (const bad of ['20X', '', 'G', '-1G', '1e3']) {
      assert.throws(
        () => parseSize(bad),
        (error: unknown) => isNubisError(error, 'VOLUME_SIZE_INVALID') && (error as Error).message.includes(JSON.stringify(bad)),
      );
    }
    assert.throws(
      () => parseSize(1.5),
      (error: unknown) => isNubisError(error, 'VOLUME_SIZE_INVALID'),
    );
  });

  it('formats sizes for messages', () => {
    assert.equal(formatSize(2 ** 30), '1 GiB');
    assert.equal(formatSize(1536), '1.5 KiB');
  });
});
