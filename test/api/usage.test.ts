/**
 * Usage graphs through the API over a fake cluster: the agent posts counters with its own
 * token, users read rates for what they may see, and a VM's graph goes when the VM does.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { FastifyInstance } from 'fastify';
import type { Principal } from '../../src/access/authorize.ts';
import type { UsageSeries } from '../../src/wire/event-schemas.ts';
import { type FakeCluster, fakeCluster } from '../helpers/fake-cluster.ts';

describe('usage graphs through the API', () => {
  let cluster: FakeCluster;
  let app: FastifyInstance;
  let vmId: string;
  const agentToken = `nubis_agent_${'h1'.padEnd(32, 'x')}`;

  async function call(method: string, url: string, token: string, body?: unknown) {
    const response = await app.inject({
      method: method as 'GET',
      url,
      headers: { authorization: `Bearer ${token}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
      ...(body === undefined ? {} : { payload: JSON.stringify(body) }),
    });
    return { status: response.statusCode, body: (response.body ? response.json() : {}) as Record<string, unknown> };
  }

  function report(atMs: number, cpuSeconds: number, vm = vmId) {
    return {
      at: new Date(atMs).toISOString(),
      host: { cpuTotalSeconds: atMs / 250, cpuIdleSeconds: atMs / 1000, cpus: 4, memoryUsedBytes: 3 * 2 ** 30, memoryTotalBytes: 8 * 2 ** 30 },
      vms: [
        { vm, pid: 4242, cpus: 1, cpuSeconds, memoryBytes: 100 * 2 ** 20, diskReadBytes: cpuSeconds * 1000, diskWriteBytes: 0, netRxBytes: 0, netTxBytes: 0 },
      ],
    };
  }

  async function tokenOf(user: string, project: string): Promise<string> {
    const created = await cluster.services.access.users.create(user, `${user}-password-1`);
    const userId = (await cluster.services.access.users.row(created.name)).id;
    const projectId = (await cluster.db.selectFrom('projects').select('id').where('name', '=', project).executeTakeFirstOrThrow()).id;
    await cluster.services.access.roles.grant({ type: 'user', id: userId, name: user }, 'reader', projectId);
    const owner: Principal = { userId, userName: user, tokenId: '', tokenName: '', grants: [], tokenProjectId: null, tokenRole: null };
    return (await cluster.services.access.tokens.create(owner, { name: `usage-${user}`, kind: 'session' })).secret;
  }

  before(async () => {
    cluster = await fakeCluster(['h1']);
    app = await cluster.app();
    for (const name of ['alpha', 'beta']) assert.equal((await call('POST', '/v1/projects', cluster.token, { name })).status, 201);
    const created = await call('POST', '/v1/vms', cluster.token, { name: 'vm1', image: 'tiny', project: 'alpha', cpus: 1, memoryMb: 256, waitReady: false });
    await cluster.services.operations.wait((created.body.operation as { id: string }).id);
    vmId = (await cluster.services.vms.get('vm1', 'alpha')).id;
  });
  after(() => cluster.close());

  it('takes counters from the agent and shows rates to a reader of the project, not to others', async () => {
    const now = Date.now();
    assert.equal((await call('POST', '/v1/hosts/h1/usage', agentToken, report(now - 10_000, 100))).status, 204);
    assert.equal((await call('POST', '/v1/hosts/h1/usage', agentToken, report(now, 105))).status, 204);
    const reader = await tokenOf('rita', 'alpha');
    const usage = await call('GET', '/v1/vms/vm1/usage?project=alpha', reader);
    assert.equal(usage.status, 200, JSON.stringify(usage.body));
    const series = usage.body as unknown as UsageSeries;
    assert.equal(series.timestamps.length, 360);
    assert.equal(series.stepSeconds, 10);
    const cpu = series.average.cpu.filter((v) => v !== null);
    assert.deepEqual(cpu, [0.5], '5 CPU seconds in 10 s on 1 vCPU');
    assert.deepEqual(
      series.average.diskReadBytesPerSec.filter((v) => v !== null),
      [500],
    );
    assert.equal(series.memoryTotalBytes, 256 * 2 ** 20);
    const day = (await call('GET', '/v1/vms/vm1/usage?project=alpha&range=day', reader)).body as unknown as UsageSeries;
    assert.equal(day.timestamps.length, 288);
    assert.deepEqual(
      day.max?.cpu.filter((v) => v !== null),
      [0.5],
    );
    const outsider = await tokenOf('otto', 'beta');
    assert.equal((await call('GET', '/v1/vms/vm1/usage?project=alpha', outsider)).status, 403);
    const host = await call('GET', '/v1/hosts/h1/usage', cluster.token);
    assert.equal(host.status, 200);
    assert.deepEqual(
      (host.body as unknown as UsageSeries).average.cpu.filter((v) => v !== null),
      [0.75],
    );
    assert.equal((await call('GET', '/v1/hosts/h1/usage', reader)).status, 403, 'hosts are for the platform');
  });

  it("refuses a user's token, a malformed body, and a VM of another host", async () => {
    assert.equal((await call('POST', '/v1/hosts/h1/usage', cluster.token, report(Date.now(), 1))).status, 401);
    const extra = { ...report(Date.now(), 1), extra: 1 };
    assert.equal((await call('POST', '/v1/hosts/h1/usage', agentToken, extra)).status, 400);
    const negative = report(Date.now(), -1);
    assert.equal((await call('POST', '/v1/hosts/h1/usage', agentToken, negative)).status, 400);
    assert.equal((await call('POST', '/v1/hosts/h1/usage', agentToken, report(Date.now(), 1, 'vm-not-here'))).status, 204);
    assert.equal(cluster.services.usage.vm('vm-not-here', 'hour'), undefined, 'a host speaks for its own VMs only');
  });

  it("drops a deleted VM's graph", async () => {
    assert.ok(cluster.services.usage.vm(vmId, 'hour'));
    const deleted = await call('DELETE', '/v1/vms/vm1?project=alpha', cluster.token);
    await cluster.services.operations.wait((deleted.body.operation as { id: string }).id);
    await cluster.services.changes.settled();
    assert.equal(cluster.services.usage.vm(vmId, 'hour'), undefined);
  });
});
