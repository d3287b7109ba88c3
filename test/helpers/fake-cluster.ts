/**
 * The control plane's real services over a fresh database, with fake agents for hosts: for unit
 * tests of the services that drive agents (VMs, migrations, networks), without QEMU or namespaces.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FakeAgent } from '../../src/agent-api/fake-agent.ts';
import type { AppServices } from '../../src/api/app.ts';
import { createServices } from '../../src/app/control-plane.ts';
import { openDatabase, type Db } from '../../src/state/database.ts';

export interface FakeCluster {
  services: AppServices;
  db: Db;
  /** The fake agent of each host, by host name. */
  agent(host: string): FakeAgent;
  close(): Promise<void>;
}

/** Services with `hosts` joined (each with its own underlay address), the `default` project and the tiny image. */
export async function fakeCluster(hosts: string[]): Promise<FakeCluster> {
  const dir = mkdtempSync(join(tmpdir(), 'nubis-fake-cluster-'));
  const db = await openDatabase(join(dir, 'nubis.db'));
  await db.insertInto('projects').values({ id: 'prj-1', name: 'default', created_at: new Date().toISOString() }).execute();
  const agents = new Map<string, FakeAgent>();
  const services = createServices({
    db,
    dataDir: dir,
    joinToken: 'nubis_join_test',
    agentFactory: ({ hostName }) => {
      if (!agents.has(hostName)) agents.set(hostName, new FakeAgent(hostName));
      return agents.get(hostName)!;
    },
  });
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
  return {
    services,
    db,
    agent: (host) => agents.get(host)!,
    async close() {
      await services.operations.drain();
      await db.destroy();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
