import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { isNubisError } from '../../core/errors.ts';
import { checkDeviceRef } from './device-ref.ts';

describe('checkDeviceRef', () => {
  it('takes absolute paths and strict NBD URIs', () => {
    for (const ok of [
      '/srv/a.img',
      '/dev/sdb',
      '/srv/my disk.img',
      '/srv/./a.img',
      '/srv/a..b',
      'nbd://127.0.0.1:10809/disk',
      'nbd://nbd.example.com/p1/v1',
      'nbd://[::1]:10809/disk',
      'nbd://host',
      'nbd+unix:///?socket=/run/nbd.sock',
      'nbd+unix:///disk?socket=/tmp/x/nbdkit.sock',
    ]) {
      assert.equal(checkDeviceRef(ok), ok);
    }
  });

  it('refuses relative paths, .. segments, control characters, overlong strings and loose URIs, naming the value', () => {
    const bad = [
      'a.img',
      './a.img',
      '../a.img',
      '/srv/../etc/passwd',
      '/srv/..',
      '/srv/a\u0000.img',
      '/srv/a\n.img',
      `/${'a'.repeat(4096)}`,
      '',
      'nbd://h:0/x',
      'nbd://h:99999/x',
      'nbd://user@h/x',
      'nbd://h/x?tls=1',
      'nbd://h/%2e%2e',
      'nbd+unix:///x?socket=rel.sock',
      'nbd+unix:///x?socket=/a/../b',
      'nbds://h/x',
      'file:///srv/a.img',
    ];
    for (const value of bad) {
      assert.throws(
        () => checkDeviceRef(value),
        (error: unknown) => isNubisError(error, 'POOL_DEVICE_INVALID') && (error as Error).message.includes(JSON.stringify(value.slice(0, 200)).slice(0, 20)),
        value,
      );
    }
    assert.throws(
      () => checkDeviceRef(42),
      (error: unknown) => isNubisError(error, 'POOL_DEVICE_INVALID'),
    );
  });
});
