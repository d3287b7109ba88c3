/**
 * CPU controls through the API (real services, fake agents): create sends them to the host in the
 * VM's spec, `PATCH /v1/vms/{vm}` changes them on the host first and then in the records, null
 * takes one away, and a bad value or a busy VM is refused with nothing changed anywhere. The real
 * cgroups are exercised by test/compute/cpu-controls.test.ts and src/host/cgroups.test.ts.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { VmSpec } from '../../src/compute/vm-spec.ts';
import { NubisError } from '../../src/core/errors.ts';
import type { Vm } from '../../src/wire/schemas.ts';
import { type FakeCluster, fakeCluster } from '../helpers/fake-cluster.ts';

type Body = Record<string, unknown> & { code?: string; message?: string };

describe('CPU controls through the API', () => {
  let cluster: FakeCluster;

  const call = <T = Body>(method: string, url: string, body?: unknown) => cluster.call<T>(method, url, body);

  const recordedControls = async (name: string) => {
    const row = await cluster.db.selectFrom('vms').select('spec').where('name', '=', name).executeTakeFirstOrThrow();
    return (JSON.parse(row.spec) as VmSpec).cpuControls;
  };

  before(async () => {
    cluster = await fakeCluster(['h1']);
    const created = await call<{ operation: { id: string } }>('POST', '/v1/vms', {
      name: 'capped',
      image: 'tiny',
      cpus: 2,
      cpuLimit: 150,
      cpuWeight: 300,
      cpuPin: '0-1',
      waitReady: false,
    });
    assert.equal(created.status, 202, JSON.stringify(created.body));
    assert.equal((await cluster.services.operations.wait(created.body.operation.id)).status, 'succeeded');
  });
  after(() => cluster.close());

  it('sends the controls to the host in the spec, and shows them', async () => {
    const [spec] = cluster.agent('h1').callsOf('createVm')[0] as [VmSpec];
    assert.deepEqual(spec.cpuControls, { limitPercent: 150, weight: 300, pin: '0-1' });
    const vm = await call<Vm>('GET', '/v1/vms/capped');
    assert.deepEqual([vm.body.cpuLimit, vm.body.cpuWeight, vm.body.cpuPin], [150, 300, '0-1']);
  });

  it('changes one control on the host, keeps the others, and takes one away with null', async () => {
    const changed = await call<Vm>('PATCH', '/v1/vms/capped', { cpuLimit: 50, cpuPin: null });
    assert.equal(changed.status, 200, JSON.stringify(changed.body));
    assert.deepEqual([changed.body.cpuLimit, changed.body.cpuWeight, changed.body.cpuPin], [50, 300, undefined]);
    assert.deepEqual(cluster.agent('h1').callsOf('setCpuControls').at(-1), [changed.body.id, { limitPercent: 50, weight: 300 }]);
    assert.deepEqual(await recordedControls('capped'), { limitPercent: 50, weight: 300 });
    const cleared = await call<Vm>('PATCH', '/v1/vms/capped', { cpuLimit: null, cpuWeight: null });
    assert.equal(cleared.status, 200);
    assert.deepEqual(cluster.agent('h1').callsOf('setCpuControls').at(-1), [changed.body.id, {}]);
    assert.equal(await recordedControls('capped'), undefined);
  });

  it('refuses bad values where the API receives them, changing nothing', async () => {
    const calls = cluster.agent('h1').callsOf('setCpuControls').length;
    for (const body of [{ cpuLimit: 0 }, { cpuLimit: 6401 }, { cpuWeight: 0 }, { cpuPin: '0;reboot' }, { cpuPin: '0-1\n' }, { cpuLimit: '50%' }]) {
      const refused = await call('PATCH', '/v1/vms/capped', body);
      assert.equal(refused.status, 400, `${JSON.stringify(body)} -> ${refused.status}`);
    }
    const tooMuch = await call('PATCH', '/v1/vms/capped', { cpuLimit: 250 });
    assert.equal(tooMuch.status, 400);
    assert.match(tooMuch.body.message ?? '', /250% is more than VM capped's 2 vCPU\(s\) can use \(200%\)/);
    const created = await call('POST', '/v1/vms', { name: 'greedy', image: 'tiny', cpus: 1, cpuLimit: 101, waitReady: false });
    assert.equal(created.status, 400, 'a create is refused before anything is placed');
    assert.equal((await call('GET', '/v1/vms/greedy')).status, 404);
    assert.equal(cluster.agent('h1').callsOf('setCpuControls').length, calls, 'the host was never asked');
  });

  it('places a VM pinned to host CPUs only where they exist, and says why no host would do', async () => {
    const cpus = (await cluster.db.selectFrom('hosts').select('cpus').where('name', '=', 'h1').executeTakeFirstOrThrow()).cpus;
    const creates = cluster.agent('h1').callsOf('createVm').length;
    const refused = await call('POST', '/v1/vms', { name: 'pinned', image: 'tiny', cpus: 1, cpuPin: `0,${cpus}`, waitReady: false });
    assert.deepEqual([refused.status, refused.body.code], [422, 'NO_HOST_FITS']);
    assert.match(refused.body.message ?? '', new RegExp(`h1 has CPUs 0-${cpus - 1}, the VM is pinned to 0,${cpus}`));
    assert.equal((await call('GET', '/v1/vms/pinned')).status, 404, 'nothing recorded');
    assert.equal(cluster.agent('h1').callsOf('createVm').length, creates, 'the host was never asked');
  });

  it("keeps the records as they were when the host refuses, and waits its turn behind the VM's other actions", async () => {
    cluster
      .agent('h1')
      .failNext('setCpuControls', new NubisError('HOST_CPU_CONTROLS_UNAVAILABLE', 'This host cannot apply CPU controls: no cgroup v1 cpu mounted'));
    const refused = await call('PATCH', '/v1/vms/capped', { cpuLimit: 80 });
    assert.equal(refused.status, 422);
    assert.match(refused.body.message ?? '', /cannot apply CPU controls/);
    assert.equal(await recordedControls('capped'), undefined);
    // A stop in progress holds the VM: the change waits for it (one owner per VM), then applies.
    const release = cluster.agent('h1').hold('stopVm');
    const stop = await call<{ operation: { id: string } }>('POST', '/v1/vms/capped/stop');
    assert.equal(stop.status, 202);
    const asked = cluster.agent('h1').callsOf('setCpuControls').length;
    const change = call<Vm>('PATCH', '/v1/vms/capped', { cpuLimit: 80 });
    await new Promise((resolve) => setTimeout(resolve, 200));
    assert.equal(cluster.agent('h1').callsOf('setCpuControls').length, asked, 'not while the stop runs');
    release();
    assert.equal((await change).status, 200);
    assert.deepEqual(await recordedControls('capped'), { limitPercent: 80 });
    await cluster.services.operations.wait(stop.body.operation.id);
  });
});
