import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { type Socket, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import websocket from '@fastify/websocket';
import Fastify, { type FastifyInstance } from 'fastify';
import WebSocket from 'ws';
import { VNC_PASSWORD_HEADER } from '../agent-api/contract.ts';
import { vncAuthResponse } from '../compute/vnc/vnc-auth.ts';
import { registerVncRelay, type VncDisplays } from './vnc-relay.ts';

/** A display that speaks RFB 3.8 with VNC Authentication against whatever password is set and unexpired. */
function fakeDisplay(path: string, calls: string[]) {
  let password: string | undefined;
  let expired = true;
  const server = createServer((client: Socket) => {
    let buffer = Buffer.alloc(0);
    let stage = 0;
    const challenge = Buffer.alloc(16, 5);
    client.write('RFB 003.008\n');
    client.on('data', (data) => {
      buffer = Buffer.concat([buffer, data]);
      if (stage === 0 && buffer.length >= 12) [buffer, stage] = [buffer.subarray(12), 1] as const;
      if (stage === 1) {
        client.write(Buffer.from([1, 2]));
        stage = 2;
      }
      if (stage === 2 && buffer.length >= 1) {
        [buffer, stage] = [buffer.subarray(1), 3] as const;
        client.write(challenge);
      }
      if (stage === 3 && buffer.length >= 16) {
        const ok = !expired && password !== undefined && buffer.subarray(0, 16).equals(vncAuthResponse(challenge, password));
        calls.push(ok ? 'auth ok' : 'auth failed');
        buffer = buffer.subarray(16);
        stage = 4;
        client.write(Buffer.from([0, 0, 0, ok ? 0 : 1]));
      }
    });
  });
  const displays: VncDisplays = {
    vncSocket: () => path,
    setVncPassword: async (_id, value) => {
      calls.push(`set ${value}`);
      [password, expired] = [value, false];
    },
    expireVncPassword: async () => {
      calls.push('expire');
      expired = true;
    },
  };
  return { server, displays };
}

/** Opens the relay with `password` and does the client's side up to the SecurityResult. */
async function authenticate(url: string, password: string): Promise<number> {
  const socket = new WebSocket(url, { headers: { [VNC_PASSWORD_HEADER]: password } });
  let buffer = Buffer.alloc(0);
  let wake: (() => void) | undefined;
  socket.on('message', (data: Buffer) => {
    buffer = Buffer.concat([buffer, data]);
    wake?.();
  });
  const read = async (length: number) => {
    while (buffer.length < length) await new Promise<void>((resolve) => (wake = resolve));
    const out = buffer.subarray(0, length);
    buffer = buffer.subarray(length);
    return out;
  };
  await read(12);
  socket.send(Buffer.from('RFB 003.008\n'));
  await read(2);
  socket.send(Buffer.from([2]));
  socket.send(vncAuthResponse(await read(16), password));
  const result = (await read(4)).readUInt32BE(0);
  socket.close();
  return result;
}

describe('the agent VNC relay', () => {
  const dir = mkdtempSync(join(tmpdir(), `nubis-vnc-relay-${process.pid}-`));
  const calls: string[] = [];
  const display = fakeDisplay(join(dir, 'vnc.sock'), calls);
  let app: FastifyInstance;
  let base = '';

  before(async () => {
    await new Promise<void>((resolve) => display.server.listen(join(dir, 'vnc.sock'), resolve));
    app = Fastify();
    await app.register(websocket);
    registerVncRelay(app, display.displays);
    base = (await app.listen({ host: '127.0.0.1', port: 0 })).replace('http', 'ws');
  });
  after(async () => {
    await app.close();
    display.server.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('sets the one-time password before relaying and expires it right after the authentication', async () => {
    calls.length = 0;
    assert.equal(await authenticate(`${base}/agent/vms/vm-a/vnc`, 'Abcd2345'), 0);
    await new Promise((resolve) => setTimeout(resolve, 50));
    assert.deepEqual(calls, ['set Abcd2345', 'auth ok', 'expire']);
  });

  it('lets two viewers in one after the other, each with its own password', async () => {
    calls.length = 0;
    const results = await Promise.all([authenticate(`${base}/agent/vms/vm-a/vnc`, 'First234'), authenticate(`${base}/agent/vms/vm-a/vnc`, 'Second23')]);
    assert.deepEqual(results, [0, 0], 'neither password replaced the other mid-handshake');
    await new Promise((resolve) => setTimeout(resolve, 50));
    assert.deepEqual(
      calls.filter((call) => call !== 'expire').map((call) => call.split(' ')[0]),
      ['set', 'auth', 'set', 'auth'],
    );
  });

  it('refuses a stream without a well-formed password, setting nothing', async () => {
    calls.length = 0;
    const socket = new WebSocket(`${base}/agent/vms/vm-a/vnc`, { headers: { [VNC_PASSWORD_HEADER]: 'short' } });
    const [code, reason] = await new Promise<[number, string]>((resolve) => socket.on('close', (c, r) => resolve([c, r.toString()])));
    assert.equal(code, 4400);
    assert.match(reason, /8 letters and digits/);
    assert.deepEqual(calls, []);
  });
});
