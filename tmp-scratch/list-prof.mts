import { fakeCluster } from '../test/helpers/fake-cluster.ts';
const cluster = await fakeCluster(['h1', 'h2']);
const { services } = cluster;
await cluster.db.updateTable('hosts').set({ cpus: 100000, memory_mb: 100000000 } as never).execute();
await services.networks.create({ name: 'n1', subnet: '10.70.0.0/20', dhcp: false, nat: false });
const create = (name: string) => services.vms.create({ name, image: 'tiny', cpus: 1, memoryMb: 256, waitReady: true, networks: [{ network: 'n1' }] } as never);
const ops: string[] = [];
for (let i = 0; i < 1200; i += 16) ops.push(...(await Promise.all(Array.from({ length: 16 }, (_, j) => create(`v${i + j}`)))).map((o) => o.id));
for (const id of ops) await services.operations.wait(id);
const app = await cluster.app();
const { Session } = await import('node:inspector/promises');
const session = new Session(); session.connect();
await session.post('Profiler.enable'); await session.post('Profiler.start');
const t0 = performance.now();
for (let i = 0; i < 50; i++) { const r = await app.inject({ method: 'GET', url: '/v1/vms?limit=1000', headers: cluster.auth }); if (r.statusCode !== 200) throw new Error(r.body); }
console.log('ms per GET', (performance.now() - t0) / 50);
const { profile } = await session.post('Profiler.stop');
(await import('node:fs')).writeFileSync('/tmp/list.cpuprofile', JSON.stringify(profile));
await cluster.close();
