/**
 * Host memory saved by the balloon and free page reporting, and QEMU's own memory overhead.
 *
 *   npx tsx bench/memory/memory.bench.ts [guests] [burstMb]
 *
 * In one run: `guests` (4) idle 512 MiB guests through Nubis (balloon with free page reporting)
 * and the same number of bare QEMUs with Nubis's very command line less the balloon device (same
 * guest, same device model otherwise). Every guest touches `burstMb` (300) MiB in a tmpfs and
 * frees it again, as a short job would; then all idle. Reported: the QEMUs' summed VmRSS after
 * the burst (free page reporting hands the freed pages back; without it QEMU keeps them), and
 * after `vm set --memory 256` on the Nubis guests (what automatic reclaim would do to idle ones).
 *
 * Overhead: VmRSS of an idle, freshly booted Nubis guest beside a minimal bare QEMU of the same
 * guest (no VGA, VNC, root ports or balloon; the bench/vm-start command line), both before any
 * burst: the difference is what Nubis's QEMU setup costs per VM beyond guest RAM.
 *
 * Needs a quiet host (load average under 1): RSS moves with page reclaim and TCG's own caches.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { buildQemuArgs } from '../../src/compute/qemu/command-line.ts';
import { READINESS_PATTERN, waitForSerialLine } from '../../src/compute/serial-log.ts';
import type { VmSpec } from '../../src/compute/vm-spec.ts';
import { cacheDir } from '../../src/core/paths.ts';
import { readTinyImage } from '../../src/images/build-tiny.ts';
import type { Vm } from '../../src/wire/schemas.ts';
import { NubisInstance, runOnConsole } from '../../test/helpers/nubis-instance.ts';

const guests = Number(process.argv[2] ?? 4);
const burstMb = Number(process.argv[3] ?? 300);
const image = readTinyImage(cacheDir());
if (!image) throw new Error('Build the tiny image first: npx nubis image build tiny');
const BURST = `mkdir -p /mnt/b && mount -t tmpfs -o size=${burstMb + 16}m tmpfs /mnt/b && head -c ${burstMb * 2 ** 20} /dev/zero > /mnt/b/f && rm /mnt/b/f`;

/** VmRSS of a process, in MiB. */
function rssMb(pid: number): number {
  return Number(/^VmRSS:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1]) / 1024;
}

interface Bare {
  child: ChildProcess;
  consoleSocket: string;
}

/** A bare QEMU of the tiny guest: Nubis's command line less the balloon, or (minimal) the bench/vm-start one. */
async function startBare(dir: string, name: string, minimal: boolean): Promise<Bare> {
  const paths = {
    qmpSocket: join(dir, `${name}.qmp`),
    consoleSocket: join(dir, `${name}.console`),
    vncSocket: join(dir, `${name}.vnc`),
    serialLog: join(dir, `${name}.log`),
    pidFile: join(dir, `${name}.pid`),
  };
  const spec: VmSpec = {
    id: `bench-${name}`,
    name,
    cpus: 1,
    memoryMb: 512,
    boot: { kind: 'kernel', kernelPath: image!.kernelPath, initrdPath: image!.initrdPath, cmdline: `console=ttyS0 nubis.name=${name}` },
    disks: [],
    nics: [{ id: 'net0', mac: '52:54:00:00:00:01', mode: 'user' }],
  };
  let args = buildQemuArgs(spec, paths, { accelerator: 'tcg' });
  const balloon = args.findIndex((arg) => arg.startsWith('virtio-balloon-pci'));
  args.splice(balloon - 1, 2);
  if (minimal) {
    const keep = new Set(['-name', '-machine', '-cpu', '-smp', '-m', '-chardev', '-serial', '-kernel', '-initrd', '-append', '-netdev', '-qmp']);
    const reduced = ['-nodefaults', '-display', 'none'];
    for (let i = 0; i < args.length; i++) if (keep.has(args[i])) reduced.push(args[i], args[++i]);
    args = [...reduced, '-device', 'virtio-net-pci,netdev=net0'];
  }
  const child = spawn('qemu-system-x86_64', args, { stdio: 'ignore' });
  await waitForSerialLine(paths.serialLog, READINESS_PATTERN, { fromOffset: 0, timeoutMs: 180_000 });
  return { child, consoleSocket: paths.consoleSocket };
}

/** Types `command` on a bare QEMU's serial console and waits for its end marker. */
async function bareConsole(bare: Bare, command: string): Promise<void> {
  const socket = connect(bare.consoleSocket);
  const marker = `done${Math.random().toString(36).slice(2, 8)}`;
  let output = '';
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`No ${marker} on ${bare.consoleSocket}: ${output.slice(-300)}`)), 180_000);
    socket.on('data', (data) => {
      output += data.toString();
      if (/\x1b\[6n/.test(data.toString())) socket.write('\x1b[1;1R');
      if (output.includes(`${marker}-end`)) {
        clearTimeout(timer);
        resolve();
      }
    });
    socket.on('error', reject);
    socket.write(`\r\r${command}; echo ${marker}-end\r`);
  });
  socket.destroy();
}

const dir = mkdtempSync(join(tmpdir(), 'nubis-bench-memory-'));
const nubis = new NubisInstance('bench-memory');
const bares: Bare[] = [];
try {
  await nubis.up();
  const names = Array.from({ length: guests }, (_, i) => `mem${i}`);
  for (const name of names) {
    const created = await nubis.cli(['vm', 'create', name, '--image', 'tiny', '--memory', '512']);
    if (created.code !== 0) throw new Error(created.stderr);
  }
  for (let i = 0; i < guests; i++) bares.push(await startBare(dir, `bare${i}`, false));
  const minimal = await startBare(dir, 'minimal', true);
  bares.push(minimal);
  const pids = async () => Promise.all(names.map(async (name) => (await nubis.cliJson<Vm>(['vm', 'show', name])).pid!));
  await delay(10_000); // both sides settle after boot
  const nubisIdle = (await pids()).map(rssMb);
  const minimalIdle = rssMb(minimal.child.pid!);

  for (const name of names) await runOnConsole(nubis, name, BURST, { timeoutMs: 180_000 });
  for (const bare of bares.slice(0, guests)) await bareConsole(bare, BURST);
  await delay(20_000); // free page reporting runs about every 2 s once enough freed pages gather
  const sum = (values: number[]) => values.reduce((a, b) => a + b, 0);
  const withReporting = sum((await pids()).map(rssMb));
  const without = sum(bares.slice(0, guests).map((bare) => rssMb(bare.child.pid!)));
  for (const name of names) await nubis.cli(['vm', 'set', name, '--memory', '256']);
  await delay(20_000);
  const ballooned = sum((await pids()).map(rssMb));

  console.log(`| ${guests} idle 512 MiB guests after a ${burstMb} MiB burst each | summed QEMU VmRSS, MiB | saved against no balloon, MiB |`);
  console.log('| --- | --- | --- |');
  console.log(`| bare QEMU, Nubis's command line less the balloon | ${without.toFixed(0)} | - |`);
  console.log(`| Nubis, balloon with free page reporting | ${withReporting.toFixed(0)} | ${(without - withReporting).toFixed(0)} |`);
  console.log(`| Nubis, then vm set --memory 256 | ${ballooned.toFixed(0)} | ${(without - ballooned).toFixed(0)} |`);
  const nubisMedian = [...nubisIdle].sort((a, b) => a - b)[Math.floor(guests / 2)];
  console.log(`\n| idle guest, freshly booted | VmRSS, MiB |`);
  console.log('| --- | --- |');
  console.log(`| minimal bare QEMU (bench/vm-start's command line) | ${minimalIdle.toFixed(0)} |`);
  console.log(`| Nubis QEMU (median of ${guests}) | ${nubisMedian.toFixed(0)} |`);
  console.log(
    `\nNubis's QEMU setup costs ${(nubisMedian - minimalIdle).toFixed(0)} MiB per VM beyond the minimal one (load average ${readFileSync('/proc/loadavg', 'utf8').split(' ')[0]})`,
  );
} finally {
  for (const bare of bares) bare.child.kill('SIGKILL');
  await nubis.destroy();
  rmSync(dir, { recursive: true, force: true });
}
