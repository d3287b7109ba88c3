/**
 * HA failover time: `nubis up --hosts 3`, an HA VM on a storage-node volume and a virtual network,
 * then, three times, its whole host killed (watchdog, agent, QEMUs, link cut) and the times
 * measured from the kill: host shown suspect, host fenced, VM running with its guest ready on
 * another host, VM answering HTTP at its address (from a probe on the network). The dead host is
 * brought back between rounds.
 *
 * Run on a quiet machine: `npx tsx bench/ha/failover.bench.ts` (as root). Prints a Markdown table.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, truncateSync, writeFileSync } from 'node:fs';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { underlayRootLinkName } from '../../src/network/underlay.ts';
import { NubisInstance } from '../../test/helpers/nubis-instance.ts';

const ROUNDS = 3;

function readPid(path: string): number | undefined {
  return existsSync(path) ? Number(readFileSync(path, 'utf8')) || undefined : undefined;
}

function kill(pid: number | undefined): void {
  if (!pid) return;
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    // gone
  }
}

async function until<T>(timeoutMs: number, check: () => Promise<T | undefined>): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const value = await check().catch(() => undefined);
    if (value !== undefined) return value;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  throw new Error(`timed out after ${timeoutMs} ms`);
}

const nubis = new NubisInstance('ha-bench');
try {
  const before = loadavg()[0]!.toFixed(2);
  await nubis.up(['--hosts', '3']);
  const bed = nubis.upResult.testBed as string;
  const device = join(nubis.dataDir, 'disk.img');
  writeFileSync(device, '');
  truncateSync(device, 256 * 2 ** 20);
  await nubis.cliJson(['pool', 'create', 'p1', '--layout', 'raid0', '--device', device]);
  await nubis.cliJson(['volume', 'create', 'v1', '--pool', 'p1', '--size', '16M']);
  await nubis.cliJson(['network', 'create', 'n1', '--subnet', '10.92.0.0/24']);
  const vm = await nubis.cliJson<{ nics: Array<{ ip: string }> }>(['vm', 'create', 'ha1', '--image', 'tiny', '--ha', '--disk', 'p1/v1', '--network', 'n1']);
  const ip = vm.nics[0]!.ip;
  const api = async <T>(path: string): Promise<T> => (await nubis.api<T>('GET', path)).body;
  const rows: string[] = [];
  for (let round = 1; round <= ROUNDS; round++) {
    const from = (await api<{ host: string }>('/v1/vms/ha1')).host;
    const t0 = Date.now();
    execFileSync('ip', ['link', 'set', underlayRootLinkName(`${bed}-ul`, `${bed}-${from}`), 'down']);
    for (const name of [`watchdog-${from}`, `agent-${from}`]) kill(readPid(join(nubis.dataDir, 'run', `${name}.pid`)));
    const vmsDir = join(nubis.dataDir, 'hosts', from, 'vms');
    for (const entry of existsSync(vmsDir) ? readdirSync(vmsDir) : []) kill(readPid(join(vmsDir, entry, 'qemu.pid')));
    const suspect = await until(30_000, async () => ((await api<{ status: string }>(`/v1/hosts/${from}`)).status !== 'online' ? Date.now() - t0 : undefined));
    const fenced = await until(60_000, async () => ((await api<{ status: string }>(`/v1/hosts/${from}`)).status === 'fenced' ? Date.now() - t0 : undefined));
    const ready = await until(120_000, async () => {
      const now = await api<{ host: string; state: string; ready: boolean }>('/v1/vms/ha1');
      return now.host !== from && now.state === 'running' && now.ready ? { at: Date.now() - t0, host: now.host } : undefined;
    });
    const answering = await until(60_000, async () => {
      const probe = await nubis.cli(['--json', 'network', 'probe', 'n1', '--', 'curl', '-s', '--max-time', '1', `http://${ip}/`]);
      return /ha1 requests=/.test(probe.stdout) ? Date.now() - t0 : undefined;
    });
    rows.push(
      `| ${round} | ${from} -> ${ready.host} | ${(suspect / 1000).toFixed(1)} | ${(fenced / 1000).toFixed(1)} | ${(ready.at / 1000).toFixed(1)} | ${(answering / 1000).toFixed(1)} |`,
    );
    execFileSync('ip', ['link', 'set', underlayRootLinkName(`${bed}-ul`, `${bed}-${from}`), 'up']);
    await nubis.up(['--hosts', '3']);
  }
  const after = loadavg()[0]!.toFixed(2);
  console.log(`load average (1 min) before ${before}, after ${after}\n`);
  console.log('| round | moved | suspect (s) | fenced (s) | guest ready elsewhere (s) | answering HTTP (s) |');
  console.log('| --- | --- | --- | --- | --- | --- |');
  for (const row of rows) console.log(row);
} finally {
  await nubis.destroy();
}
