/**
 * Throughput and latency between two VMs on different hosts through the VXLAN overlay, beside
 * the same measurement between the two host namespaces directly over the underlay, in one run.
 * Both sides use busybox httpd serving a 64 MiB file and ping (the client is the guest's busybox
 * wget in the VM, curl on the host), so the difference is the overlay plus the VMs' virtual NICs
 * under the host's accelerator.
 *
 *   npx tsx bench/network/overlay.bench.ts
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Vm } from '../../src/wire/schemas.ts';
import { NubisInstance, runOnConsole } from '../../test/helpers/nubis-instance.ts';

const TRANSFER_MB = 64;
const PINGS = 50;

function inNs(ns: string, command: string): string {
  return execFileSync('ip', ['netns', 'exec', ns, 'sh', '-c', command], { encoding: 'utf8' });
}

/** avg rtt in ms from ping's summary (iputils and busybox both print min/avg/max). */
function averageRttMs(output: string): number {
  const match = /= [\d.]+\/([\d.]+)\//.exec(output);
  if (!match) throw new Error(`No ping summary in: ${output.slice(-300)}`);
  return Number(match[1]);
}

/** Seconds from busybox `time` ("real 0m 1.23s") or the shell's ("real\t0m1.230s"). */
function realSeconds(output: string): number {
  const match = /real\s+(?:(\d+)m\s*)?([\d.]+)s/.exec(output);
  if (!match) throw new Error(`No timing in: ${output.slice(-300)}`);
  return Number(match[1] ?? 0) * 60 + Number(match[2]);
}

const nubis = new NubisInstance('bench-net');
const www = mkdtempSync(join(tmpdir(), 'nubis-bench-www-'));
const httpdPids: string[] = [];
try {
  await nubis.up(['--hosts', '2']);
  const bed = nubis.upResult.testBed as string;
  const [ns1, ns2] = [`${bed}-host-1`, `${bed}-host-2`];
  await nubis.cliJson(['network', 'create', 'bench', '--subnet', '10.77.0.0/24']);
  await nubis.cliJson<Vm>(['vm', 'create', 'sender', '--image', 'tiny', '--memory', '512', '--network', 'bench', '--host', 'host-1']);
  const receiver = await nubis.cliJson<Vm>(['vm', 'create', 'receiver', '--image', 'tiny', '--memory', '512', '--network', 'bench', '--host', 'host-2']);
  const receiverIp = receiver.nics[0].ip;

  // Overlay: VM to VM.
  const vmPing = await runOnConsole(nubis, 'sender', `ping -c ${PINGS} -i 0.1 ${receiverIp} | tail -2`, { timeoutMs: 60_000 });
  await runOnConsole(nubis, 'receiver', `dd if=/dev/zero of=/www/big bs=1M count=${TRANSFER_MB} 2>/dev/null`, { timeoutMs: 60_000 });
  const vmTransfer = await runOnConsole(nubis, 'sender', `time wget -q -O /dev/null http://${receiverIp}/big`, { timeoutMs: 300_000 });

  // Underlay: host namespace to host namespace, same tools (busybox httpd and wget).
  execFileSync('dd', ['if=/dev/zero', `of=${join(www, 'big')}`, 'bs=1M', `count=${TRANSFER_MB}`], { stdio: 'ignore' });
  inNs(ns2, `busybox httpd -p 8099 -h ${www}`);
  httpdPids.push(inNs(ns2, 'busybox pidof httpd || true').trim());
  const hostPing = inNs(ns1, `ping -c ${PINGS} -i 0.1 172.31.0.12 | tail -2`);
  // busybox-static's wget crashes in a namespace on this machine, so the host side uses curl.
  const underlayTransfer = (() => {
    const started = performance.now();
    execFileSync('ip', ['netns', 'exec', ns1, 'curl', '-s', '-o', '/dev/null', 'http://172.31.0.12:8099/big']);
    return (performance.now() - started) / 1000;
  })();
  const vmSeconds = realSeconds(vmTransfer);
  const rows = [
    ['VM to VM over the VXLAN overlay (TCG guests, virtio-net, tap)', averageRttMs(vmPing), TRANSFER_MB / vmSeconds],
    ['host namespace to host namespace over the underlay (veth + bridge)', averageRttMs(hostPing), TRANSFER_MB / underlayTransfer],
  ] as const;
  console.log(`| path | ping avg RTT (ms, ${PINGS} pings) | HTTP transfer of ${TRANSFER_MB} MiB (MiB/s) |`);
  console.log('| --- | --- | --- |');
  for (const [name, rtt, rate] of rows) console.log(`| ${name} | ${rtt.toFixed(3)} | ${rate.toFixed(1)} |`);
} finally {
  for (const pid of httpdPids.flatMap((p) => p.split(/\s+/)).filter(Boolean)) {
    try {
      process.kill(Number(pid));
    } catch {
      // already gone
    }
  }
  await nubis.destroy();
  rmSync(www, { recursive: true, force: true });
}
