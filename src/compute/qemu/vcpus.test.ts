import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { type HotpluggableCpu, hotAddVcpus, inTopologyOrder, presentVcpus, smpOption, vcpuAdditions } from './vcpus.ts';

/** What QEMU 10 answered for `-smp cpus=1,maxcpus=4,sockets=2,cores=2,threads=1` (q35, qemu64), in its own order. */
const slots: HotpluggableCpu[] = [
  { props: { 'core-id': 1, 'thread-id': 0, 'socket-id': 1 }, 'vcpus-count': 1, type: 'qemu64-x86_64-cpu' },
  { props: { 'core-id': 0, 'thread-id': 0, 'socket-id': 1 }, 'vcpus-count': 1, type: 'qemu64-x86_64-cpu' },
  { props: { 'core-id': 1, 'thread-id': 0, 'socket-id': 0 }, 'vcpus-count': 1, type: 'qemu64-x86_64-cpu' },
  { props: { 'core-id': 0, 'thread-id': 0, 'socket-id': 0 }, 'vcpus-count': 1, 'qom-path': '/machine/unattached/device[0]', type: 'qemu64-x86_64-cpu' },
];

describe('vCPUs in QEMU', () => {
  it('builds -smp from the present count, the maximum and the layout', () => {
    assert.equal(
      smpOption({ name: 'web', cpus: 1, maxCpus: 4, cpuTopology: { sockets: 2, cores: 2, threads: 1 } }),
      'cpus=1,maxcpus=4,sockets=2,cores=2,threads=1',
    );
    assert.throws(() => smpOption({ name: 'web', cpus: 2, maxCpus: 4, cpuTopology: { sockets: 1, cores: 2, threads: 1 } }), { code: 'VM_CPUS_INVALID' });
    assert.equal(smpOption({ name: 'web', cpus: 2, maxCpus: 4 }), 'cpus=2,maxcpus=4,sockets=1,cores=4,threads=1');
    assert.equal(smpOption({ name: 'web', cpus: 2 }), '2', 'the default layout keeps the form every VM had');
  });

  it('orders slots socket by socket, core by core, as -smp cpus=N fills them', () => {
    assert.deepEqual(
      inTopologyOrder(slots).map((slot) => `${slot.props['socket-id']}/${slot.props['core-id']}`),
      ['0/0', '0/1', '1/0', '1/1'],
    );
  });

  it('adds the first free slots in topology order, with the driver and the properties QEMU gave', () => {
    assert.deepEqual(vcpuAdditions(slots, 3, 'web'), [
      { driver: 'qemu64-x86_64-cpu', id: 'vcpu1', 'core-id': 1, 'thread-id': 0, 'socket-id': 0 },
      { driver: 'qemu64-x86_64-cpu', id: 'vcpu2', 'core-id': 0, 'thread-id': 0, 'socket-id': 1 },
    ]);
    assert.deepEqual(vcpuAdditions(slots, 1, 'web'), []);
  });

  it('refuses more than the slots hold, and a driver or property of a shape it does not know', () => {
    assert.throws(() => vcpuAdditions(slots, 5, 'web'), { code: 'VM_CPUS_INVALID', message: /room for 4 vCPUs, not 5/ });
    const odd = slots.map((slot) => ({ ...slot, type: 'qemu64,x-evil=on' }));
    assert.throws(() => vcpuAdditions(odd, 2, 'web'), { code: 'QEMU_INVALID_OPTION' });
    const badProp = slots.map((slot) => ({ ...slot, props: { ...slot.props, 'socket-id,x': 0 } }));
    assert.throws(() => vcpuAdditions(badProp, 2, 'web'), { code: 'QEMU_INVALID_OPTION' });
  });

  it('hot-adds over QMP: one device_add a vCPU, after asking which slots are free', async () => {
    const calls: Array<[string, unknown]> = [];
    const qmp = {
      execute: async <T>(command: string, args?: Record<string, unknown>): Promise<T> => {
        calls.push([command, args]);
        return (command === 'query-hotpluggable-cpus' ? slots : {}) as T;
      },
    };
    assert.equal(await hotAddVcpus(qmp, 2, 'web'), 1);
    assert.deepEqual(calls, [
      ['query-hotpluggable-cpus', undefined],
      ['device_add', { driver: 'qemu64-x86_64-cpu', id: 'vcpu1', 'core-id': 1, 'thread-id': 0, 'socket-id': 0 }],
    ]);
    assert.equal(await presentVcpus(qmp), 1);
  });
});
