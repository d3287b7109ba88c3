/**
 * A VM's memory through the API (real services, fake agents): create takes a current memory and
 * a maximum, the host gets the maximum as the guest's RAM and the current as its balloon target;
 * placement, the host's allocation and the project quota count the maximum (with the host's
 * memory overcommit); `PATCH /v1/vms/{vm}` changes the current memory on the host first, and a
 * value outside the floor and the maximum is refused with nothing changed anywhere. The real
 * balloon is exercised by test/compute/memory.test.ts.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { VmSpec } from '../../src/compute/vm-spec.ts';
import { setQuota } from '../../src/access/quotas.ts';
import type { Vm } from '../../src/wire/schemas.ts';
import { type FakeCluster, fakeCluster } from '../helpers/fake-cluster.ts';

type Body = Record<string, unknown> & { code?: string; message?: string };

describe('VM memory through the API', () => {
  let cluster: FakeCluster;

  const call = <T = Body>(method: string, url: string, body?: unknown) => cluster.call<T>(method, url, body);

  async function create(body: Record<string, unknown>): Promise<{ status: number; body: Body }> {
    const created = await call<{ operation: { id: string } } & Body>('POST', '/v1/vms', { image: 'tiny', waitReady: false, ...body });
    if (created.status === 202) assert.equal((await cluster.services.operations.wait(created.body.operation.id)).status, 'succeeded');
    return created;
  }

  const recordedSpec = async (name: string) => {
    const row = await cluster.db.selectFrom('vms').select(['spec', 'memory_mb']).where('name', '=', name).executeTakeFirstOrThrow();
    return { spec: JSON.parse(row.spec) as VmSpec, memoryMb: row.memory_mb };
  };

  before(async () => {
    cluster = await fakeCluster(['h1']);
    assert.equal((await create({ name: 'elastic', memoryMb: 512, maxMemoryMb: 1024 })).status, 202);
  });
  after(() => cluster.close());

  it('gives the host the maximum as guest RAM and the current memory as the balloon target, and shows both', async () => {
    const [spec] = cluster.agent('h1').callsOf('createVm')[0] as [VmSpec];
    assert.deepEqual([spec.memoryMb, spec.memoryTargetMb], [1024, 512]);
    const vm = await call<Vm>('GET', '/v1/vms/elastic');
    assert.deepEqual([vm.body.memoryMb, vm.body.maxMemoryMb, vm.body.memoryReclaim], [512, 1024, false]);
    assert.equal((await recordedSpec('elastic')).memoryMb, 1024, 'the record keeps the maximum');
  });

  it('counts the maximum in the host allocation and the project quota', async () => {
    const host = await call<{ allocatedMemoryMb: number }>('GET', '/v1/hosts/h1');
    assert.equal(host.body.allocatedMemoryMb, 1024);
    await setQuota(cluster.db, 'prj-1', { memoryMb: 1500 });
    const refused = await create({ name: 'small-now', memoryMb: 256, maxMemoryMb: 1024 });
    assert.equal(refused.status, 409, JSON.stringify(refused.body));
    assert.equal(refused.body.code, 'QUOTA_EXCEEDED');
    await setQuota(cluster.db, 'prj-1', { memoryMb: null });
  });

  it("places by the maximum against the host's memory overcommit", async () => {
    // 8192 MiB less the 512 MiB reserve, 1024 of it taken: 7168 MiB more than fits at 1x.
    const refused = await create({ name: 'big', memoryMb: 1024, maxMemoryMb: 8192 });
    assert.equal(refused.status, 422, JSON.stringify(refused.body));
    assert.equal(refused.body.code, 'NO_HOST_FITS');
    assert.equal((await call('PATCH', '/v1/hosts/h1', { memoryOvercommit: 1.5 })).status, 200);
    assert.equal((await create({ name: 'big', memoryMb: 1024, maxMemoryMb: 8192 })).status, 202);
    assert.equal((await call('DELETE', '/v1/vms/big')).status, 202);
  });

  it('changes the current memory on the host within the maximum, and takes reclaim on and off', async () => {
    const changed = await call<Vm>('PATCH', '/v1/vms/elastic', { memoryMb: 768, memoryReclaim: true });
    assert.equal(changed.status, 200, JSON.stringify(changed.body));
    assert.deepEqual([changed.body.memoryMb, changed.body.maxMemoryMb, changed.body.memoryReclaim], [768, 1024, true]);
    assert.deepEqual(cluster.agent('h1').callsOf('setMemory').at(-1), [changed.body.id, { targetMb: 768, reclaim: true }]);
    assert.deepEqual((await recordedSpec('elastic')).spec.memoryTargetMb, 768);
    const full = await call<Vm>('PATCH', '/v1/vms/elastic', { memoryMb: 1024, memoryReclaim: false });
    assert.equal(full.status, 200);
    assert.deepEqual(cluster.agent('h1').callsOf('setMemory').at(-1), [changed.body.id, {}], 'all of the maximum, no reclaim');
    const { spec } = await recordedSpec('elastic');
    assert.deepEqual([spec.memoryTargetMb, spec.memoryReclaim], [undefined, undefined]);
  });

  it('refuses memory above the maximum or below the floor, changing nothing', async () => {
    const calls = cluster.agent('h1').callsOf('setMemory').length;
    const above = await call('PATCH', '/v1/vms/elastic', { memoryMb: 2048 });
    assert.equal(above.status, 400);
    assert.equal(above.body.code, 'VM_MEMORY_OUT_OF_RANGE');
    assert.match(above.body.message ?? '', /VM elastic can have from 128 to 1024 MiB of memory \(its maximum\), not 2048/);
    const below = await call('PATCH', '/v1/vms/elastic', { memoryMb: 100 });
    assert.equal(below.status, 400);
    assert.match(below.body.message ?? '', /from 128 to 1024 MiB/);
    assert.equal((await call('PATCH', '/v1/vms/elastic', { memoryMb: 32 })).status, 400, 'below the schema minimum');
    const created = await create({ name: 'inverted', memoryMb: 1024, maxMemoryMb: 512 });
    assert.equal(created.status, 400, 'a create is refused before anything is placed');
    assert.equal((await call('GET', '/v1/vms/inverted')).status, 404);
    assert.equal(cluster.agent('h1').callsOf('setMemory').length, calls, 'the host was never asked');
    assert.equal((await call<Vm>('GET', '/v1/vms/elastic')).body.memoryMb, 1024);
  });

  it("shows a running VM of another project with its host's memory report", async () => {
    assert.equal((await call('POST', '/v1/projects', { name: 'other' })).status, 201);
    assert.equal((await create({ name: 'elsewhere', project: 'other' })).status, 202);
    const vm = await call<Vm>('GET', '/v1/vms/elsewhere?project=other');
    assert.deepEqual([vm.status, vm.body.name, vm.body.project], [200, 'elsewhere', 'other']);
    assert.ok(cluster.agent('h1').callsOf('memoryReport').length > 0, 'its host was asked');
  });
});
