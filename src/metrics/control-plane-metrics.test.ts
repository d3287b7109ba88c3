/**
 * The control plane's metrics over a real (empty) database and stand-ins for the host registry
 * and the storage node: what a scrape shows of hosts whatever their state, that a storage node
 * which does not answer neither holds a scrape up nor gets asked at every scrape, and that the
 * metrics other services feed reach the scrape.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { type MetricSample, parsePrometheusText } from '../cli/prometheus-text.ts';
import { type Db, openDatabase } from '../state/database.ts';
import type { HostSample, StoragePoolSample } from './cluster-snapshot.ts';
import { ControlPlaneMetrics } from './control-plane-metrics.ts';
import { clusterMetrics, observeMigration } from './metrics.ts';

/** The value of the one sample of `name` with `labels` (among others), or undefined. */
function sampleValue(samples: MetricSample[], name: string, labels: Record<string, string> = {}): number | string | undefined {
  const found = samples.filter((s) => s.name === name && Object.entries(labels).every(([key, value]) => s.labels[key] === value));
  assert.ok(found.length <= 1, `${name} ${JSON.stringify(labels)} matches ${found.length} samples`);
  return found[0]?.value;
}

function host(name: string, status: string, lastSeenAgoMs: number): HostSample {
  const lastSeenAt = new Date(Date.now() - lastSeenAgoMs).toISOString();
  return { name, status, accelerator: 'tcg', cpus: 8, memoryMb: 16_384, allocatedCpus: 3, allocatedMemoryMb: 1024, vmCount: 2, lastSeenAt };
}

const POOL: StoragePoolSample = {
  name: 'tank',
  state: 'degraded',
  readOnly: false,
  sizeBytes: 2 ** 34,
  allocatedBytes: 2 ** 30,
  freeBytes: 2 ** 34 - 2 ** 30,
  provisionedBytes: 2 ** 35,
  volumes: 3,
  members: [
    { index: 0, state: 'online', readErrors: 0, writeErrors: 0, checksumErrors: 0 },
    { index: 1, state: 'faulted', readErrors: 7, writeErrors: 2, checksumErrors: 1 },
  ],
};

describe('control plane metrics', () => {
  let dir: string;
  let db: Db;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), `nubis-metrics-${process.pid}-`));
    db = await openDatabase(join(dir, 'nubis.db'));
  });
  after(async () => {
    await db.destroy();
    rmSync(dir, { recursive: true, force: true });
  });

  const scrape = async (metrics: ControlPlaneMetrics) => parsePrometheusText((await metrics.scrape()).body);

  it('shows each host in the state its registry gives, with capacity, allocation and heartbeat age; a host gone leaves no series', async () => {
    let hosts = [host('h1', 'online', 2_000), host('h2', 'suspect', 45_000)];
    const metrics = new ControlPlaneMetrics({ db, hosts: { list: async () => hosts } });
    const samples = await scrape(metrics);
    assert.equal(sampleValue(samples, 'nubis_host_state', { host: 'h1', state: 'online' }), 1);
    assert.equal(sampleValue(samples, 'nubis_host_state', { host: 'h2', state: 'suspect' }), 1, 'a state the metrics never heard of passes through');
    assert.equal(sampleValue(samples, 'nubis_host_memory_bytes', { host: 'h1' }), 16 * 2 ** 30);
    assert.equal(sampleValue(samples, 'nubis_host_allocated_memory_bytes', { host: 'h1' }), 2 ** 30);
    assert.equal(sampleValue(samples, 'nubis_host_allocated_cpus', { host: 'h2' }), 3);
    const age = sampleValue(samples, 'nubis_host_heartbeat_age_seconds', { host: 'h2' }) as number;
    assert.ok(age >= 45 && age < 60, `heartbeat age ${age}`);
    hosts = [host('h1', 'maintenance', 0)];
    const later = await scrape(metrics);
    assert.deepEqual(
      later.filter((s) => s.name === 'nubis_host_state').map((s) => s.labels),
      [{ host: 'h1', state: 'maintenance' }],
    );
  });

  it('answers without what could not be read, and counts it', async () => {
    const metrics = new ControlPlaneMetrics({
      db,
      hosts: {
        list: async () => {
          throw new Error('database is locked');
        },
      },
    });
    const samples = await scrape(metrics);
    assert.equal(sampleValue(samples, 'nubis_scrape_errors_total', { source: 'hosts' }), 1);
    assert.equal(sampleValue(samples, 'nubis_scrape_errors_total', { source: 'vms' }), 0);
    assert.equal(
      samples.some((s) => s.name.startsWith('nubis_host_')),
      false,
    );
  });

  it('waits on a silent storage node no longer than its timeout, and asks it again only after the refresh interval', async () => {
    let calls = 0;
    const silent = {
      call: <T>(request: { signal?: AbortSignal }) =>
        new Promise<T>((_resolve, reject) => {
          calls++;
          request.signal?.addEventListener('abort', () => reject(new Error('aborted')));
        }),
    };
    const metrics = new ControlPlaneMetrics({ db, hosts: { list: async () => [] }, storage: silent }, { storage: { timeoutMs: 200, refreshMs: 60_000 } });
    const started = Date.now();
    const first = await scrape(metrics);
    assert.ok(Date.now() - started < 2_000, `the scrape took ${Date.now() - started} ms`);
    assert.equal(sampleValue(first, 'nubis_storage_node_up'), 0);
    assert.equal(sampleValue(first, 'nubis_scrape_errors_total', { source: 'storage_node' }), 1);
    const second = await scrape(metrics);
    assert.equal(calls, 1, 'the node is not asked again within the refresh interval');
    assert.equal(sampleValue(second, 'nubis_scrape_errors_total', { source: 'storage_node' }), 1);
    assert.equal(
      second.some((s) => s.name === 'nubis_storage_pool_size_bytes'),
      false,
    );
  });

  it("shows the storage node's pools: health, capacity and each member's state and errors", async () => {
    const answering = { call: async <T>() => [POOL] as T };
    const samples = await scrape(new ControlPlaneMetrics({ db, hosts: { list: async () => [] }, storage: answering }));
    assert.equal(sampleValue(samples, 'nubis_storage_node_up'), 1);
    assert.equal(sampleValue(samples, 'nubis_storage_pool_state', { pool: 'tank', state: 'degraded' }), 1);
    assert.equal(sampleValue(samples, 'nubis_storage_pool_free_bytes', { pool: 'tank' }), 2 ** 34 - 2 ** 30);
    assert.equal(sampleValue(samples, 'nubis_storage_pool_provisioned_bytes', { pool: 'tank', kind: 'san' }), 2 ** 35);
    assert.equal(sampleValue(samples, 'nubis_storage_pool_member_state', { pool: 'tank', member: '1', state: 'faulted' }), 1);
    assert.equal(sampleValue(samples, 'nubis_storage_pool_member_errors_total', { pool: 'tank', member: '1', error: 'read' }), 7);
  });

  it('counts the rows the control plane changed in its database, and nothing for reads', async () => {
    const metrics = new ControlPlaneMetrics({ db, hosts: { list: async () => [] } });
    const rowsChanged = async () => Number(sampleValue(await scrape(metrics), 'nubis_db_rows_changed_total'));
    const first = await rowsChanged();
    await db.selectFrom('projects').selectAll().execute();
    assert.equal(await rowsChanged(), first, 'a read (and a scrape) changes nothing');
    const now = new Date().toISOString();
    await db
      .insertInto('projects')
      .values([1, 2, 3].map((n) => ({ id: `prj-rows-${n}`, name: `rows-${n}`, created_at: now, requirements: '{}' })))
      .execute();
    await db.updateTable('projects').set({ requirements: '{}' }).where('name', '=', 'rows-1').execute();
    assert.equal(await rowsChanged(), first + 4);
  });

  it('serves what other services count: migrations with their figures, HA and balancer metrics registered from the start', async () => {
    const metrics = new ControlPlaneMetrics({ db, hosts: { list: async () => [] } });
    const before = await scrape(metrics);
    const labels = { strategy: 'auto', outcome: 'completed' };
    const countBefore = Number(sampleValue(before, 'nubis_migrations_total', labels) ?? 0);
    observeMigration({ ...labels, outcome: 'completed', figures: { totalTimeMs: 1500, downtimeMs: 12, pausedMs: 40, transferredBytes: 2 ** 28 } });
    observeMigration({ strategy: 'auto', outcome: 'failed', figures: {} });
    clusterMetrics.haRestarts.inc({ outcome: 'restarted' });
    const text = (await metrics.scrape()).body;
    const samples = parsePrometheusText(text);
    assert.equal(sampleValue(samples, 'nubis_migrations_total', labels), countBefore + 1);
    assert.equal(sampleValue(samples, 'nubis_migration_blackout_seconds_bucket', { ...labels, le: '0.05' }), 1);
    assert.equal(sampleValue(samples, 'nubis_migration_blackout_seconds_bucket', { ...labels, le: '0.02' }), 0);
    assert.equal(sampleValue(samples, 'nubis_migration_transferred_bytes_sum', labels), 2 ** 28);
    assert.equal(sampleValue(samples, 'nubis_migrations_total', { strategy: 'auto', outcome: 'failed' }), 1);
    assert.equal(
      sampleValue(samples, 'nubis_migration_duration_seconds_count', { strategy: 'auto', outcome: 'failed' }),
      undefined,
      'no figure, no observation',
    );
    assert.equal(sampleValue(samples, 'nubis_ha_restarts_total', { outcome: 'restarted' }), 1);
    for (const name of ['nubis_ha_failover_seconds', 'nubis_balancer_moves_total', 'nubis_process_cpu_seconds_total'])
      assert.match(text, new RegExp(`^# TYPE ${name} `, 'm'));
  });
});
