import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { checkedVcpuLayout, defaultCpuTopology, maxCpusOf } from './cpu-topology.ts';

describe('checkedVcpuLayout', () => {
  it('fills in what an experienced user expects: the maximum is the present count, one socket of it', () => {
    assert.deepEqual(checkedVcpuLayout('web', { cpus: 2 }), { cpus: 2, maxCpus: 2, cpuTopology: { sockets: 1, cores: 2, threads: 1 } });
    assert.deepEqual(checkedVcpuLayout('web', { cpus: 1, maxCpus: 4 }), { cpus: 1, maxCpus: 4, cpuTopology: defaultCpuTopology(4) });
    assert.equal(maxCpusOf({ cpus: 3 }), 3);
  });

  it('takes a layout whose product is the maximum', () => {
    const layout = checkedVcpuLayout('web', { cpus: 1, maxCpus: 4, cpuTopology: { sockets: 2, cores: 2, threads: 1 } });
    assert.deepEqual(layout.cpuTopology, { sockets: 2, cores: 2, threads: 1 });
    assert.equal(checkedVcpuLayout('web', { cpus: 64, maxCpus: 64, cpuTopology: { sockets: 4, cores: 8, threads: 2 } }).maxCpus, 64);
  });

  it('refuses, naming the problem and the fix', () => {
    const refused = (fields: Parameters<typeof checkedVcpuLayout>[1], message: RegExp) =>
      assert.throws(
        () => checkedVcpuLayout('web', fields),
        (error: Error & { code?: string }) => {
          assert.equal(error.code, 'VM_CPUS_INVALID');
          assert.match(error.message, message);
          return true;
        },
      );
    refused({ cpus: 5, maxCpus: 4 }, /VM web: 5 vCPUs is more than its maximum of 4; ask for at most 4, or for a larger --max-cpus/);
    refused({ cpus: 1, maxCpus: 4, cpuTopology: { sockets: 2, cores: 3, threads: 1 } }, /2 sockets x 3 cores x 1 threads make 6 vCPUs, not its maximum of 4/);
    refused({ cpus: 1, maxCpus: 65 }, /a maximum of 65 vCPUs is not a whole number from 1 to 64/);
    refused({ cpus: 0 }, /0 vCPUs is not a whole number from 1 to 64/);
    refused({ cpus: 2, maxCpus: 2, cpuTopology: { sockets: 0, cores: 2, threads: 1 } }, /0 sockets is not a whole number/);
    // Within 64 each, but a product above the limit is still not the maximum.
    refused({ cpus: 1, maxCpus: 64, cpuTopology: { sockets: 64, cores: 64, threads: 1 } }, /make 4096 vCPUs/);
  });
});
