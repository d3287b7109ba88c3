import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { describeVcpus, vcpuLayoutOf } from './vm-vcpu-options.ts';

describe('vm create vCPU options', () => {
  it('sends only what was given when no layout is named', () => {
    assert.deepEqual(vcpuLayoutOf({ cpus: 2 }), {});
    assert.deepEqual(vcpuLayoutOf({ cpus: 1, maxCpus: 4 }), { maxCpus: 4 });
  });

  it('makes a layout without --max-cpus the maximum, and fills --cores from --max-cpus', () => {
    assert.deepEqual(vcpuLayoutOf({ cpus: 1, sockets: 2, cores: 2 }), { maxCpus: 4, cpuTopology: { sockets: 2, cores: 2, threads: 1 } });
    assert.deepEqual(vcpuLayoutOf({ cpus: 1, maxCpus: 8, sockets: 2, threads: 2 }), { maxCpus: 8, cpuTopology: { sockets: 2, cores: 2, threads: 2 } });
    // Given in full but not the maximum: the API refuses it by name.
    assert.deepEqual(vcpuLayoutOf({ cpus: 1, maxCpus: 8, sockets: 2, cores: 2 }), { maxCpus: 8, cpuTopology: { sockets: 2, cores: 2, threads: 1 } });
    assert.throws(() => vcpuLayoutOf({ cpus: 1, maxCpus: 6, sockets: 4 }), {
      code: 'VALIDATION_FAILED',
      message: /6 vCPUs do not fill 4 sockets x 1 threads evenly; give --cores/,
    });
  });

  it('prints present, maximum and layout', () => {
    assert.equal(describeVcpus({ cpus: 3, maxCpus: 4, cpuTopology: { sockets: 2, cores: 2, threads: 1 } }), '3 of 4 maximum (2 sockets x 2 cores x 1 thread)');
  });
});
