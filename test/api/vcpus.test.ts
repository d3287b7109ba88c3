/**
 * A VM's vCPUs through the API (real services, fake agents): create takes the vCPUs present, a
 * maximum and a layout; the host gets all three; placement, the host's allocation and the
 * project quota count the maximum; `PATCH /v1/vms/{vm}` with `cpus` goes to the host first, and
 * what the host or the checks refuse changes nothing. The real hot-add (QEMU, the guest, a
 * migration) is exercised by test/compute/vcpu.test.ts.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { VmSpec } from '../../src/compute/vm-spec.ts';
import { setQuota } from '../../src/access/quotas.ts';
import { NubisError } from '../../src/core/errors.ts';
import type { Vm } from '../../src/wire/schemas.ts';
import { type FakeCluster, fakeCluster } from '../helpers/fake-cluster.ts';

type Body = Record<string, unknown> & { code?: string; message?: string };

describe('VM vCPUs through the API', () => {
  let cluster: FakeCluster;

  const call = <T = Body>(method: string, url: string, body?: unknown) => cluster.call<T>(method, url, body);

  async function create(body: Record<string, unknown>): Promise<{ status: number; body: Body }> {
    const created = await call<{ operation: { id: string } } & Body>('POST', '/v1/vms', { image: 'tiny', waitReady: false, ...body });
    if (created.status === 202) assert.equal((await cluster.services.operations.wait(created.body.operation.id)).status, 'succeeded');
    return created;
  }

  const recorded = async (name: string) => {
    const row = await cluster.db.selectFrom('vms').select(['spec', 'cpus']).where('name', '=', name).executeTakeFirstOrThrow();
    return { spec: JSON.parse(row.spec) as VmSpec, cpus: row.cpus };
  };

  before(async () => {
    cluster = await fakeCluster(['h1']);
    assert.equal((await create({ name: 'grows', cpus: 1, maxCpus: 4, cpuTopology: { sockets: 2, cores: 2, threads: 1 } })).status, 202);
  });
  after(() => cluster.close());

  it('gives the host the vCPUs present, the maximum and the layout, and shows them', async () => {
    const [spec] = cluster.agent('h1').callsOf('createVm')[0] as [VmSpec];
    assert.deepEqual([spec.cpus, spec.maxCpus, spec.cpuTopology], [1, 4, { sockets: 2, cores: 2, threads: 1 }]);
    const vm = await call<Vm>('GET', '/v1/vms/grows');
    assert.deepEqual([vm.body.cpus, vm.body.maxCpus, vm.body.cpuTopology], [1, 4, { sockets: 2, cores: 2, threads: 1 }]);
    assert.equal((await recorded('grows')).cpus, 4, 'the record keeps the maximum');
  });

  it('defaults the maximum to the vCPUs given, laid out as one socket', async () => {
    assert.equal((await create({ name: 'plain', cpus: 2 })).status, 202);
    const vm = await call<Vm>('GET', '/v1/vms/plain');
    assert.deepEqual([vm.body.cpus, vm.body.maxCpus, vm.body.cpuTopology], [2, 2, { sockets: 1, cores: 2, threads: 1 }]);
    const deleted = await call<{ operation: { id: string } }>('DELETE', '/v1/vms/plain');
    assert.equal((await cluster.services.operations.wait(deleted.body.operation.id)).status, 'succeeded');
  });

  it('counts the maximum in the host allocation, the project quota and placement', async () => {
    const host = await call<{ allocatedCpus: number }>('GET', '/v1/hosts/h1');
    assert.equal(host.body.allocatedCpus, 4);
    await setQuota(cluster.db, 'prj-1', { cpus: 6 });
    const overQuota = await create({ name: 'small-now', cpus: 1, maxCpus: 4 });
    assert.equal(overQuota.status, 409, JSON.stringify(overQuota.body));
    assert.equal(overQuota.body.code, 'QUOTA_EXCEEDED');
    await setQuota(cluster.db, 'prj-1', { cpus: null });
    // 4 host CPUs x 4 overcommit = 16, 4 of them taken: a VM of 1 present but 16 at most does not fit.
    const tooBig = await create({ name: 'big', cpus: 1, maxCpus: 16 });
    assert.equal(tooBig.status, 422, JSON.stringify(tooBig.body));
    assert.equal(tooBig.body.code, 'NO_HOST_FITS');
  });

  it('refuses a layout that is not the maximum, or more vCPUs than the maximum, before anything is placed', async () => {
    const layout = await create({ name: 'odd', cpus: 1, maxCpus: 4, cpuTopology: { sockets: 2, cores: 3, threads: 1 } });
    assert.equal(layout.status, 400);
    assert.equal(layout.body.code, 'VM_CPUS_INVALID');
    assert.match(layout.body.message ?? '', /2 sockets x 3 cores x 1 threads make 6 vCPUs, not its maximum of 4/);
    const over = await create({ name: 'odd', cpus: 5, maxCpus: 4 });
    assert.equal(over.status, 400);
    assert.match(over.body.message ?? '', /5 vCPUs is more than its maximum of 4/);
    assert.equal((await create({ name: 'odd', cpus: 65 })).status, 400, 'above the schema maximum');
    assert.equal((await call('GET', '/v1/vms/odd')).status, 404);
  });

  it('changes the vCPUs present on the host within the maximum', async () => {
    const changed = await call<Vm>('PATCH', '/v1/vms/grows', { cpus: 3 });
    assert.equal(changed.status, 200, JSON.stringify(changed.body));
    assert.deepEqual([changed.body.cpus, changed.body.maxCpus], [3, 4]);
    assert.deepEqual(cluster.agent('h1').callsOf('setCpus').at(-1), [changed.body.id, { cpus: 3 }]);
    const { spec, cpus } = await recorded('grows');
    assert.deepEqual([spec.cpus, spec.maxCpus, spec.cpuTopology, cpus], [3, 4, { sockets: 2, cores: 2, threads: 1 }, 4]);
  });

  it('refuses more than the maximum, and keeps everything when the host refuses', async () => {
    const calls = cluster.agent('h1').callsOf('setCpus').length;
    const above = await call('PATCH', '/v1/vms/grows', { cpus: 5 });
    assert.equal(above.status, 400);
    assert.equal(above.body.code, 'VM_CPUS_INVALID');
    assert.match(above.body.message ?? '', /VM grows: 5 vCPUs is more than its maximum of 4; ask for at most 4, or for a larger --max-cpus/);
    assert.equal(cluster.agent('h1').callsOf('setCpus').length, calls, 'the host was never asked');
    cluster.agent('h1').failNext('setCpus', new NubisError('VM_CPUS_LIVE_DECREASE', 'VM grows runs with 3 vCPUs; stop it first'));
    const fewer = await call('PATCH', '/v1/vms/grows', { cpus: 1 });
    assert.equal(fewer.status, 409, JSON.stringify(fewer.body));
    assert.equal(fewer.body.code, 'VM_CPUS_LIVE_DECREASE');
    assert.equal((await recorded('grows')).spec.cpus, 3, 'the spec keeps what the host runs');
  });

  it('holds a CPU limit to what the maximum could use', async () => {
    assert.equal((await call('PATCH', '/v1/vms/grows', { cpuLimit: 400 })).status, 200, 'four vCPUs at most: 400% can bind');
    assert.equal((await call('PATCH', '/v1/vms/grows', { cpuLimit: 401 })).status, 400);
  });
});
