/**
 * What the browser tests of the web console run against: the control plane's API over a fake
 * cluster (real services, fake agents: test/helpers/fake-cluster.ts) serving the built console
 * (web/dist) on a loopback port, and Debian's Chromium driven headless by playwright-core with a
 * fresh profile. `close` removes all of it.
 */
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { FastifyInstance } from 'fastify';
import { type BrowserContext, chromium } from 'playwright-core';
import { buildApp } from '../../src/api/app.ts';
import { WEB_DIST_DIR } from '../../src/api/web-console.ts';
import { type FakeCluster, fakeCluster } from '../helpers/fake-cluster.ts';

export const CHROMIUM = '/usr/bin/chromium';

/** Why the browser tests cannot run here, or undefined when they can. */
export function skipReason(): string | undefined {
  if (!existsSync(CHROMIUM)) return `${CHROMIUM} is missing: install Debian's chromium (npm test's setup does, as root)`;
  return undefined;
}

// From the machine notes: as root Chromium needs --no-sandbox, and without the background
// networking flags it keeps trying to reach Google's hosts on a closed network.
export const CHROMIUM_FLAGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

export const USER = 'ada';
export const PASSWORD = 'ada-password-1';

export interface ConsoleFixture {
  cluster: FakeCluster;
  url: string;
  browser: BrowserContext;
  close(): Promise<void>;
}

/** A fake cluster of two hosts with user `ada` (admin) and VM web1, its API listening, and a browser. */
export async function startConsoleFixture(): Promise<ConsoleFixture> {
  if (!existsSync(join(WEB_DIST_DIR, 'index.html'))) throw new Error(`${WEB_DIST_DIR} is not built: run npm run build:web (npm test's setup does)`);
  const cluster = await fakeCluster(['h1', 'h2']);
  let app: FastifyInstance | undefined;
  const profile = mkdtempSync(join(tmpdir(), `nubis-web-chromium-${process.pid}-`));
  try {
    const { services } = cluster;
    await services.access.users.create(USER, PASSWORD);
    const ada = await services.access.users.row(USER);
    await services.access.roles.grant({ type: 'user', id: ada.id, name: USER }, 'admin', null);
    const created = await services.vms.create({ name: 'web1', image: 'tiny', cpus: 1, memoryMb: 256, project: 'default', waitReady: false });
    await services.operations.wait(created.id);
    app = await buildApp(services);
    await app.listen({ host: '127.0.0.1', port: 0 });
    const url = `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`;
    const browser = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      args: CHROMIUM_FLAGS,
      viewport: { width: 1280, height: 720 },
    });
    return {
      cluster,
      url,
      browser,
      async close() {
        await browser.close();
        await app?.close();
        await cluster.close();
        rmSync(profile, { recursive: true, force: true });
      },
    };
  } catch (error) {
    await app?.close();
    await cluster.close();
    rmSync(profile, { recursive: true, force: true });
    throw error;
  }
}

/**
 * Adds VM records numbered `from` up to `to` to project `many` on h1, copies of web1's row: what
 * the overview lists, not running guests. Each gets a uid of its own (the index on `unix_uid` is
 * unique), above every uid the fixture gave.
 */
export async function addSimulatedVms(cluster: FakeCluster, from: number, to: number): Promise<void> {
  const { db } = cluster;
  if (!(await db.selectFrom('projects').select('id').where('name', '=', 'many').executeTakeFirst()))
    await db.insertInto('projects').values({ id: 'prj-many', name: 'many', created_at: new Date().toISOString(), requirements: '{}' }).execute();
  const template = await db.selectFrom('vms').selectAll().where('name', '=', 'web1').executeTakeFirstOrThrow();
  const rows = Array.from({ length: to - from }, (_, offset) => ({
    ...template,
    id: `vm-sim${String(from + offset).padStart(6, '0')}`,
    name: `sim-${String(from + offset).padStart(4, '0')}`,
    project_id: 'prj-many',
    unix_uid: template.unix_uid === null ? null : template.unix_uid + 100_000 + from + offset,
  }));
  for (let start = 0; start < rows.length; start += 100)
    await db
      .insertInto('vms')
      .values(rows.slice(start, start + 100))
      .execute();
}
