// Boots the built-in tiny image under QEMU (TCG) and checks the guest contract of
// src/images/README-guest.md from the outside: the readiness line, HTTP, disk, dirtying
// workload, console shell, reboot and the ACPI power button.
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, openSync, closeSync, rmSync, truncateSync, writeSync } from 'node:fs';
import { createConnection, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { buildTinyImage, readTinyImage, type TinyImage } from '../../src/images/build-tiny.ts';

const repoRoot = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const cacheDir = process.env.NUBIS_CACHE ?? join(repoRoot, '.cache');
const READY_TIMEOUT_MS = 90_000;
const POWEROFF_TIMEOUT_MS = 30_000;
const DISK_MB = 64;
const READY_LINE = /NUBIS-READY name=(\S+) ips=(\S+)\r?\n/;

let image: TinyImage;
const runDir = mkdtempSync(join(tmpdir(), `nubis-tiny-${process.pid}-`));

before(async () => {
  image = await buildTinyImage({ cacheDir });
});
after(() => rmSync(runDir, { recursive: true, force: true }));

/** A QEMU process running the tiny image, its serial console on stdio, QMP on a unix socket. */
class TinyVm {
  readonly name: string;
  readonly diskPath: string;
  readonly qmpPath: string;
  httpPort = 0;
  #process?: ChildProcess;
  #console = '';
  #consoleListeners = new Set<() => void>();
  #exit?: Promise<number | null>;
  /** Console offset after the last prompt a line was typed at: the next line needs a new one. */
  #typedAt = 0;

  constructor(name: string) {
    this.name = name;
    this.diskPath = join(runDir, `${name}.raw`);
    this.qmpPath = join(runDir, `${name}.qmp`);
  }

  /** Everything the guest printed on its serial console so far. */
  get console(): string {
    return this.#console;
  }

  async start(options: { append: string; memoryMb?: number }): Promise<void> {
    closeSync(openSync(this.diskPath, 'w'));
    truncateSync(this.diskPath, DISK_MB * 1024 * 1024);
    this.httpPort = await freePort();
    const child = spawn(
      'qemu-system-x86_64',
      [
        '-accel',
        'tcg',
        '-machine',
        'q35',
        '-cpu',
        'qemu64',
        '-m',
        String(options.memoryMb ?? 256),
        '-nographic',
        '-monitor',
        'none',
        '-serial',
        'stdio',
        '-qmp',
        `unix:${this.qmpPath},server=on,wait=off`,
        '-kernel',
        image.kernelPath,
        '-initrd',
        image.initrdPath,
        '-append',
        `console=ttyS0 nubis.name=${this.name} ${options.append}`.trim(),
        '-netdev',
        `user,id=n0,hostfwd=tcp:127.0.0.1:${this.httpPort}-:80`,
        '-device',
        'virtio-net-pci,netdev=n0',
        '-drive',
        `file=${this.diskPath},if=virtio,format=raw`,
      ],
      { stdio: ['pipe', 'pipe', 'pipe'] },
    );
    this.#process = child;
    this.#exit = once(child, 'exit').then(([code]) => code as number | null);
    const append = (chunk: Buffer): void => {
      this.#console += chunk.toString('utf8');
      for (const listener of this.#consoleListeners) listener();
    };
    child.stdout!.on('data', append);
    child.stderr!.on('data', append);
    await once(child, 'spawn');
  }

  /** Resolves with the first match of `pattern` in console output after offset `from`. */
  waitForConsole(pattern: RegExp, from: number, timeoutMs = READY_TIMEOUT_MS): Promise<RegExpExecArray> {
    return new Promise((resolve, reject) => {
      const check = (): boolean => {
        const match = pattern.exec(this.#console.slice(from));
        if (!match) return false;
        match.index += from;
        cleanup();
        resolve(match);
        return true;
      };
      const timer = setTimeout(() => {
        cleanup();
        reject(new Error(`No ${pattern} on the console of ${this.name} within ${timeoutMs} ms; console tail:\n${this.#console.slice(-2000)}`));
      }, timeoutMs);
      const exited = (): void => {
        cleanup();
        reject(new Error(`QEMU for ${this.name} exited while waiting for ${pattern}; console tail:\n${this.#console.slice(-2000)}`));
      };
      const cleanup = (): void => {
        clearTimeout(timer);
        this.#consoleListeners.delete(check);
        this.#process?.off('exit', exited);
      };
      this.#consoleListeners.add(check);
      this.#process?.once('exit', exited);
      check();
    });
  }

  /** Types a line on the serial console once a fresh shell prompt shows after offset `from`;
   * returns the console offset from which the line's effects show. */
  async type(line: string, from: number): Promise<number> {
    const prompt = await this.waitForConsole(new RegExp(`${this.name}:[^\\n]*# `), Math.max(from, this.#typedAt));
    this.#typedAt = prompt.index + prompt[0].length;
    this.#process!.stdin!.write(`${line}\n`);
    return this.#typedAt;
  }

  async http(path: string): Promise<{ status: number; body: string }> {
    const response = await fetch(`http://127.0.0.1:${this.httpPort}${path}`, { signal: AbortSignal.timeout(60_000) });
    return { status: response.status, body: await response.text() };
  }

  async json(path: string): Promise<Record<string, unknown>> {
    const { status, body } = await this.http(path);
    assert.equal(status, 200, body);
    return JSON.parse(body) as Record<string, unknown>;
  }

  /** Sends one QMP command (after the capabilities handshake) and returns its answer. */
  async qmp(execute: string): Promise<unknown> {
    const socket = createConnection(this.qmpPath);
    try {
      let buffered = '';
      const replies: Record<string, unknown>[] = [];
      let wake: () => void = () => {};
      socket.setEncoding('utf8').on('data', (chunk: string) => {
        buffered += chunk;
        let newline: number;
        while ((newline = buffered.indexOf('\n')) >= 0) {
          const message = JSON.parse(buffered.slice(0, newline)) as Record<string, unknown>;
          buffered = buffered.slice(newline + 1);
          if (!('event' in message)) replies.push(message);
        }
        wake();
      });
      const next = async (): Promise<Record<string, unknown>> => {
        while (replies.length === 0) await new Promise<void>((resolve) => (wake = resolve));
        return replies.shift()!;
      };
      await next(); // greeting
      socket.write(`${JSON.stringify({ execute: 'qmp_capabilities' })}\n`);
      await next();
      socket.write(`${JSON.stringify({ execute })}\n`);
      return await next();
    } finally {
      socket.destroy();
    }
  }

  /** Resolves with QEMU's exit code once it exits on its own, or fails after `timeoutMs`. */
  async exited(timeoutMs: number): Promise<number | null> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new Error(`QEMU for ${this.name} still runs after ${timeoutMs} ms; console tail:\n${this.#console.slice(-2000)}`)),
        timeoutMs,
      );
    });
    try {
      return await Promise.race([this.#exit!, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** Kills QEMU if it still runs and removes its files: safe to call after any failure. */
  async destroy(): Promise<void> {
    const child = this.#process;
    if (child && child.exitCode === null && child.signalCode === null) {
      child.kill('SIGKILL');
      await this.#exit;
    }
    rmSync(this.diskPath, { force: true });
    rmSync(this.qmpPath, { force: true });
  }
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => (typeof address === 'object' && address ? resolve(address.port) : reject(new Error('No port'))));
    });
  });
}

async function bootReady(vm: TinyVm, options: { append: string; memoryMb?: number }): Promise<RegExpExecArray> {
  await vm.start(options);
  return vm.waitForConsole(READY_LINE, 0);
}

test('the image is cached: a second build returns the same image without rebuilding', async () => {
  const again = await buildTinyImage({ cacheDir });
  assert.deepEqual(again, image);
  assert.deepEqual(readTinyImage(cacheDir), image);
  assert.match(image.sha256, /^[0-9a-f]{64}$/);
});

describe('a guest configured with DHCP', () => {
  const vm = new TinyVm(`dhcp-${process.pid}`);
  let ready: RegExpExecArray;
  before(async () => {
    ready = await bootReady(vm, { append: 'nubis.net=dhcp' });
  });
  after(() => vm.destroy());

  test('announces its name and its DHCP address on one console line', () => {
    assert.equal(ready[1], vm.name);
    assert.equal(ready[2], '10.0.2.15');
    assert.equal(vm.console.match(/NUBIS-READY/g)?.length, 1);
  });

  test('answers GET / with its name and a request counter that starts at 1', async () => {
    assert.deepEqual(await vm.http('/'), { status: 200, body: `${vm.name} requests=1` });
    assert.deepEqual(await vm.http('/'), { status: 200, body: `${vm.name} requests=2` });
  });

  test('reads back the disk blocks it wrote, and finds a block corrupted from the host', async () => {
    const query = `dev=vda&mb=16&seed=1234`;
    assert.deepEqual(await vm.json(`/cgi-bin/disk?op=write&${query}`), { ok: true, blocks: 4096 });
    assert.deepEqual(await vm.json(`/cgi-bin/disk?op=verify&${query}`), { ok: true, blocks: 4096 });

    const fd = openSync(vm.diskPath, 'r+');
    try {
      writeSync(fd, Buffer.from('corrupted by the host'), 0, undefined, 100 * 4096 + 300);
    } finally {
      closeSync(fd);
    }
    assert.deepEqual(await vm.json(`/cgi-bin/disk?op=verify&${query}`), { ok: false, blocks: 4096, badBlocks: [100], badCount: 1 });
    // The same check from the console shell, with its exit status.
    const from = await vm.type('nubis-tool disk-verify /dev/vda 16 1234 >/dev/null; echo "verify-status=$?"', ready.index);
    assert.equal((await vm.waitForConsole(/verify-status=(\d+)/, from))[1], '1');
    // Another seed's data is no match either.
    const other = await vm.json('/cgi-bin/disk?op=verify&dev=vda&mb=1&seed=99');
    assert.equal(other.ok, false);
    assert.equal(other.badCount, 256);
  });

  test('refuses bad disk parameters with 400 and a reason', async () => {
    const { status, body } = await vm.http('/cgi-bin/disk?op=verify&dev=vdz&mb=1&seed=1');
    assert.equal(status, 400);
    assert.match(JSON.parse(body).error, /\/dev\/vdz/);
  });

  test('starts, replaces and stops the memory-dirtying workload', async () => {
    assert.deepEqual(await vm.json('/cgi-bin/dirty?rate_mb=8&wss_mb=32'), { running: true, rateMb: 8, wssMb: 32 });
    assert.deepEqual(await vm.json('/cgi-bin/dirty?rate_mb=4&wss_mb=16'), { running: true, rateMb: 4, wssMb: 16 });
    assert.deepEqual(await vm.json('/cgi-bin/dirty'), { running: true, rateMb: 4, wssMb: 16 });
    assert.deepEqual(await vm.json('/cgi-bin/dirty?rate_mb=0'), { running: false, rateMb: 0, wssMb: 0 });
    assert.deepEqual(await vm.json('/cgi-bin/dirty'), { running: false, rateMb: 0, wssMb: 0 });
  });

  test('runs commands typed on the serial console', async () => {
    const from = await vm.type('echo "shell-$((6 * 7))"', ready.index);
    await vm.waitForConsole(/shell-42/, from);
  });

  test('powers off by itself on the ACPI power button', async () => {
    assert.deepEqual(await vm.qmp('system_powerdown'), { return: {} });
    assert.equal(await vm.exited(POWEROFF_TIMEOUT_MS), 0);
  });
});

describe('a guest with a static address in 128 MiB', () => {
  const vm = new TinyVm(`static-${process.pid}`);
  let ready: RegExpExecArray;
  before(async () => {
    ready = await bootReady(vm, { append: 'nubis.net=10.0.2.15/24,10.0.2.2 nubis.dirty=5:16', memoryMb: 128 });
  });
  after(() => vm.destroy());

  test('announces the static address and answers HTTP', async () => {
    assert.equal(ready[2], '10.0.2.15');
    assert.deepEqual(await vm.http('/'), { status: 200, body: `${vm.name} requests=1` });
  });

  test('started the dirtying workload from the kernel command line', async () => {
    assert.deepEqual(await vm.json('/cgi-bin/dirty'), { running: true, rateMb: 5, wssMb: 16 });
  });

  test('comes back ready after reboot typed on the console', async () => {
    const from = await vm.type('reboot', ready.index);
    const second = await vm.waitForConsole(READY_LINE, from);
    assert.equal(second[2], '10.0.2.15');
    // Request counters live in RAM: a rebooted guest counts from 1 again.
    assert.deepEqual(await vm.http('/'), { status: 200, body: `${vm.name} requests=1` });
  });

  test('powers off by itself on the ACPI power button', async () => {
    await vm.qmp('system_powerdown');
    assert.equal(await vm.exited(POWEROFF_TIMEOUT_MS), 0);
  });
});

describe('a guest without nubis.net', () => {
  const vm = new TinyVm(`nonet-${process.pid}`);
  let ready: RegExpExecArray;
  before(async () => {
    ready = await bootReady(vm, { append: '' });
  });
  after(() => vm.destroy());

  test('is ready at once and gets eth0 an address by DHCP in the background', async () => {
    assert.equal(ready[1], vm.name);
    // The shell waits in the guest for the lease, so the test does not poll.
    const from = await vm.type('until ip -4 addr show eth0 | grep -q "inet "; do usleep 100000; done; echo "dhcp-done"', ready.index);
    await vm.waitForConsole(/^dhcp-done/m, from);
    assert.deepEqual(await vm.http('/'), { status: 200, body: `${vm.name} requests=1` });
  });

  test('powers off by itself on the ACPI power button', async () => {
    await vm.qmp('system_powerdown');
    assert.equal(await vm.exited(POWEROFF_TIMEOUT_MS), 0);
  });
});
