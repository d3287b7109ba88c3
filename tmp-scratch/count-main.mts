
import { fakeCluster } from '../test/helpers/fake-cluster.ts';
import { QueryCounter } from '../test/helpers/query-counter.ts';
import { describeResources } from '../src/app/change-views.ts';

const main = async () => {
  const counter = new QueryCounter();
  const sites = new Map<string, number>();
  let on = false;
  const orig = counter.transformQuery.bind(counter);
  counter.transformQuery = (args) => {
    if (on) {
      const frames = (new Error().stack ?? '').split('\n').filter((l) => l.includes('/work/main/src/') && !l.includes('query-counter'));
      const k = frames.slice(0, 3).map((f) => f.replace(/.*\/work\/main\/src\//, '').replace(/\)$/, '')).join(' < ');
      sites.set(k, (sites.get(k) ?? 0) + 1);
    }
    return orig(args);
  };
  const cluster = await fakeCluster(['h1', 'h2'], { plugins: [counter] });
  const { services } = cluster;
  await cluster.db.updateTable('hosts').set({ cpus: 100000, memory_mb: 100000000 } as never).execute();
  describeResources(services.changes, services as never);
  const create = (name: string) => services.vms.create({ name, image: 'tiny', cpus: 1, memoryMb: 256, waitReady: true } as never);
  for (let i = 0; i < 3; i++) await services.operations.wait((await create(`w${i}`)).id);
  await services.changes.settled();
  counter.reset();
  on = true;
  const N = Number(process.env.N ?? 20);
  const ops = [];
  for (let i = 0; i < N; i++) ops.push((await create(`v${i}`)).id);
  const tCreate = counter.queries.length;
  for (const id of ops) await services.operations.wait(id);
  await services.changes.settled();
  const byKey = new Map<string, number>();
  for (const q of counter.queries) byKey.set(`${q.kind} ${q.table}`, (byKey.get(`${q.kind} ${q.table}`) ?? 0) + 1);
  console.log('per VM total', counter.queries.length / N, 'in create call', tCreate / N);
  for (const [k, v] of [...byKey].sort((a, b) => b[1] - a[1])) console.log((v / N).toFixed(2).padStart(7), k);
  for (const [k, v] of [...sites].sort((a, b) => b[1] - a[1])) console.log((v / N).toFixed(2).padStart(7), k);
  await cluster.close();
};
const t0 = performance.now(); await main(); console.log("ms", performance.now() - t0);
