/**
 * The control plane's real services over a fresh database, with fake agents for hosts, and the
 * API over them: for unit tests of the services that drive agents (VMs, migrations, networks) and
 * of the API with `inject()`, without QEMU or namespaces.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FakeAgent } from '../../src/agent-api/fake-agent.ts';
import type { FastifyInstance } from 'fastify';
import { type AppServices, buildApp } from '../../src/api/app.ts';
import { createServices } from '../../src/app/control-plane.ts';
import { bootstrapAccess } from '../../src/access/bootstrap.ts';
import type { OidcConfig } from '../../src/access/oidc.ts';
import { openDatabase, type Db } from '../../src/state/database.ts';
import type { KyselyPlugin } from 'kysely';
import { startBackupStore } from '../../src/backup/store/store-app.ts';
import { dataPaths } from '../../src/core/paths.ts';

export interface FakeCluster {
  services: AppServices;
  db: Db;
  /** The data folder (database, image store, import folder), removed by `close`. */
  dir: string;
  /** The admin token the database knows, and the header that sends it. */
  token: string;
  auth: { authorization: string };
  /** The API over these services, built on first use (for `inject()`). */
  app(): Promise<FastifyInstance>;
  /** One API request as the admin, through `inject()`: its status and its JSON body ({} when empty). */
  call<T = Record<string, unknown> & { code?: string; message?: string }>(method: string, url: string, body?: unknown): Promise<{ status: number; body: T }>;
  /** The fake agent of each host, by host name. */
  agent(host: string): FakeAgent;
  /**
   * The fake agents heartbeat every half second, as real ones do every second; `silence` stops
   * a host's heartbeats and dates its last one `agoMs` back (a host that died then).
   */
  silence(host: string, agoMs: number): Promise<void>;
  /** The host's heartbeats start again. */
  revive(host: string): Promise<void>;
  close(): Promise<void>;
}

/**
 * Services with `hosts` joined (each with its own underlay address), the `default` project, an
 * admin token and the tiny image (its files stand-ins: nothing boots). With `oidc`, users sign in
 * with ID tokens of that provider.
 */
export async function fakeCluster(
  hosts: string[] = [],
  options: {
    auditPublishFile?: string;
    oidc?: OidcConfig;
    /** Added to the database the services use (not to `db`): a QueryCounter sees their queries. */
    plugins?: KyselyPlugin[];
    desktopClock?: () => number;
    consoleTicketTtlMs?: number;
  } = {},
): Promise<FakeCluster> {
  const dir = mkdtempSync(join(tmpdir(), `nubis-fake-cluster-${process.pid}-`));
  const db = await openDatabase(join(dir, 'nubis.db'));
  const now = new Date().toISOString();
  const token = 'nubis_admin_test-secret';
  await db.insertInto('projects').values({ id: 'prj-1', name: 'default', created_at: now, requirements: '{}' }).execute();
  // The first admin as a real start makes it: the user admin, its platform role and this token.
  writeFileSync(join(dir, 'admin-token'), `${token}\n`, { mode: 0o600 });
  await bootstrapAccess(db, join(dir, 'admin-token'));
  const agents = new Map<string, FakeAgent>();
  const services = createServices({
    db: (options.plugins ?? []).reduce((wrapped, plugin) => wrapped.withPlugin(plugin), db),
    dataDir: dir,
    joinToken: 'nubis_join_test',
    auditPublishFile: options.auditPublishFile,
    oidc: options.oidc,
    ...(options.desktopClock ? { desktopClock: options.desktopClock } : {}),
    consoleTicketTtlMs: options.consoleTicketTtlMs,
    agentFactory: ({ hostName }) => {
      if (!agents.has(hostName)) agents.set(hostName, new FakeAgent(hostName));
      return agents.get(hostName)!;
    },
  });
  await services.audit.start();
  // A real backup store in the cluster's folder (its agents are fakes; the store is cheap).
  const backupStore = await startBackupStore({ dir: dataPaths(dir).backupStore, socketPath: dataPaths(dir).backupStoreSocket });
  writeFileSync(join(dir, 'vmlinuz'), 'kernel');
  writeFileSync(join(dir, 'initrd'), 'initrd');
  await services.images.registerBuiltin('tiny', { kernelPath: join(dir, 'vmlinuz'), initrdPath: join(dir, 'initrd') });
  for (const [index, name] of hosts.entries()) {
    await services.hosts.join({
      name,
      joinToken: 'nubis_join_test',
      endpoint: `unix:/fake/${name}.sock`,
      agentToken: `nubis_agent_${name.padEnd(32, 'x')}`,
      accelerator: 'tcg',
      acceleratorReason: 'fake',
      cpus: 4,
      memoryMb: 8192,
      underlayIp: `172.31.0.${11 + index}`,
      qemuVersion: 'QEMU emulator version 10.0.2',
    });
    services.hosts.agent(await services.hosts.row(name));
  }
  const alive = new Set(hosts);
  const keepAlive = setInterval(async () => {
    for (const name of alive) {
      const row = await services.hosts.row(name).catch(() => undefined);
      if (row && alive.has(name)) services.hosts.heartbeat(row.id);
    }
  }, 500);
  keepAlive.unref();
  let app: FastifyInstance | undefined;
  return {
    services,
    db,
    dir,
    token,
    auth: { authorization: `Bearer ${token}` },
    app: async () => {
      app ??= await buildApp(services);
      return app;
    },
    async call<T>(method: string, url: string, body?: unknown) {
      app ??= await buildApp(services);
      const response = await app.inject({
        method: method as 'GET',
        url,
        headers: { authorization: `Bearer ${token}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
        ...(body === undefined ? {} : { payload: JSON.stringify(body) }),
      });
      return { status: response.statusCode, body: (response.body ? response.json() : {}) as T };
    },
    agent: (host) => agents.get(host)!,
    async silence(host, agoMs) {
      alive.delete(host);
      services.hosts.heartbeat((await services.hosts.row(host)).id, Date.now() - agoMs);
    },
    async revive(host) {
      alive.add(host);
      services.hosts.heartbeat((await services.hosts.row(host)).id);
    },
    async close() {
      clearInterval(keepAlive);
      await services.operations.drain();
      await app?.close();
      await services.audit.stop();
      await backupStore.close();
      await db.destroy();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
