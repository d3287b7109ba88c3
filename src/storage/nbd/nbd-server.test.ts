// Unit tests of the NBD server with raw sockets: well-behaved and hostile clients against an
// in-memory export. Nothing here needs an external peer (those are in test/storage/).
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { ByteQueue } from './byte-queue.ts';
import * as C from './nbd-constants.ts';
import { NbdClient } from './nbd-client.ts';
import { mapCatalog, NbdError, type NbdExport, type NbdExtent, type NbdWriteOptions } from './nbd-export.ts';
import { NbdServer } from './nbd-server.ts';

/** An export in memory; reads of the first KiB are slowed so that replies come out of order. */
class MemoryExport implements NbdExport {
  readonly data: Buffer;
  readonly multiConn = true;
  flushes = 0;
  fuaWrites = 0;
  constructor(
    size: number,
    readonly readOnly = false,
  ) {
    this.data = Buffer.alloc(size);
  }
  get sizeBytes(): number {
    return this.data.length;
  }
  async read(buffer: Buffer, position: number): Promise<void> {
    if (position < 1024) await new Promise((resolve) => setTimeout(resolve, 50));
    this.data.copy(buffer, 0, position, position + buffer.length);
  }
  async write(data: Buffer, position: number, options: NbdWriteOptions): Promise<void> {
    if (position === 4096 * 100) throw new NbdError('NBD_ENOSPC', 'Pool is full');
    data.copy(this.data, position);
    if (options.fua) this.fuaWrites++;
  }
  async flush(): Promise<void> {
    this.flushes++;
  }
  async blockStatus(position: number, length: number): Promise<NbdExtent[]> {
    // First 64 KiB data, the rest a hole that reads as zeroes.
    const extents: NbdExtent[] = [];
    if (position < 65536) extents.push({ lengthBytes: 65536 - position, hole: false, zero: false });
    extents.push({ lengthBytes: length, hole: true, zero: true });
    return extents;
  }
}

/** A client that speaks bytes, to send what a good client never would. */
class RawPeer {
  readonly socket: Socket;
  readonly #queue = new ByteQueue();
  #waiter?: () => void;
  closed = false;
  constructor(path: string) {
    this.socket = connect(path);
    this.socket.on('data', (chunk: Buffer) => {
      this.#queue.push(chunk);
      this.#waiter?.();
    });
    this.socket.on('close', () => {
      this.closed = true;
      this.#waiter?.();
    });
    this.socket.on('error', () => undefined);
  }
  async read(n: number, timeoutMs = 2000): Promise<Buffer> {
    const deadline = Date.now() + timeoutMs;
    while (this.#queue.length < n) {
      if (this.closed) throw new Error(`closed with ${this.#queue.length}/${n} bytes`);
      if (Date.now() > deadline) throw new Error('timeout');
      await new Promise<void>((resolve) => {
        this.#waiter = resolve;
        setTimeout(resolve, 50);
      });
    }
    return Buffer.from(this.#queue.take(n));
  }
  write(buffer: Buffer): void {
    this.socket.write(buffer);
  }
  async waitClosed(timeoutMs = 2000): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (!this.closed && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    return this.closed;
  }
  /** Greeting + client flags. */
  async greet(clientFlags = C.NBD_FLAG_C_FIXED_NEWSTYLE | C.NBD_FLAG_C_NO_ZEROES): Promise<void> {
    const greeting = await this.read(18);
    assert.equal(greeting.readBigUInt64BE(0), C.NBD_INIT_PASSWD);
    const flags = Buffer.alloc(4);
    flags.writeUInt32BE(clientFlags >>> 0);
    this.write(flags);
  }
  option(option: number, data: Buffer = Buffer.alloc(0), magic = C.NBD_IHAVEOPT): void {
    const header = Buffer.alloc(16);
    header.writeBigUInt64BE(magic, 0);
    header.writeUInt32BE(option, 8);
    header.writeUInt32BE(data.length, 12);
    this.write(Buffer.concat([header, data]));
  }
  async optionReply(): Promise<{ option: number; type: number; data: Buffer }> {
    const header = await this.read(20);
    assert.equal(header.readBigUInt64BE(0), C.NBD_REP_MAGIC);
    const length = header.readUInt32BE(16);
    return { option: header.readUInt32BE(8), type: header.readUInt32BE(12), data: length ? await this.read(length) : Buffer.alloc(0) };
  }
  /** NBD_OPT_GO; returns the replies up to the final one. */
  async go(name: string): Promise<number> {
    const nameBytes = Buffer.from(name);
    const data = Buffer.alloc(6 + nameBytes.length);
    data.writeUInt32BE(nameBytes.length, 0);
    nameBytes.copy(data, 4);
    this.option(C.NBD_OPT_GO, data);
    for (;;) {
      const reply = await this.optionReply();
      if (reply.type !== C.NBD_REP_INFO) return reply.type;
    }
  }
  request(type: number, handle: number, offset: number, length: number, flags = 0, payload?: Buffer, magic = C.NBD_REQUEST_MAGIC): void {
    const header = Buffer.alloc(28);
    header.writeUInt32BE(magic, 0);
    header.writeUInt16BE(flags, 4);
    header.writeUInt16BE(type, 6);
    header.writeUInt32BE(handle, 12);
    header.writeBigUInt64BE(BigInt(offset), 16);
    header.writeUInt32BE(length, 24);
    this.write(payload ? Buffer.concat([header, payload]) : header);
  }
  async simpleReply(): Promise<{ error: number; handle: number }> {
    const header = await this.read(16);
    assert.equal(header.readUInt32BE(0), C.NBD_SIMPLE_REPLY_MAGIC);
    return { error: header.readUInt32BE(4), handle: header.readUInt32BE(12) };
  }
  async structuredChunk(): Promise<{ flags: number; type: number; handle: number; payload: Buffer }> {
    const header = await this.read(20);
    assert.equal(header.readUInt32BE(0), C.NBD_STRUCTURED_REPLY_MAGIC);
    const length = header.readUInt32BE(16);
    return {
      flags: header.readUInt16BE(4),
      type: header.readUInt16BE(6),
      handle: header.readUInt32BE(12),
      payload: length ? await this.read(length) : Buffer.alloc(0),
    };
  }
  destroy(): void {
    this.socket.destroy();
  }
}

function metaContextData(name: string, queries: string[]): Buffer {
  const parts: Buffer[] = [];
  const nameBytes = Buffer.from(name);
  const head = Buffer.alloc(4);
  head.writeUInt32BE(nameBytes.length);
  parts.push(head, nameBytes);
  const count = Buffer.alloc(4);
  count.writeUInt32BE(queries.length);
  parts.push(count);
  for (const query of queries) {
    const q = Buffer.from(query);
    const len = Buffer.alloc(4);
    len.writeUInt32BE(q.length);
    parts.push(len, q);
  }
  return Buffer.concat(parts);
}

describe('NbdServer', () => {
  let dir: string;
  let socketPath: string;
  let server: NbdServer;
  let disk: MemoryExport;
  const violations: string[] = [];

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'nubis-nbd-unit-'));
    socketPath = join(dir, 'nbd.sock');
    disk = new MemoryExport(1024 * 1024);
    const exports = new Map<string, NbdExport>([
      ['disk', disk],
      ['ro', new MemoryExport(65536, true)],
    ]);
    server = new NbdServer({
      catalog: mapCatalog(exports),
      maxPayloadBytes: 256 * 1024,
      maxOptionBytes: 8192,
      handshakeTimeoutMs: 1000,
      onEvent: (event) => {
        if (event.type === 'protocol-violation') violations.push(event.reason);
      },
    });
    await server.listen({ path: socketPath });
  });

  after(async () => {
    await server.close(500);
    await rm(dir, { recursive: true, force: true });
  });

  it('lists exports, answers INFO for a known name and ERR_UNKNOWN for another', async () => {
    const peer = new RawPeer(socketPath);
    await peer.greet();
    peer.option(C.NBD_OPT_LIST);
    const names: string[] = [];
    for (;;) {
      const reply = await peer.optionReply();
      if (reply.type === C.NBD_REP_ACK) break;
      assert.equal(reply.type, C.NBD_REP_SERVER);
      names.push(reply.data.toString('utf8', 4, 4 + reply.data.readUInt32BE(0)));
    }
    assert.deepEqual(names.sort(), ['disk', 'ro']);
    assert.equal(await peer.go('nope'), C.NBD_REP_ERR_UNKNOWN);
    // The session goes on after an error reply.
    peer.option(C.NBD_OPT_ABORT);
    assert.equal((await peer.optionReply()).type, C.NBD_REP_ACK);
    assert.ok(await peer.waitClosed());
  });

  it('answers unknown options with ERR_UNSUP and malformed ones with ERR_INVALID', async () => {
    const peer = new RawPeer(socketPath);
    await peer.greet();
    peer.option(99);
    assert.equal((await peer.optionReply()).type, C.NBD_REP_ERR_UNSUP);
    peer.option(C.NBD_OPT_LIST, Buffer.from('x'));
    assert.equal((await peer.optionReply()).type, C.NBD_REP_ERR_INVALID);
    const bad = Buffer.alloc(10);
    bad.writeUInt32BE(1000, 0); // name length beyond the option
    peer.option(C.NBD_OPT_GO, bad);
    assert.equal((await peer.optionReply()).type, C.NBD_REP_ERR_INVALID);
    peer.option(C.NBD_OPT_SET_META_CONTEXT, metaContextData('disk', [C.BASE_ALLOCATION]));
    assert.equal((await peer.optionReply()).type, C.NBD_REP_ERR_INVALID, 'meta context before structured replies');
    const overrun = metaContextData('disk', [C.BASE_ALLOCATION]);
    overrun.writeUInt32BE(5, 8); // claims 5 queries
    peer.option(C.NBD_OPT_STRUCTURED_REPLY);
    assert.equal((await peer.optionReply()).type, C.NBD_REP_ACK);
    peer.option(C.NBD_OPT_LIST_META_CONTEXT, overrun);
    assert.equal((await peer.optionReply()).type, C.NBD_REP_ERR_INVALID);
    peer.destroy();
  });

  it('hangs up on unknown client flags, a wrong option magic and an oversized option', async () => {
    const flags = new RawPeer(socketPath);
    await flags.greet(0x80);
    assert.ok(await flags.waitClosed());
    const magic = new RawPeer(socketPath);
    await magic.greet();
    magic.option(C.NBD_OPT_LIST, Buffer.alloc(0), 0x1234n);
    assert.ok(await magic.waitClosed());
    const big = new RawPeer(socketPath);
    await big.greet();
    const header = Buffer.alloc(16);
    header.writeBigUInt64BE(C.NBD_IHAVEOPT, 0);
    header.writeUInt32BE(C.NBD_OPT_GO, 8);
    header.writeUInt32BE(0xffffffff, 12);
    big.write(header);
    assert.ok(await big.waitClosed());
  });

  it('disconnects a client that never finishes the handshake', async () => {
    const idle = new RawPeer(socketPath);
    await idle.greet();
    assert.ok(await idle.waitClosed(3000));
  });

  it('negotiates base:allocation and reports holes with BLOCK_STATUS', async () => {
    const peer = new RawPeer(socketPath);
    await peer.greet();
    peer.option(C.NBD_OPT_STRUCTURED_REPLY);
    assert.equal((await peer.optionReply()).type, C.NBD_REP_ACK);
    peer.option(C.NBD_OPT_LIST_META_CONTEXT, metaContextData('disk', []));
    const listed = await peer.optionReply();
    assert.equal(listed.type, C.NBD_REP_META_CONTEXT);
    assert.equal(listed.data.toString('utf8', 4), C.BASE_ALLOCATION);
    assert.equal((await peer.optionReply()).type, C.NBD_REP_ACK);
    peer.option(C.NBD_OPT_SET_META_CONTEXT, metaContextData('disk', ['qemu:dirty-bitmap:x', C.BASE_ALLOCATION]));
    const selected = await peer.optionReply();
    assert.equal(selected.type, C.NBD_REP_META_CONTEXT);
    const contextId = selected.data.readUInt32BE(0);
    assert.equal((await peer.optionReply()).type, C.NBD_REP_ACK);
    assert.equal(await peer.go('disk'), C.NBD_REP_ACK);

    peer.request(C.NBD_CMD_BLOCK_STATUS, 1, 0, 131072);
    const chunk = await peer.structuredChunk();
    assert.equal(chunk.type, C.NBD_REPLY_TYPE_BLOCK_STATUS);
    assert.equal(chunk.flags & C.NBD_REPLY_FLAG_DONE, C.NBD_REPLY_FLAG_DONE);
    assert.equal(chunk.payload.readUInt32BE(0), contextId);
    assert.deepEqual(
      [chunk.payload.readUInt32BE(4), chunk.payload.readUInt32BE(8), chunk.payload.readUInt32BE(12), chunk.payload.readUInt32BE(16)],
      [65536, 0, 65536, C.NBD_STATE_HOLE | C.NBD_STATE_ZERO],
    );
    peer.request(C.NBD_CMD_BLOCK_STATUS, 2, 0, 131072, C.NBD_CMD_FLAG_REQ_ONE);
    const one = await peer.structuredChunk();
    assert.equal(one.payload.length, 12, 'REQ_ONE gives one descriptor');
    peer.request(C.NBD_CMD_BLOCK_STATUS, 3, 1024 * 1024 - 512, 1024);
    const past = await peer.structuredChunk();
    assert.equal(past.type, C.NBD_REPLY_TYPE_ERROR);
    assert.equal(past.payload.readUInt32BE(0), C.NBD_EINVAL);
    peer.request(C.NBD_CMD_DISC, 4, 0, 0);
    assert.ok(await peer.waitClosed());
  });

  it('checks bounds, flags, lengths and commands as proto.md asks', async () => {
    const peer = new RawPeer(socketPath);
    await peer.greet();
    assert.equal(await peer.go('disk'), C.NBD_REP_ACK);
    const size = 1024 * 1024;
    const cases: Array<[string, () => void, number]> = [
      ['read past end', () => peer.request(C.NBD_CMD_READ, 1, size - 512, 1024), C.NBD_EINVAL],
      ['write past end', () => peer.request(C.NBD_CMD_WRITE, 2, size - 512, 1024, 0, Buffer.alloc(1024)), C.NBD_ENOSPC],
      ['huge offset', () => peer.request(C.NBD_CMD_READ, 3, 2 ** 62, 512), C.NBD_EINVAL],
      ['trim past end', () => peer.request(C.NBD_CMD_TRIM, 4, size, 1), C.NBD_EINVAL],
      ['zeroes past end', () => peer.request(C.NBD_CMD_WRITE_ZEROES, 5, size, 1), C.NBD_ENOSPC],
      ['unknown command', () => peer.request(42, 6, 0, 0), C.NBD_EINVAL],
      ['unknown flag', () => peer.request(C.NBD_CMD_READ, 7, 0, 512, 0x80), C.NBD_EINVAL],
      ['DF without structured replies', () => peer.request(C.NBD_CMD_READ, 8, 0, 512, C.NBD_CMD_FLAG_DF), C.NBD_EINVAL],
      ['flush with a length', () => peer.request(C.NBD_CMD_FLUSH, 9, 0, 5), C.NBD_EINVAL],
      ['block status without contexts', () => peer.request(C.NBD_CMD_BLOCK_STATUS, 10, 0, 512), C.NBD_EINVAL],
      ['read over the maximum payload', () => peer.request(C.NBD_CMD_READ, 11, 0, 512 * 1024), C.NBD_EINVAL],
      ['export error is passed on', () => peer.request(C.NBD_CMD_WRITE, 12, 4096 * 100, 512, 0, Buffer.alloc(512)), C.NBD_ENOSPC],
    ];
    for (const [label, send, errno] of cases) {
      send();
      const reply = await peer.simpleReply();
      assert.equal(reply.error, errno, label);
    }
    // An over-long write is skipped as it streams in; the connection stays usable.
    peer.request(C.NBD_CMD_WRITE, 13, 0, 300 * 1024, 0, Buffer.alloc(300 * 1024, 7));
    assert.equal((await peer.simpleReply()).error, C.NBD_EINVAL);
    peer.request(C.NBD_CMD_WRITE, 14, 8192, 4, C.NBD_CMD_FLAG_FUA, Buffer.from('abcd'));
    assert.deepEqual(await peer.simpleReply(), { error: 0, handle: 14 });
    peer.request(C.NBD_CMD_READ, 15, 8192, 4);
    assert.deepEqual(await peer.simpleReply(), { error: 0, handle: 15 });
    assert.equal((await peer.read(4)).toString(), 'abcd');
    assert.equal(
      disk.data.subarray(0, 1024).every((b) => b === 0),
      true,
      'skipped write left no trace',
    );
    peer.destroy();
  });

  it('refuses writes on a read-only export with EPERM', async () => {
    const peer = new RawPeer(socketPath);
    await peer.greet();
    assert.equal(await peer.go('ro'), C.NBD_REP_ACK);
    peer.request(C.NBD_CMD_WRITE, 1, 0, 4, 0, Buffer.from('abcd'));
    assert.equal((await peer.simpleReply()).error, C.NBD_EPERM);
    peer.request(C.NBD_CMD_TRIM, 2, 0, 4);
    assert.equal((await peer.simpleReply()).error, C.NBD_EPERM);
    peer.destroy();
  });

  it('replies out of order and survives hostile neighbours', async () => {
    const client = await NbdClient.connect({ path: socketPath, exportName: 'disk' });
    await client.write(65536, Buffer.alloc(4096, 0x5a));
    const order: string[] = [];
    const slow = client.read(0, 512).then(() => order.push('slow'));
    const fast = client.read(65536, 4096).then((data) => {
      order.push('fast');
      assert.ok(data.every((b) => b === 0x5a));
    });
    // Meanwhile: a client with a wrong request magic, and one that dies mid-payload.
    const garbage = new RawPeer(socketPath);
    await garbage.greet();
    assert.equal(await garbage.go('disk'), C.NBD_REP_ACK);
    garbage.request(C.NBD_CMD_READ, 1, 0, 512, 0, undefined, 0xdeadbeef);
    const torn = new RawPeer(socketPath);
    await torn.greet();
    assert.equal(await torn.go('disk'), C.NBD_REP_ACK);
    torn.request(C.NBD_CMD_WRITE, 1, 0, 65536, 0, Buffer.alloc(100, 1));
    torn.destroy();
    await Promise.all([slow, fast]);
    assert.deepEqual(order, ['fast', 'slow']);
    assert.ok(await garbage.waitClosed());
    await client.flush();
    assert.ok(disk.flushes >= 1);
    assert.ok(violations.includes('wrong request magic'));
    // The server still serves new clients.
    const again = await NbdClient.connect({ path: socketPath, exportName: 'disk' });
    assert.ok((await again.read(65536, 4096)).every((b) => b === 0x5a));
    await again.close();
    await client.close();
  });

  it('rejects an unknown export in the client with NBD_EXPORT_UNKNOWN', async () => {
    await assert.rejects(NbdClient.connect({ path: socketPath, exportName: 'missing' }), (error: unknown) => {
      return error instanceof NbdError && error.code === 'NBD_EXPORT_UNKNOWN';
    });
  });
});
