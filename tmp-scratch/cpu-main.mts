import { fakeCluster } from '../test/helpers/fake-cluster.ts';
import { describeResources } from '../src/app/change-views.ts';
const cluster = await fakeCluster(['h1', 'h2']);
const { services } = cluster;
await cluster.db.updateTable('hosts').set({ cpus: 100000, memory_mb: 100000000 } as never).execute();
describeResources(services.changes, services as never);
const create = (name: string) => services.vms.create({ name, image: 'tiny', cpus: 1, memoryMb: 256, waitReady: true } as never);
const run = async (prefix: string, N: number) => {
  const cpu0 = process.cpuUsage(); const t0 = performance.now();
  const ops: string[] = [];
  for (let i = 0; i < N; i += 16) ops.push(...(await Promise.all(Array.from({ length: Math.min(16, N - i) }, (_, j) => create(`${prefix}${i + j}`)))).map((o) => o.id));
  for (const id of ops) await services.operations.wait(id);
  await services.changes.settled();
  const cpu = process.cpuUsage(cpu0);
  console.log(prefix, N, 'wall ms/VM', ((performance.now() - t0) / N).toFixed(2), 'cpu ms/VM', ((cpu.user + cpu.system) / 1000 / N).toFixed(2));
};
await run('w', 300);
await run('v', Number(process.env.N ?? 2000));
await cluster.close();
