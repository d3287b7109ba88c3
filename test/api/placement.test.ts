/**
 * Placement as a user meets it, through the real API over a fake three-host cluster: host labels
 * and overcommit ratios, placement groups that spread or refuse with the rule's name, residency
 * rules that hold for creates, migrations, evacuations and label changes, dry runs that change
 * nothing, and the record of where each VM has run.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { FastifyInstance } from 'fastify';
import { type FakeCluster, fakeCluster } from '../helpers/fake-cluster.ts';

type Body = Record<string, unknown> & { code?: string; message?: string };

describe('placement through the API', () => {
  let cluster: FakeCluster;
  let app: FastifyInstance;

  async function call(method: string, url: string, body?: unknown, token = cluster.token): Promise<{ status: number; body: Body }> {
    const response = await app.inject({
      method: method as 'GET',
      url,
      headers: { authorization: `Bearer ${token}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
      ...(body === undefined ? {} : { payload: JSON.stringify(body) }),
    });
    return { status: response.statusCode, body: response.body ? (response.json() as Body) : {} };
  }

  /** Creates a VM (on network `net` of `project`) and waits for its operation; returns the VM. */
  async function createVm(request: Record<string, unknown>): Promise<Body> {
    const created = await call('POST', '/v1/vms', { image: 'tiny', memoryMb: 256, waitReady: false, ...request });
    assert.equal(created.status, 202, JSON.stringify(created.body));
    const final = await cluster.services.operations.wait((created.body.operation as { id: string }).id);
    assert.equal(final.status, 'succeeded', JSON.stringify(final.error));
    return final.result as Body;
  }

  async function hostOf(vm: string, project = 'default'): Promise<string> {
    return (await call('GET', `/v1/vms/${vm}?project=${project}`)).body.host as string;
  }

  before(async () => {
    cluster = await fakeCluster(['h1', 'h2', 'h3']);
    app = await cluster.app();
    for (const [host, zone] of [
      ['h1', 'a'],
      ['h2', 'b'],
      ['h3', 'b'],
    ])
      assert.equal((await call('PATCH', `/v1/hosts/${host}`, { labels: { zone, region: host === 'h1' ? 'us' : 'eu' } })).status, 200);
    assert.equal((await call('POST', '/v1/projects', { name: 'web' })).status, 201);
    for (const project of ['default', 'web']) assert.equal((await call('POST', '/v1/networks', { name: 'net', subnet: '10.20.0.0/24', project })).status, 201);
  });
  after(() => cluster.close());

  it('labels hosts and sets overcommit ratios, refusing bad labels and ratios without changing anything', async () => {
    const set = await call('PATCH', '/v1/hosts/h1', { labels: { rack: 'r1' }, cpuOvercommit: 2 });
    assert.deepEqual([set.body.labels, set.body.cpuOvercommit, set.body.memoryOvercommit], [{ zone: 'a', region: 'us', rack: 'r1' }, 2, 1]);
    const removed = await call('PATCH', '/v1/hosts/h1', { labels: { rack: '' }, cpuOvercommit: 4 });
    assert.deepEqual(removed.body.labels, { zone: 'a', region: 'us' });
    for (const bad of [
      { labels: { 'Zone!': 'a' } },
      { labels: { zone: 'a b' } },
      { cpuOvercommit: 0 },
      { memoryOvercommit: 100 },
      { labels: { zone: 'x;reboot' } },
    ]) {
      const refused = await call('PATCH', '/v1/hosts/h1', bad);
      assert.equal(refused.status, 400, JSON.stringify(bad));
    }
    assert.deepEqual((await call('GET', '/v1/hosts/h1')).body.labels, { zone: 'a', region: 'us' });
  });

  it('spreads a strict anti-affinity group over hosts and refuses a fourth member, naming the group', async () => {
    const group = await call('POST', '/v1/placement-groups', { name: 'web', policy: 'anti-affinity', scope: 'host', strict: true });
    assert.equal(group.status, 201, JSON.stringify(group.body));
    for (const name of ['w1', 'w2', 'w3']) await createVm({ name, group: 'web', networks: [{ network: 'net' }] });
    assert.deepEqual((await Promise.all(['w1', 'w2', 'w3'].map((vm) => hostOf(vm)))).sort(), ['h1', 'h2', 'h3']);
    const fourth = await call('POST', '/v1/vms', { name: 'w4', image: 'tiny', group: 'web', waitReady: false });
    assert.equal(fourth.status, 422);
    assert.equal(fourth.body.code, 'NO_HOST_FITS');
    assert.match(fourth.body.message!, /already runs a member of strict anti-affinity group web/);
    assert.equal((await call('GET', '/v1/vms/w4')).status, 404, 'nothing was recorded');
    const shown = await call('GET', '/v1/placement-groups/web');
    assert.equal((shown.body.members as unknown[]).length, 3);
    const busy = await call('DELETE', '/v1/placement-groups/web');
    assert.deepEqual([busy.status, busy.body.code], [409, 'PLACEMENT_GROUP_IN_USE']);
  });

  it('spreads a zone group over zones, and a dry run shows why without creating anything', async () => {
    assert.equal((await call('POST', '/v1/placement-groups', { name: 'db', policy: 'anti-affinity', scope: 'zone', strict: true })).status, 201);
    const first = await createVm({ name: 'db1', group: 'db' });
    const plan = await call('POST', '/v1/vms/plan', { name: 'db2', image: 'tiny', group: 'db' });
    assert.equal(plan.status, 200, JSON.stringify(plan.body));
    const firstZone = first.host === 'h1' ? 'a' : 'b';
    assert.notEqual(plan.body.host === 'h1' ? 'a' : 'b', firstZone, 'the other zone');
    assert.ok((plan.body.refused as Array<{ filter: string }>).some((r) => r.filter === 'group'));
    assert.equal((await call('GET', '/v1/vms/db2')).status, 404, 'a dry run creates nothing');
    const explained = await call('POST', '/v1/schedule/explain', { cpus: 1, memoryMb: 1048576 });
    assert.equal(explained.body.host, undefined);
    assert.match((explained.body.refused as Array<{ reason: string }>)[0]!.reason, /MiB free for VMs/);
  });

  it('keeps a project with a residency rule on labelled hosts through create, migrate and evacuate, and refuses changes that break it', async () => {
    const before = await createVm({ name: 'early', project: 'web', host: 'h1', networks: [{ network: 'net' }] });
    assert.equal(before.host, 'h1');
    const refused = await call('PUT', '/v1/projects/web/requirements', { requirements: { region: 'eu' } });
    assert.deepEqual([refused.status, refused.body.code], [422, 'RESIDENCY_VIOLATED']);
    assert.match(refused.body.message!, /VM early runs on h1, which lacks region=eu/);
    const moved = await call('POST', '/v1/vms/early/migrate?project=web', { strategy: 'precopy', to: 'h2' });
    assert.equal((await cluster.services.operations.wait((moved.body.operation as { id: string }).id)).status, 'succeeded');
    assert.equal((await call('PUT', '/v1/projects/web/requirements', { requirements: { region: 'eu' } })).status, 200);

    const pinned = await call('POST', '/v1/vms', { name: 'pinned', project: 'web', image: 'tiny', host: 'h1', waitReady: false });
    assert.equal(pinned.status, 422);
    assert.match(pinned.body.message!, /h1 has region=us; project web's residency rule requires region=eu/);
    for (const name of ['eu1', 'eu2']) assert.notEqual((await createVm({ name, project: 'web', networks: [{ network: 'net' }] })).host, 'h1');
    const toUs = await call('POST', '/v1/vms/eu1/migrate?project=web', { strategy: 'precopy', to: 'h1' });
    assert.equal(toUs.status, 422);
    assert.match(toUs.body.message!, /residency rule requires region=eu/);

    const relabel = await call('PATCH', '/v1/hosts/h2', { labels: { region: 'us' } });
    assert.deepEqual([relabel.status, relabel.body.code], [422, 'RESIDENCY_VIOLATED']);
    assert.equal((await call('GET', '/v1/hosts/h2')).body.labels && ((await call('GET', '/v1/hosts/h2')).body.labels as Body).region, 'eu');

    // Evacuating h2: the project's VMs there go to h3 (the other eu host), never to h1.
    const evacuate = await call('POST', '/v1/hosts/h2/evacuate', { parallel: 1 });
    const done = await cluster.services.operations.wait((evacuate.body.operation as { id: string }).id);
    const results = (done.result as { results: Array<{ vm: string; status: string; to?: string }> } | undefined)?.results ?? [];
    for (const vm of ['early', 'eu1', 'eu2']) assert.notEqual(await hostOf(vm, 'web'), 'h1', `${vm} stays in region eu`);
    assert.ok(
      results.every((r) => r.to !== 'h1' || !['early', 'eu1', 'eu2'].includes(r.vm)),
      JSON.stringify(results),
    );
    assert.equal((await call('POST', '/v1/hosts/h2/restore', {})).status, 200);
  });

  it('records where a VM has run, when, by whom and why', async () => {
    const history = await call('GET', '/v1/vms/early/placement?project=web');
    assert.equal(history.status, 200);
    const events = history.body.events as Array<{ host: string; action: string; actor?: string; decision: { refused: unknown[]; ranked: unknown[] } }>;
    assert.deepEqual(
      events.slice(0, 2).map((e) => [e.host, e.action, e.actor]),
      [
        ['h1', 'create', 'admin'],
        ['h2', 'migrate', 'admin'],
      ],
    );
    assert.ok(
      events.some((e) => e.action === 'evacuate'),
      'the evacuation moved it and is on record',
    );
    assert.ok(events[1]!.decision.refused.length >= 1, 'the refusals are kept');
  });

  it('refuses a VM joining a strict group where it already breaks the rule, and leaves groups on request', async () => {
    assert.equal((await call('POST', '/v1/placement-groups', { name: 'pair', policy: 'anti-affinity', strict: true })).status, 201);
    const a = await createVm({ name: 'pa', group: 'pair' });
    const b = await createVm({ name: 'pb', host: a.host });
    const join = await call('PATCH', '/v1/vms/pb', { group: 'pair' });
    assert.deepEqual([join.status, join.body.code], [409, 'PLACEMENT_GROUP_VIOLATED']);
    assert.match(join.body.message!, new RegExp(`${b.host}'s host already runs a member`));
    assert.equal((await call('PATCH', '/v1/vms/pa', { group: '' })).status, 200);
    assert.equal((await call('DELETE', '/v1/placement-groups/pair')).status, 204);
  });

  it('lets project members manage their own groups but not hosts or residency', async () => {
    assert.equal((await call('POST', '/v1/users', { name: 'mia', password: 'mia-password-1' })).status, 201);
    assert.equal((await call('POST', '/v1/access/grants', { user: 'mia', role: 'member', project: 'web' })).status, 204);
    const session = (await call('POST', '/v1/auth/login', { user: 'mia', password: 'mia-password-1' })).body.secret as string;
    assert.equal((await call('POST', '/v1/placement-groups', { name: 'mine', project: 'web', policy: 'affinity' }, session)).status, 201);
    assert.equal((await call('GET', '/v1/placement-groups?project=default', undefined, session)).status, 403);
    assert.equal((await call('PATCH', '/v1/hosts/h1', { labels: { region: 'eu' } }, session)).status, 403);
    assert.equal((await call('PUT', '/v1/projects/web/requirements', { requirements: {} }, session)).status, 403);
    assert.equal((await call('POST', '/v1/schedule/explain', { cpus: 1, memoryMb: 256 }, session)).status, 403);
  });
});
