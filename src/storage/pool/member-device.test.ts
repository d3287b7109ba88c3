import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { FileMemberDevice, InlineIoPolicy } from './member-device.ts';

describe('InlineIoPolicy', () => {
  it('keeps small calls inline through hiccups within the stall budget', () => {
    const policy = new InlineIoPolicy(2);
    assert.equal(policy.allows(4096, 0), true);
    assert.equal(policy.allows(1024 * 1024, 0), false, 'large calls always go to the threadpool');
    // Four 12 ms hiccups in one second: 48 ms, within the 50 ms budget.
    for (const at of [100, 300, 500, 700]) policy.observe(at, at + 12);
    assert.equal(policy.allows(4096, 800), true);
  });

  it('sends calls to the threadpool once slow ones exceed the budget, longer while probes stay slow', () => {
    const policy = new InlineIoPolicy(2);
    policy.observe(1000, 1060);
    assert.equal(policy.allows(4096, 1100), false);
    assert.equal(policy.allows(4096, 1311), true, 'the first back-off lasts 250 ms');
    // The probe after the back-off is slow again: 500 ms this time.
    policy.observe(1311, 1371);
    assert.equal(policy.allows(4096, 1800), false);
    assert.equal(policy.allows(4096, 1872), true);
    // A slow write long after the last back-off starts over at 250 ms.
    policy.observe(20_000, 20_060);
    assert.equal(policy.allows(4096, 20_200), false);
    assert.equal(policy.allows(4096, 20_311), true);
  });
});

describe('FileMemberDevice', () => {
  it('reads back, inline and through the threadpool, what inline, threadpool and durable writes stored', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'nubis-member-'));
    try {
      const path = join(dir, 'member.img');
      await writeFile(path, '');
      await truncate(path, 4 * 1024 * 1024);
      const device = await FileMemberDevice.open(path);
      const small = Buffer.alloc(4096, 0x11);
      const large = Buffer.alloc(1024 * 1024, 0x22);
      const record = Buffer.alloc(100, 0x33);
      await device.write(small, 0, small.length, 8192);
      await device.write(large, 0, large.length, 1024 * 1024);
      await device.writeDurable(record, 0, record.length, 4096);
      const smallBack = Buffer.alloc(4096);
      const largeBack = Buffer.alloc(1024 * 1024);
      await device.read(smallBack, 0, smallBack.length, 8192);
      await device.read(largeBack, 0, largeBack.length, 1024 * 1024);
      assert.ok(smallBack.equals(small));
      assert.ok(largeBack.equals(large));
      // Past the end of the file reads as zeroes, like an unwritten disk.
      const tail = Buffer.alloc(8192, 0xff);
      await device.read(tail, 0, tail.length, 4 * 1024 * 1024 - 4096);
      assert.ok(tail.equals(Buffer.alloc(8192)));
      await device.flush();
      await device.close();
      const image = await readFile(path);
      assert.ok(image.subarray(8192, 8192 + 4096).equals(small));
      assert.ok(image.subarray(1024 * 1024, 2 * 1024 * 1024).equals(large));
      assert.ok(image.subarray(4096, 4196).equals(record));
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
