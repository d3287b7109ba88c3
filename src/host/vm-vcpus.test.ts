import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { VmSpec } from '../compute/vm-spec.ts';
import { applyVcpus, vcpuChange } from './vm-vcpus.ts';

const slot = (socket: number, core: number, present: boolean) => ({
  type: 'qemu64-x86_64-cpu',
  'vcpus-count': 1,
  props: { 'socket-id': socket, 'core-id': core, 'thread-id': 0 },
  ...(present ? { 'qom-path': `/machine/unattached/device[${socket * 2 + core}]` } : {}),
});

/** A QMP that answers query-hotpluggable-cpus with `slots` and records every command. */
function fakeQmp(slots: ReturnType<typeof slot>[]) {
  const commands: string[] = [];
  return {
    commands,
    execute: async <T>(command: string): Promise<T> => {
      commands.push(command);
      return (command === 'query-hotpluggable-cpus' ? slots : {}) as T;
    },
  };
}

describe('vCPUs on the host', () => {
  it('writes the maximum and layout out, so a spec that left them implicit keeps its maximum', () => {
    const spec = { name: 'web', cpus: 2 } as VmSpec;
    assert.deepEqual(vcpuChange(spec, { cpus: 1 }), { cpus: 1, maxCpus: 2, cpuTopology: { sockets: 1, cores: 2, threads: 1 } });
    assert.throws(() => vcpuChange(spec, { cpus: 3 }), { code: 'VM_CPUS_INVALID' });
  });

  it('hot-adds the missing vCPUs of a running VM', async () => {
    const qmp = fakeQmp([slot(0, 0, true), slot(0, 1, false), slot(1, 0, false), slot(1, 1, false)]);
    await applyVcpus(qmp, 'web', 3);
    assert.deepEqual(qmp.commands, ['query-hotpluggable-cpus', 'query-hotpluggable-cpus', 'device_add', 'device_add']);
  });

  it('refuses fewer vCPUs than a running VM has, removing none', async () => {
    const qmp = fakeQmp([slot(0, 0, true), slot(0, 1, true), slot(1, 0, false), slot(1, 1, false)]);
    await assert.rejects(applyVcpus(qmp, 'web', 1), {
      code: 'VM_CPUS_LIVE_DECREASE',
      message: /VM web runs with 2 vCPUs; vCPUs are not removed from a running guest .* Stop it, set --cpus 1, then start it/,
    });
    assert.deepEqual(qmp.commands, ['query-hotpluggable-cpus']);
  });
});
