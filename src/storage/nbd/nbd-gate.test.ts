// I/O fencing in the NBD server: connections accepted through a gate are tagged with its
// generation; a fence closes them at once, refuses every request still checked against it,
// refuses new ones at the handshake with the reason, and returns only once no write of the
// group can land any more. In-memory exports; the storage node's use of it is in
// test/storage/host-fencing.test.ts.
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { NbdClient } from './nbd-client.ts';
import { mapCatalog, NbdError, type NbdExport } from './nbd-export.ts';
import { NbdGate, type NbdGateMember } from './nbd-gate.ts';
import { NbdServer } from './nbd-server.ts';

/** An export in memory whose writes can be held until the test lets them go. */
class HeldExport implements NbdExport {
  readonly data = Buffer.alloc(1024 * 1024);
  /** While set, writes wait for it; `writeStarted` is called as one begins. */
  hold?: Promise<void>;
  writeStarted?: () => void;
  get sizeBytes(): number {
    return this.data.length;
  }
  async read(buffer: Buffer, position: number): Promise<void> {
    this.data.copy(buffer, 0, position, position + buffer.length);
  }
  async write(data: Buffer, position: number): Promise<void> {
    this.writeStarted?.();
    if (this.hold) await this.hold;
    data.copy(this.data, position);
  }
  async flush(): Promise<void> {}
  async trim(): Promise<void> {}
  async writeZeroes(position: number, length: number): Promise<void> {
    this.data.fill(0, position, position + length);
  }
}

/** A gate that never learns of its connections, so a fence cannot close them: only the per-request check stands. */
class LeakyGate extends NbdGate {
  override attach(_member: NbdGateMember): void {}
}

/** Waits until `check` holds (a peer's close reaches the server a moment after it happens). */
async function until(check: () => boolean, timeoutMs = 2000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) assert.fail('condition not met in time');
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

async function rejectsWith(promise: Promise<unknown>, code: string): Promise<void> {
  await assert.rejects(promise, (error: unknown) => error instanceof NbdError && error.code === code);
}

describe('NBD I/O fencing (NbdGate)', () => {
  let dir: string;
  let server: NbdServer;
  const disk = new HeldExport();
  let shared: string;
  let counter = 0;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'nubis-nbd-gate-'));
    server = new NbdServer({ catalog: mapCatalog(new Map([['disk', disk]])) });
    shared = join(dir, 'shared.sock');
    await server.listen({ path: shared });
  });
  after(async () => {
    await server?.close(500);
    await rm(dir, { recursive: true, force: true });
  });

  /** A listener of its own behind `gate`; its socket path. */
  async function gated(gate: NbdGate): Promise<string> {
    const path = join(dir, `gate-${counter++}.sock`);
    await server.listen({ path, gate });
    return path;
  }

  it('a fence closes the group at once, refuses it at the handshake, and unfence lets new connections in', async () => {
    const gate = new NbdGate('host h1');
    const path = await gated(gate);
    const client = await NbdClient.connect({ path, exportName: 'disk' });
    const bystander = await NbdClient.connect({ path: shared, exportName: 'disk' });
    await client.write(0, Buffer.alloc(4096, 0x11));
    assert.equal(gate.connectionCount, 1);

    await gate.fence();
    assert.equal(gate.generation, 2);
    await rejectsWith(client.write(0, Buffer.alloc(4096, 0x22)), 'NBD_DISCONNECTED');
    assert.deepEqual(await bystander.read(0, 4096), Buffer.alloc(4096, 0x11));
    await assert.rejects(NbdClient.connect({ path, exportName: 'disk' }), /I\/O from host h1 is fenced \(generation 2\)/);
    await until(() => gate.connectionCount === 0);

    gate.unfence();
    assert.equal(gate.generation, 2);
    const again = await NbdClient.connect({ path, exportName: 'disk' });
    await again.write(0, Buffer.alloc(4096, 0x33));
    assert.deepEqual(await bystander.read(0, 4096), Buffer.alloc(4096, 0x33));
    await rejectsWith(client.read(0, 512), 'NBD_DISCONNECTED');
    await again.close();
    await bystander.close();
  });

  it('every request of a connection from an earlier generation gets EPERM and changes nothing', async () => {
    const gate = new LeakyGate('host h2');
    const path = await gated(gate);
    const client = await NbdClient.connect({ path, exportName: 'disk' });
    await client.write(8192, Buffer.alloc(4096, 0x44));

    await gate.fence();
    gate.unfence(); // new connections are welcome again; this one still belongs to generation 1
    await rejectsWith(client.write(8192, Buffer.alloc(4096, 0x55)), 'NBD_EPERM');
    await rejectsWith(client.writeZeroes(8192, 4096), 'NBD_EPERM');
    await rejectsWith(client.trim(8192, 4096), 'NBD_EPERM');
    await rejectsWith(client.flush(), 'NBD_EPERM');
    await rejectsWith(client.read(8192, 4096), 'NBD_EPERM');
    assert.deepEqual(disk.data.subarray(8192, 8192 + 4096), Buffer.alloc(4096, 0x44));
    client.destroy();
  });

  it('a write already running when the fence arrives lands before the fence returns, unanswered', async () => {
    const gate = new NbdGate('host h3');
    const path = await gated(gate);
    const client = await NbdClient.connect({ path, exportName: 'disk' });
    let release!: () => void;
    disk.hold = new Promise<void>((resolve) => (release = resolve));
    const started = new Promise<void>((resolve) => (disk.writeStarted = resolve));
    const write = client.write(16384, Buffer.alloc(4096, 0x66));
    await started;

    let fenced = false;
    const fence = gate.fence().then(() => (fenced = true));
    await rejectsWith(write, 'NBD_DISCONNECTED');
    await new Promise((resolve) => setTimeout(resolve, 50));
    assert.equal(fenced, false, 'the fence waits for the running write');
    assert.equal(gate.drainingCount, 1);
    release();
    await fence;
    assert.deepEqual(disk.data.subarray(16384, 16384 + 4096), Buffer.alloc(4096, 0x66));
    assert.equal(gate.drainingCount, 0);
    disk.hold = undefined;
    disk.writeStarted = undefined;
  });

  it('a gate restored fenced (after a restart) refuses from the first connection', async () => {
    const gate = new NbdGate('host h4', { generation: 7, fenced: true });
    const path = await gated(gate);
    await assert.rejects(NbdClient.connect({ path, exportName: 'disk' }), /host h4 is fenced \(generation 7\)/);
    gate.unfence();
    const client = await NbdClient.connect({ path, exportName: 'disk' });
    await client.read(0, 512);
    await client.close();
  });
});
