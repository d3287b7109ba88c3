import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { parseHostCpuSeconds, parseKilobytesField, parseProcessCpuSeconds, parseTapBytes, UsageSampler } from './usage-sampler.ts';

describe('usage sampler', () => {
  it('reads the fields proc(5) documents, also with a command name holding spaces and parentheses', () => {
    const stat = '4242 (qemu (vm) x) S 1 4242 4242 0 -1 4194560 9000 0 0 0 250 150 0 0 20 0 3 0 100 1000 500';
    assert.equal(parseProcessCpuSeconds(stat), 4, '(250 + 150) ticks at 100 a second');
    assert.equal(parseKilobytesField('Name:\tqemu\nVmRSS:\t  131072 kB\n', 'VmRSS'), 128 * 2 ** 20);
    assert.deepEqual(parseHostCpuSeconds('cpu  100 0 100 700 100 0 0 0 50 0\ncpu0 1 2 3 4\n'), { totalSeconds: 10, idleSeconds: 8 });
    const netDev = [
      'Inter-|   Receive                                                |  Transmit',
      ' face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed',
      'ntap-ab12:    5000      10    0    0    0     0          0         0     7000      12    0    0    0     0       0          0',
      '    lo:     999       1    0    0    0     0          0         0      999       1    0    0    0     0       0          0',
    ].join('\n');
    assert.deepEqual(parseTapBytes(netDev, ['ntap-ab12']), { rxBytes: 7000, txBytes: 5000 }, "the tap's receive side is what the guest sent");
  });

  it("samples this host and a real process from /proc (here the test's own)", async () => {
    const sampler = new UsageSampler({
      sources: () => [{ vm: 'vm-self', pid: process.pid, cpus: 1, taps: [], diskBytes: async () => ({ readBytes: 1, writtenBytes: 2 }) }],
      send: async () => undefined,
    });
    const report = await sampler.sample();
    assert.ok(report.host.memoryTotalBytes > report.host.memoryUsedBytes && report.host.memoryUsedBytes > 0);
    assert.ok(report.host.cpuTotalSeconds > report.host.cpuIdleSeconds);
    const [self] = report.vms;
    assert.equal(self.vm, 'vm-self');
    assert.ok(self.cpuSeconds > 0, 'this process has used CPU');
    assert.ok(self.memoryBytes > 10 * 2 ** 20 && self.memoryBytes < report.host.memoryTotalBytes);
    assert.deepEqual([self.diskReadBytes, self.diskWriteBytes], [1, 2]);
  });
});
