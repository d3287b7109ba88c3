/**
 * Listing VMs at scale: a page costs the same few queries whatever its length (one per related
 * table, not six per VM), pages follow each other by `marker` as OpenStack's do, and the API
 * names the next page in a `Link` header.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { NubisError } from '../core/errors.ts';
import { type FakeCluster, fakeCluster } from '../../test/helpers/fake-cluster.ts';
import { QueryCounter } from '../../test/helpers/query-counter.ts';
import type { Vm } from '../wire/schemas.ts';

describe('VM list', () => {
  let cluster: FakeCluster;
  const queries = new QueryCounter();

  before(async () => {
    cluster = await fakeCluster(['h1', 'h2', 'h3'], { plugins: [queries] });
    const { services } = cluster;
    await services.networks.create({ name: 'n1', subnet: '10.72.0.0/24', dhcp: false, nat: false });
    await cluster.db.insertInto('projects').values({ id: 'prj-other', name: 'other', created_at: new Date().toISOString(), requirements: '{}' }).execute();
    // 24 VMs over three hosts, every other one on a network (a NIC to join), two in another project.
    for (let index = 0; index < 24; index++) {
      const operation = await services.vms.create({
        name: `vm${String(index).padStart(2, '0')}`,
        image: 'tiny',
        cpus: 1,
        memoryMb: 128,
        waitReady: false,
        ...(index % 2 === 0 ? { networks: [{ network: 'n1' }] } : {}),
      });
      assert.equal((await services.operations.wait(operation.id)).status, 'succeeded');
    }
    for (const name of ['vm00', 'zz']) {
      const operation = await services.vms.create({ name, project: 'other', image: 'tiny', cpus: 1, memoryMb: 128, waitReady: false });
      assert.equal((await services.operations.wait(operation.id)).status, 'succeeded');
    }
  });
  after(() => cluster.close());

  const queriesToList = async (limit: number) => {
    queries.reset();
    const page = await cluster.services.vms.list({ project: 'default', limit });
    return { count: queries.queries.length, page };
  };

  it('reads a page of any length with the same few queries', async () => {
    const few = await queriesToList(2);
    const many = await queriesToList(24);
    assert.equal(few.page.vms.length, 2);
    assert.equal(many.page.vms.length, 24);
    assert.equal(many.count, few.count, 'a longer page needs no more queries');
    assert.ok(many.count <= 8, `${many.count} queries for a page`);
    const nic = many.page.vms.find((vm) => vm.name === 'vm00')!;
    assert.deepEqual(
      nic.nics.map((n) => n.network),
      ['n1'],
    );
    assert.deepEqual(many.page.vms.find((vm) => vm.name === 'vm01')!.nics, []);
    // Each view as one VM's own view shows it.
    assert.deepEqual(many.page.vms[5], await cluster.services.vms.get(many.page.vms[5].name));
  });

  it('pages by name after a marker, to the end, and says when more follow', async () => {
    const seen: string[] = [];
    let marker: string | undefined;
    for (;;) {
      const page = await cluster.services.vms.list({ project: 'default', limit: 10, ...(marker ? { marker } : {}) });
      seen.push(...page.vms.map((vm) => vm.name));
      if (!page.more) break;
      marker = page.vms[page.vms.length - 1].id;
    }
    assert.deepEqual(
      seen,
      Array.from({ length: 24 }, (_, index) => `vm${String(index).padStart(2, '0')}`),
    );
    const all = await cluster.services.vms.list({ limit: 1000 });
    assert.equal(all.vms.length, 26, 'without a project: every VM one may see');
    const keys = all.vms.map((vm) => [vm.name, vm.id].join(' '));
    assert.deepEqual(keys, [...keys].sort(), 'by name, then id (two projects each have a vm00)');
    assert.equal(all.more, false);
  });

  it("refuses a marker that is not among the VMs listed, without telling another project's VMs apart from none", async () => {
    const theirs = (await cluster.services.vms.list({ project: 'other' })).vms[0].id;
    for (const marker of [theirs, 'vm-000000000000'])
      await assert.rejects(cluster.services.vms.list({ project: 'default', marker }), (error: NubisError) => error.code === 'VM_MARKER_NOT_FOUND');
  });

  it('answers GET /v1/vms a page at a time, the next named in a Link header', async () => {
    const app = await cluster.app();
    const get = (url: string) => app.inject({ method: 'GET', url, headers: cluster.auth });
    const first = await get('/v1/vms?project=default&limit=20');
    assert.equal(first.statusCode, 200, first.body);
    assert.equal((first.json() as Vm[]).length, 20);
    const next = /^<([^>]+)>; rel="next"$/.exec(String(first.headers.link))?.[1];
    assert.ok(next, `Link: ${first.headers.link}`);
    const second = await get(next);
    assert.deepEqual(
      (second.json() as Vm[]).map((vm) => vm.name),
      ['vm20', 'vm21', 'vm22', 'vm23'],
    );
    assert.equal(second.headers.link, undefined, 'the last page names no next one');
    assert.equal((await get('/v1/vms?project=default&limit=1001')).statusCode, 400);
    assert.equal((await get('/v1/vms?project=default&marker=vm-000000000000')).json().code, 'VM_MARKER_NOT_FOUND');
  });

  it('counts the cluster summary in the database', async () => {
    const app = await cluster.app();
    const status = await app.inject({ method: 'GET', url: '/v1/status', headers: cluster.auth });
    assert.deepEqual([status.json().vms, status.json().vmsRunning], [26, 26]);
  });
});
