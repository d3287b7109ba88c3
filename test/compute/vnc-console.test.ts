/**
 * A VM's screen and serial console as a browser opens them, with real processes: `nubis up`, a
 * tiny VM, a console ticket, the control plane's WebSocket, the host agent's relay and QEMU's VNC
 * display. The RFB handshake is VNC Authentication with the ticket's one-time password; the
 * guest's screen shows its boot and then what the guest prints there; the password never works
 * twice, neither through Nubis nor on the VM's VNC socket itself.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { Operation } from '../../src/wire/schemas.ts';
import { NubisInstance, repoRoot, runOnConsole } from '../helpers/nubis-instance.ts';
import { openRfb } from '../helpers/rfb-client.ts';

type Ticket = { ticket: string; path: string; password?: string; expiresAt: string };

/** How many pixels differ between two screens of the same size. */
function pixelsDiffering(a: Buffer, b: Buffer): number {
  let count = 0;
  for (let i = 0; i < a.length; i += 4) if (a.readUInt32BE(i) !== b.readUInt32BE(i)) count += 1;
  return count;
}

describe("a VM's screen (VNC) and serial console through console tickets", () => {
  const nubis = new NubisInstance('vnc');
  let vmId = '';

  before(async () => {
    await nubis.up();
    const created = await nubis.api<{ operation: Operation }>('POST', '/v1/vms', { name: 'screen1', image: 'tiny', cpus: 1, memoryMb: 256 });
    assert.equal(created.status, 202, JSON.stringify(created.body));
    const operation = await nubis.waitOperation(created.body.operation.id);
    assert.equal(operation.status, 'succeeded', operation.error?.message);
    vmId = (await nubis.api<{ id: string }>('GET', '/v1/vms/screen1')).body.id;
  });
  after(() => nubis.destroy());

  async function ticket(kind: 'vnc' | 'serial'): Promise<Ticket> {
    const issued = await nubis.api<Ticket>('POST', '/v1/vms/screen1/console-ticket', { kind });
    assert.equal(issued.status, 201, JSON.stringify(issued.body));
    return issued.body;
  }

  const wsUrl = (path: string) => `${nubis.url.replace('http', 'ws')}${path}`;

  it("shows the guest's boot on its screen, and what the guest prints there afterwards", async () => {
    const issued = await ticket('vnc');
    assert.match(issued.password ?? '', /^[A-Za-z0-9]{8}$/);
    const session = await openRfb(wsUrl(issued.path), issued.password!);
    try {
      assert.ok(session.width >= 640 && session.height >= 350, `a text-mode screen (${session.width}x${session.height})`);
      const booted = await session.screen();
      const colours = new Set<number>();
      for (let i = 0; i < booted.length; i += 4) colours.add(booted.readUInt32BE(i));
      assert.ok(colours.size >= 2, 'the screen is not blank: the kernel and the shell wrote on it');
      // Cleared, then written: the difference is text, not a blinking cursor.
      await runOnConsole(nubis, 'screen1', "printf '\\033[2J\\033[H' > /dev/tty1");
      await new Promise((resolve) => setTimeout(resolve, 500));
      const cleared = await session.screen();
      const line = 'NUBIS-SCREEN-TEST-'.repeat(4);
      await runOnConsole(nubis, 'screen1', `for i in 1 2 3 4 5 6 7 8 9 10; do echo ${line}; done > /dev/tty1`);
      let written = cleared;
      for (let tries = 0; tries < 20 && pixelsDiffering(cleared, written) < 5_000; tries += 1) {
        await new Promise((resolve) => setTimeout(resolve, 250));
        written = await session.screen();
      }
      const changed = pixelsDiffering(cleared, written);
      assert.ok(changed >= 5_000, `ten lines of text changed ${changed} pixels`);
    } finally {
      session.close();
    }
  });

  it('never lets a one-time password in twice: not through Nubis, not on the VNC socket itself', async () => {
    const first = await ticket('vnc');
    const session = await openRfb(wsUrl(first.path), first.password!);
    session.close();
    const second = await ticket('vnc');
    await assert.rejects(openRfb(wsUrl(second.path), first.password!), /VNC authentication failed/, 'the first password is spent');
    const socket = readdirSync(nubis.dataDir, { recursive: true, encoding: 'utf8' }).find((path) => path.includes(vmId) && path.endsWith('vnc.sock'));
    assert.ok(socket, 'the VM has a VNC socket');
    await assert.rejects(openRfb(join(nubis.dataDir, socket), second.password!), /VNC authentication failed/, 'a password of a spent ticket opens nothing');
    const fresh = await ticket('vnc');
    await assert.rejects(
      openRfb(join(nubis.dataDir, socket), fresh.password!),
      /VNC authentication failed/,
      'an unused ticket password is not set until its ticket is used',
    );
    const reused = await nubis.api<{ code: string }>('GET', first.path, undefined, null);
    assert.equal(reused.status, 401, 'the spent ticket itself is refused too');
  });

  it('relays a native viewer through nubis vm vnc, with the password it prints, a new ticket per connection', async () => {
    const cli = spawn(
      process.execPath,
      [join(repoRoot, 'bin/nubis.mjs'), '--data', nubis.dataDir, 'vm', 'vnc', 'screen1', '--listen', '127.0.0.1:0', '--json'],
      {
        env: { ...process.env, NUBIS_URL: '', NUBIS_TOKEN: '', NUBIS_CONFIG: join(nubis.dataDir, 'cli-config') },
        stdio: ['ignore', 'pipe', 'pipe'],
      },
    );
    try {
      let stdout = '';
      let stderr = '';
      cli.stderr.on('data', (chunk) => (stderr += chunk));
      const printed = await new Promise<{ address: string; password: string }>((resolve, reject) => {
        cli.stdout.on('data', (chunk) => {
          stdout += chunk;
          // The JSON is printed once, whole, and the command keeps running.
          if (stdout.trimEnd().endsWith('}')) {
            try {
              resolve(JSON.parse(stdout));
            } catch (error) {
              reject(error);
            }
          }
        });
        cli.on('exit', (code) => reject(new Error(`nubis vm vnc exited (${code}): ${stderr}`)));
      });
      assert.match(printed.address, /^127\.0\.0\.1:\d+$/);
      assert.match(printed.password, /^[A-Za-z0-9]{8}$/);
      for (const attempt of [1, 2]) {
        const session = await openRfb(printed.address, printed.password);
        const pixels = await session.screen();
        assert.ok(new Set(Array.from({ length: pixels.length / 4 }, (_, i) => pixels.readUInt32BE(i * 4))).size >= 2, `viewer ${attempt} sees the screen`);
        session.close();
      }
      await assert.rejects(openRfb(printed.address, 'wrongpw1'), /VNC authentication failed: Wrong password/);
    } finally {
      // Ctrl-C ends it; it must not outlive the test in any case.
      const exited = new Promise((resolve) => cli.once('exit', resolve));
      cli.kill('SIGTERM');
      const stopped = await Promise.race([exited.then(() => true), new Promise((resolve) => setTimeout(() => resolve(false), 5_000))]);
      if (!stopped) cli.kill('SIGKILL');
      assert.ok(stopped, 'nubis vm vnc ends on SIGTERM');
    }
  });

  it('answers a command on the serial console opened with a ticket', async () => {
    const output = await runOnConsole(nubis, 'screen1', 'echo serial-$((6*7))', { viaTicket: true });
    assert.match(output, /serial-42/);
  });
});
