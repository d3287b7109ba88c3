import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { QmpClient, type QmpError } from './qmp-client.ts';

/** A scripted QMP peer: greets, accepts qmp_capabilities and hands every later line to `onCommand`. */
class FakeQemu {
  readonly server: Server;
  socket?: Socket;
  onCommand: (command: { execute: string; arguments?: Record<string, unknown>; id?: number }, peer: Socket) => void = () => {};

  constructor(
    readonly path: string,
    greeting = '{"QMP": {"version": {"qemu": {"major": 7, "minor": 2, "micro": 0}}, "capabilities": []}}',
  ) {
    this.server = createServer((socket) => {
      this.socket = socket;
      socket.write(`${greeting}\r\n`);
      let buffer = '';
      socket.setEncoding('utf8');
      socket.on('data', (chunk: string) => {
        buffer += chunk;
        let newline: number;
        while ((newline = buffer.indexOf('\n')) !== -1) {
          const command = JSON.parse(buffer.slice(0, newline));
          buffer = buffer.slice(newline + 1);
          if (command.execute === 'qmp_capabilities') socket.write(`{"return": {}, "id": ${command.id}}\r\n`);
          else this.onCommand(command, socket);
        }
      });
    });
  }

  listen(): Promise<void> {
    return new Promise((resolve) => this.server.listen(this.path, resolve));
  }

  close(): Promise<void> {
    this.socket?.destroy();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}

describe('QmpClient', () => {
  let dir: string;
  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'nubis-qmp-test-'));
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  async function withFake(name: string, run: (fake: FakeQemu) => Promise<void>, greeting?: string): Promise<void> {
    const fake = new FakeQemu(join(dir, `${name}.sock`), greeting);
    await fake.listen();
    try {
      await run(fake);
    } finally {
      await fake.close();
    }
  }

  it('negotiates capabilities and keeps the greeting', async () => {
    await withFake('greeting', async (fake) => {
      const client = await QmpClient.connect(fake.path);
      assert.deepEqual((client.greeting.version as { qemu: { major: number } }).qemu.major, 7);
      client.close();
      await client.closed;
    });
  });

  it('matches replies to commands by id when they come out of order, with events between', async () => {
    await withFake('order', async (fake) => {
      const held: number[] = [];
      fake.onCommand = (command, peer) => {
        held.push(command.id!);
        if (held.length === 2) {
          peer.write(`{"event": "STOP", "data": {}, "timestamp": {"seconds": 1, "microseconds": 5000}}\r\n`);
          peer.write(`{"return": {"which": "second"}, "id": ${held[1]}}\r\n{"return": {"which": "first"}, "id": ${held[0]}}\r\n`);
        }
      };
      const client = await QmpClient.connect(fake.path);
      const events = client.events();
      const [first, second] = await Promise.all([client.execute('query-status'), client.execute('query-name')]);
      assert.deepEqual(first, { which: 'first' });
      assert.deepEqual(second, { which: 'second' });
      const event = await events.next();
      assert.equal(event.value.event, 'STOP');
      assert.equal(event.value.timestampMs, 1005);
      client.close();
    });
  });

  it('skips malformed lines and replies that match nothing, and keeps working', async () => {
    await withFake('malformed', async (fake) => {
      fake.onCommand = (command, peer) => {
        peer.write('this is not json\r\n[1,2]\r\n{"return": {}, "id": 9999}\r\n');
        // A reply split across two writes must be joined.
        peer.write(`{"return": {"ok": tr`);
        setTimeout(() => peer.write(`ue}, "id": ${command.id}}\r\n`), 5);
      };
      const warnings: string[] = [];
      const client = await QmpClient.connect(fake.path, { onProtocolWarning: (message) => warnings.push(message) });
      assert.deepEqual(await client.execute('query-status'), { ok: true });
      assert.equal(warnings.length, 3);
      client.close();
    });
  });

  it('turns a QMP error reply into QMP_COMMAND_FAILED with the error class', async () => {
    await withFake('error', async (fake) => {
      fake.onCommand = (command, peer) =>
        peer.write(`{"error": {"class": "CommandNotFound", "desc": "The command nope has not been found"}, "id": ${command.id}}\r\n`);
      const client = await QmpClient.connect(fake.path);
      await assert.rejects(client.execute('nope'), (error: QmpError) => {
        assert.equal(error.code, 'QMP_COMMAND_FAILED');
        assert.equal(error.qmpClass, 'CommandNotFound');
        assert.match(error.message, /nope has not been found/);
        return true;
      });
      client.close();
    });
  });

  it('times out, aborts, and fails pending calls when QEMU goes away', async () => {
    await withFake('timeout', async (fake) => {
      fake.onCommand = () => {};
      const client = await QmpClient.connect(fake.path);
      await assert.rejects(client.execute('query-status', undefined, { timeoutMs: 20 }), { code: 'QMP_TIMEOUT' });
      const controller = new AbortController();
      const aborted = client.execute('query-status', undefined, { signal: controller.signal });
      controller.abort();
      await assert.rejects(aborted, { code: 'QMP_ABORTED' });
      const pending = client.execute('query-status');
      const events = client.events();
      const waiting = client.waitForEvent('SHUTDOWN');
      fake.socket!.destroy();
      await assert.rejects(pending, { code: 'QMP_DISCONNECTED' });
      await assert.rejects(waiting, { code: 'QMP_DISCONNECTED' });
      assert.equal((await events.next()).done, true);
      await assert.rejects(client.execute('query-status'), { code: 'QMP_DISCONNECTED' });
    });
  });

  it('waits for a matching event', async () => {
    await withFake('wait', async (fake) => {
      fake.onCommand = (command, peer) => {
        peer.write(`{"return": {}, "id": ${command.id}}\r\n`);
        peer.write(`{"event": "JOB_STATUS_CHANGE", "data": {"status": "running"}}\r\n`);
        peer.write(`{"event": "JOB_STATUS_CHANGE", "data": {"status": "concluded"}}\r\n`);
      };
      const client = await QmpClient.connect(fake.path);
      const concluded = client.waitForEvent('JOB_STATUS_CHANGE', (event) => event.data.status === 'concluded', { timeoutMs: 1000 });
      await client.execute('job-start');
      assert.equal((await concluded).data.status, 'concluded');
      client.close();
    });
  });

  it('reports a socket nobody listens on as QMP_CONNECT_FAILED', async () => {
    await assert.rejects(QmpClient.connect(join(dir, 'absent.sock'), { timeoutMs: 500 }), { code: 'QMP_CONNECT_FAILED' });
  });
});
