/**
 * GET /metrics as Prometheus and its operator meet it, through the real API over a fake cluster:
 * a token of the built-in role `metrics` scrapes the hosts, VMs, migrations, pools and the API's
 * own requests in the text format, and can do nothing else; the `nubis metrics` command reads it.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { FastifyInstance } from 'fastify';
import type { Principal } from '../../src/access/authorize.ts';
import { type MetricSample, parsePrometheusText } from '../../src/cli/prometheus-text.ts';
import { repoRoot } from '../../src/core/paths.ts';
import { type FakeCluster, fakeCluster } from '../helpers/fake-cluster.ts';

/** The value of the one sample of `name` whose labels include `labels`, or undefined. */
function sampleValue(samples: MetricSample[], name: string, labels: Record<string, string> = {}): number | string | undefined {
  const found = samples.filter((s) => s.name === name && Object.entries(labels).every(([key, value]) => s.labels[key] === value));
  assert.ok(found.length <= 1, `${name} ${JSON.stringify(labels)} matches ${found.length} samples`);
  return found[0]?.value;
}

describe('GET /metrics (Prometheus) through the API', () => {
  let cluster: FakeCluster;
  let app: FastifyInstance;
  let metricsToken: string;

  async function call(method: string, url: string, token: string | undefined, body?: unknown) {
    return app.inject({
      method: method as 'GET',
      url,
      headers: { ...(token ? { authorization: `Bearer ${token}` } : {}), ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
      ...(body === undefined ? {} : { payload: JSON.stringify(body) }),
    });
  }

  async function scrape(): Promise<MetricSample[]> {
    const response = await call('GET', '/metrics', metricsToken);
    assert.equal(response.statusCode, 200, response.body);
    return parsePrometheusText(response.body);
  }

  before(async () => {
    cluster = await fakeCluster(['h1', 'h2']);
    app = await cluster.app();
    const { services } = cluster;
    await services.networks.create({ name: 'n1', subnet: '10.71.0.0/24', dhcp: false, nat: false });
    for (const [name, host, cpus, memoryMb] of [
      ['vm1', 'h1', 2, 256],
      ['vm2', 'h2', 1, 128],
    ] as const) {
      const created = await services.vms.create({ name, image: 'tiny', cpus, memoryMb, host, networks: [{ network: 'n1' }], waitReady: false });
      assert.equal((await services.operations.wait(created.id)).status, 'succeeded');
    }
    assert.equal((await services.operations.wait((await services.vms.act('vm2', 'stop')).id)).status, 'succeeded');
    // What an operator does: a token limited to the metrics role, for Prometheus.
    const issued = await call('POST', '/v1/tokens', cluster.token, { name: 'prometheus', role: 'metrics' });
    assert.equal(issued.statusCode, 201, issued.body);
    metricsToken = issued.json().secret;
  });
  after(() => cluster.close());

  it('serves the text format to a metrics token: host capacity, allocation and state, VMs by state and their sizes', async () => {
    const response = await call('GET', '/metrics', metricsToken);
    assert.equal(response.statusCode, 200, response.body);
    assert.equal(response.headers['content-type'], 'text/plain; version=0.0.4; charset=utf-8');
    const samples = parsePrometheusText(response.body);
    for (const h of ['h1', 'h2']) {
      assert.equal(sampleValue(samples, 'nubis_host_cpus', { host: h }), 4);
      assert.equal(sampleValue(samples, 'nubis_host_memory_bytes', { host: h }), 8192 * 2 ** 20);
      assert.equal(sampleValue(samples, 'nubis_host_state', { host: h, state: 'online' }), 1);
    }
    assert.equal(sampleValue(samples, 'nubis_host_allocated_cpus', { host: 'h1' }), 2);
    assert.equal(sampleValue(samples, 'nubis_host_allocated_memory_bytes', { host: 'h2' }), 128 * 2 ** 20);
    assert.equal(sampleValue(samples, 'nubis_host_vms', { host: 'h2' }), 1);
    assert.equal(sampleValue(samples, 'nubis_vms', { project: 'default', state: 'running' }), 1);
    assert.equal(sampleValue(samples, 'nubis_vms', { project: 'default', state: 'stopped' }), 1);
    assert.equal(sampleValue(samples, 'nubis_vm_cpus', { project: 'default', vm: 'vm1' }), 2);
    assert.equal(sampleValue(samples, 'nubis_vm_memory_bytes', { project: 'default', vm: 'vm2' }), 128 * 2 ** 20);
    assert.ok(sampleValue(samples, 'nubis_process_resident_memory_bytes') !== undefined, 'the process metrics carry the nubis_ prefix');

    // A host that stopped reporting is shown offline, with the age of its last report.
    await cluster.silence('h2', 90_000);
    const later = await scrape();
    assert.deepEqual(
      later.filter((s) => s.name === 'nubis_host_state' && s.labels.host === 'h2').map((s) => s.labels.state),
      ['offline'],
    );
    const age = sampleValue(later, 'nubis_host_heartbeat_age_seconds', { host: 'h2' }) as number;
    assert.ok(age >= 90 && age < 120, `heartbeat age ${age}`);
    cluster.services.hosts.heartbeat((await cluster.services.hosts.row('h2')).id);
  });

  it('counts and times API requests by route pattern, never by the URL as sent', async () => {
    for (const vm of ['vm1', 'vm2']) assert.equal((await call('GET', `/v1/vms/${vm}`, cluster.token)).statusCode, 200);
    assert.equal((await call('GET', '/v1/no-such-route', cluster.token)).statusCode, 404);
    const samples = await scrape();
    const labels = { route: '/v1/vms/:vm', method: 'GET', status_code: '200' };
    assert.equal(sampleValue(samples, 'nubis_api_requests_total', labels), 2);
    assert.equal(sampleValue(samples, 'nubis_api_request_duration_seconds_count', labels), 2);
    assert.equal(sampleValue(samples, 'nubis_api_request_duration_seconds_bucket', { ...labels, le: '+Inf' }), 2);
    assert.equal(sampleValue(samples, 'nubis_api_requests_total', { route: 'unmatched', status_code: '404' }), 1);
    const routes = new Set(samples.filter((s) => s.name === 'nubis_api_requests_total').map((s) => s.labels.route));
    assert.deepEqual(
      [...routes].filter((route) => /vm1|vm2|no-such/.test(route)),
      [],
      'no raw URL in a label',
    );
    assert.ok(!routes.has('/metrics'), 'scrapes are not counted among the requests');
  });

  it('counts migrations by strategy and outcome, with the figures of those that measured them', async () => {
    const { services } = cluster;
    const vm1 = await services.vms.get('vm1');
    const done = await services.operations.wait((await services.migrations.migrate(vm1.id, { to: 'h2', strategy: 'precopy' })).id);
    assert.equal(done.status, 'succeeded', JSON.stringify(done.error));
    cluster.agent('h1').failNext('prepareIncoming', new Error('The destination refused'));
    const failed = await services.operations.wait((await services.migrations.migrate(vm1.id, { to: 'h1', strategy: 'precopy' })).id);
    assert.equal(failed.status, 'failed');
    const samples = await scrape();
    const completed = { strategy: 'precopy', outcome: 'completed' };
    assert.equal(sampleValue(samples, 'nubis_migrations_total', completed), 1);
    assert.equal(sampleValue(samples, 'nubis_migrations_total', { strategy: 'precopy', outcome: 'failed' }), 1);
    // The fake agent's QEMU says: 100 ms in all, 10 ms of downtime, 2 MiB sent.
    assert.equal(sampleValue(samples, 'nubis_migration_duration_seconds_sum', completed), 0.1);
    assert.equal(sampleValue(samples, 'nubis_migration_downtime_seconds_sum', completed), 0.01);
    assert.equal(sampleValue(samples, 'nubis_migration_transferred_bytes_sum', completed), 2 ** 21);
    assert.equal(sampleValue(samples, 'nubis_migration_duration_seconds_count', { strategy: 'precopy', outcome: 'failed' }), undefined);
    assert.equal(sampleValue(samples, 'nubis_host_vms', { host: 'h2' }), 2, 'the VM is counted on its new host');
  });

  it('shows dir pools from the state and leaves out an unreachable storage node, counting the miss', async () => {
    const { dirPools } = cluster.services.storage;
    await dirPools.create('dp1', ['h1'], false);
    await dirPools.createVolume('dp1', 'v1', 2 ** 30);
    const started = Date.now();
    const samples = await scrape();
    assert.ok(Date.now() - started < 5_000, 'the scrape does not wait on what does not answer');
    assert.equal(sampleValue(samples, 'nubis_storage_pool_provisioned_bytes', { pool: 'dp1', kind: 'dir' }), 2 ** 30);
    assert.equal(sampleValue(samples, 'nubis_storage_pool_volumes', { pool: 'dp1', kind: 'dir' }), 1);
    assert.equal(sampleValue(samples, 'nubis_storage_node_up'), 0);
    assert.ok(Number(sampleValue(samples, 'nubis_scrape_errors_total', { source: 'storage_node' })) >= 1);
    assert.equal(sampleValue(samples, 'nubis_scrape_errors_total', { source: 'hosts' }), 0);
  });

  it('refuses a scrape without a token (401) and with a project member token (403)', async () => {
    const anonymous = await call('GET', '/metrics', undefined);
    assert.deepEqual([anonymous.statusCode, anonymous.json().code], [401, 'AUTH_REQUIRED']);
    assert.equal((await call('POST', '/v1/projects', cluster.token, { name: 'web' })).statusCode, 201);
    assert.equal((await call('POST', '/v1/users', cluster.token, { name: 'bob', password: 'bob-password-1' })).statusCode, 201);
    assert.equal((await call('POST', '/v1/access/grants', cluster.token, { user: 'bob', role: 'member', project: 'web' })).statusCode, 204);
    const bob = (await call('POST', '/v1/auth/login', undefined, { user: 'bob', password: 'bob-password-1' })).json().secret as string;
    const member = await call('GET', '/metrics', bob);
    assert.deepEqual([member.statusCode, member.json().code], [403, 'ACCESS_DENIED']);
    assert.match(member.json().message, /lacks permission metrics\.read on the platform/);
    const ownToken = await call('POST', '/v1/tokens', bob, { name: 'scraper', role: 'metrics' });
    assert.deepEqual([ownToken.statusCode, ownToken.json().code], [403, 'TOKEN_TOO_WIDE'], 'a member cannot mint a metrics token');
  });

  it('lets a metrics token do nothing else: every route answers it as it answers a user without any role', async () => {
    const { access } = cluster.services;
    await access.users.create('nobody', 'nobody-password-1');
    const admin = await access.tokens.authenticate(cluster.token);
    const nobody: Principal = { ...admin, userId: (await access.users.row('nobody')).id, userName: 'nobody', grants: [] };
    const roleId = await access.roles.id('metrics');
    // Fresh tokens for each request, so that a logout in the sweep cannot spoil the next one.
    const tokenOf = async (who: 'metrics' | 'nobody') =>
      (who === 'metrics'
        ? await access.tokens.create(admin, { name: `m-${Math.random().toString(36).slice(2)}`, roleId })
        : await access.tokens.create(nobody, { name: `n-${Math.random().toString(36).slice(2)}`, kind: 'session' })
      ).secret;
    const document = (await call('GET', '/v1/openapi.json', undefined)).json() as {
      paths: Record<string, Record<string, { operationId: string; parameters?: Array<{ in: string }>; requestBody?: unknown }>>;
    };
    const differences: string[] = [];
    for (const [path, methods] of Object.entries(document.paths))
      for (const [method, operation] of Object.entries(methods)) {
        // Nothing exists under these names, and an unknown field fails validation, which runs after the check.
        const url = `${path.replace(/\{\w+\}/g, 'none-such')}${operation.parameters?.some((p) => p.in === 'query') ? '?sweepProbe=1' : ''}`;
        const body = operation.requestBody ? { sweepProbe: 1 } : undefined;
        const answer = async (who: 'metrics' | 'nobody') => {
          const status = (await call(method.toUpperCase(), url, await tokenOf(who), body)).statusCode;
          return status === 401 || status === 403 ? 'denied' : 'allowed';
        };
        const [asMetrics, asNobody] = [await answer('metrics'), await answer('nobody')];
        const expected = operation.operationId === 'getMetrics' ? 'allowed' : asNobody;
        if (asMetrics !== expected) differences.push(`${operation.operationId}: ${asMetrics} for the metrics token, ${asNobody} for a user without roles`);
      }
    assert.deepEqual(differences, [], 'the metrics role adds GET /metrics and nothing else');
    assert.equal((await call('GET', '/v1/vms?project=default', metricsToken)).statusCode, 403);
    assert.equal((await call('GET', '/v1/hosts', metricsToken)).statusCode, 403);
  });

  it('nubis metrics prints the scrape, filtered by name prefix, and --json gives its samples', async () => {
    const url = await app.listen({ host: '127.0.0.1', port: 0 });
    const env: NodeJS.ProcessEnv = { ...process.env, NUBIS_URL: url, NUBIS_TOKEN: metricsToken, HOME: cluster.dir, XDG_CONFIG_HOME: cluster.dir };
    delete env.NODE_TEST_CONTEXT;
    delete env.NUBIS_CA;
    const nubis = (args: string[]) =>
      new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve, reject) => {
        const child = spawn(process.execPath, [join(repoRoot, 'bin/nubis.mjs'), ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] });
        let [stdout, stderr] = ['', ''];
        child.stdout.on('data', (chunk) => (stdout += chunk));
        child.stderr.on('data', (chunk) => (stderr += chunk));
        child.on('error', reject);
        child.on('close', (code) => resolve({ code, stdout, stderr }));
      });
    const json = await nubis(['metrics', 'nubis_host_cpus', '--json']);
    assert.equal(json.code, 0, json.stderr);
    assert.deepEqual(JSON.parse(json.stdout), [
      { name: 'nubis_host_cpus', labels: { host: 'h1' }, value: 4, type: 'gauge' },
      { name: 'nubis_host_cpus', labels: { host: 'h2' }, value: 4, type: 'gauge' },
    ]);
    const text = await nubis(['metrics', 'nubis_vm_cpus']);
    assert.equal(text.code, 0, text.stderr);
    assert.deepEqual(text.stdout.trim().split('\n').slice(2), ['nubis_vm_cpus{project="default",vm="vm1"} 2', 'nubis_vm_cpus{project="default",vm="vm2"} 1']);
    assert.match(text.stdout, /^# HELP nubis_vm_cpus /);
  });
});
