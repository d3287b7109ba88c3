/**
 * A minimal NBD client: fixed newstyle handshake with NBD_OPT_GO, simple replies, pipelined
 * requests correlated by handle. Used by tests and to attach remote NBD exports as pool members.
 * Protocol code: imports nothing from the application.
 */
import { connect, type Socket } from 'node:net';
import { ByteQueue } from './byte-queue.ts';
import * as C from './nbd-constants.ts';
import { NbdError } from './nbd-export.ts';

/** Where the server listens and which export to use. */
export interface NbdClientOptions {
  path?: string;
  host?: string;
  port?: number;
  exportName?: string;
  /** Give up on the connection and handshake after this long. Default 10 000 ms. */
  timeoutMs?: number;
  signal?: AbortSignal;
}

interface Pending {
  resolve: (data: Buffer | undefined) => void;
  reject: (error: Error) => void;
  readLength: number;
}

/** A connected client; every call rejects with NbdError (the wire error as `errno`). */
export class NbdClient {
  readonly sizeBytes: number;
  readonly transmissionFlags: number;
  readonly #socket: Socket;
  readonly #queue: ByteQueue;
  readonly #pending = new Map<number, Pending>();
  #nextHandle = 1;
  #closedError?: NbdError;
  #waitingReply?: { handle: number; error: number; pending: Pending };
  #onIdle?: () => void;

  private constructor(socket: Socket, queue: ByteQueue, sizeBytes: number, flags: number) {
    this.#socket = socket;
    this.#queue = queue;
    this.sizeBytes = sizeBytes;
    this.transmissionFlags = flags;
    socket.removeAllListeners('data');
    socket.on('data', (chunk: Buffer) => {
      this.#queue.push(chunk);
      this.#parse();
    });
    socket.on('close', () => this.#fail(new NbdError('NBD_DISCONNECTED', 'Server closed the connection')));
    socket.on('error', (error) => this.#fail(new NbdError('NBD_DISCONNECTED', `Connection failed: ${error.message}`, { cause: error })));
    this.#parse();
  }

  /** Connects and selects the export with NBD_OPT_GO. */
  static async connect(options: NbdClientOptions): Promise<NbdClient> {
    const socket = options.path ? connect(options.path) : connect(options.port ?? 10809, options.host ?? '127.0.0.1');
    socket.setNoDelay(true);
    const reader = new HandshakeReader(socket, options);
    try {
      await negotiateFlags(reader, socket);
      const { sizeBytes, flags } = await selectExport(reader, socket, options.exportName ?? '');
      return new NbdClient(socket, reader.queue, sizeBytes, flags);
    } catch (error) {
      socket.destroy();
      throw error;
    } finally {
      reader.dispose();
    }
  }

  get readOnly(): boolean {
    return (this.transmissionFlags & C.NBD_FLAG_READ_ONLY) !== 0;
  }

  /** Reads `length` bytes at `offset`. */
  async read(offset: number, length: number): Promise<Buffer> {
    return (await this.#request(C.NBD_CMD_READ, 0, offset, length, undefined, length))!;
  }

  async write(offset: number, data: Buffer, options: { fua?: boolean } = {}): Promise<void> {
    await this.#request(C.NBD_CMD_WRITE, options.fua ? C.NBD_CMD_FLAG_FUA : 0, offset, data.length, data, 0);
  }

  async flush(): Promise<void> {
    await this.#request(C.NBD_CMD_FLUSH, 0, 0, 0, undefined, 0);
  }

  async trim(offset: number, length: number, options: { fua?: boolean } = {}): Promise<void> {
    await this.#request(C.NBD_CMD_TRIM, options.fua ? C.NBD_CMD_FLAG_FUA : 0, offset, length, undefined, 0);
  }

  async writeZeroes(offset: number, length: number, options: { fua?: boolean } = {}): Promise<void> {
    await this.#request(C.NBD_CMD_WRITE_ZEROES, options.fua ? C.NBD_CMD_FLAG_FUA : 0, offset, length, undefined, 0);
  }

  /** Soft disconnect (NBD_CMD_DISC) once the server has answered everything in flight. */
  async close(): Promise<void> {
    if (this.#closedError) return;
    // proto.md NBD_CMD_DISC: the client SHOULD wait until no requests are in flight.
    while (this.#pending.size > 0 && !this.#closedError) await new Promise<void>((resolve) => (this.#onIdle = resolve));
    if (this.#closedError) return;
    const header = encodeRequest(C.NBD_CMD_DISC, 0, 0, 0, 0);
    this.#socket.end(header);
    await new Promise<void>((resolve) => {
      if (this.#socket.closed) resolve();
      else this.#socket.once('close', () => resolve());
    });
  }

  /** Hard disconnect. */
  destroy(): void {
    this.#socket.destroy();
  }

  #request(type: number, flags: number, offset: number, length: number, payload: Buffer | undefined, readLength: number): Promise<Buffer | undefined> {
    if (this.#closedError) return Promise.reject(this.#closedError);
    const handle = this.#nextHandle++;
    return new Promise((resolve, reject) => {
      this.#pending.set(handle, { resolve, reject, readLength });
      const header = encodeRequest(type, flags, handle, offset, length);
      if (payload) {
        this.#socket.cork();
        this.#socket.write(header);
        this.#socket.write(payload);
        this.#socket.uncork();
      } else {
        this.#socket.write(header);
      }
    });
  }

  #parse(): void {
    for (;;) {
      if (!this.#waitingReply) {
        if (this.#queue.length < 16) return;
        const header = this.#queue.take(16);
        if (header.readUInt32BE(0) !== C.NBD_SIMPLE_REPLY_MAGIC) {
          this.#fail(new NbdError('NBD_PROTOCOL', 'Unexpected reply magic'));
          this.#socket.destroy();
          return;
        }
        const error = header.readUInt32BE(4);
        const handle = header.readUInt32BE(8) * 0x1_0000_0000 + header.readUInt32BE(12);
        const pending = this.#pending.get(handle);
        if (!pending) {
          this.#fail(new NbdError('NBD_PROTOCOL', `Reply for unknown handle ${handle}`));
          this.#socket.destroy();
          return;
        }
        this.#waitingReply = { handle, error, pending };
      }
      const { handle, error, pending } = this.#waitingReply;
      // proto.md simple reply: an error carries no payload, even for READ.
      const length = error === 0 ? pending.readLength : 0;
      if (this.#queue.length < length) return;
      this.#waitingReply = undefined;
      this.#pending.delete(handle);
      if (error !== 0) pending.reject(NbdError.fromErrno(error, `Server answered error ${error}`));
      else pending.resolve(length > 0 ? Buffer.from(this.#queue.take(length)) : undefined);
      if (this.#pending.size === 0) this.#onIdle?.();
    }
  }

  #fail(error: NbdError): void {
    this.#closedError ??= error;
    for (const pending of this.#pending.values()) pending.reject(error);
    this.#pending.clear();
    this.#onIdle?.();
  }
}

/**
 * Reads the handshake's bytes as they arrive, and fails every read once the socket errors,
 * closes, the handshake takes longer than `timeoutMs` or `signal` aborts.
 */
export class HandshakeReader {
  readonly queue = new ByteQueue();
  readonly #socket: Socket;
  readonly #signal?: AbortSignal;
  readonly #timer: NodeJS.Timeout;
  #waiter?: { n: number; resolve: (b: Buffer) => void; reject: (e: Error) => void };
  #failure?: Error;
  readonly #onAbort = () => {
    this.#fail(new NbdError('NBD_DISCONNECTED', 'Connection aborted'));
    this.#socket.destroy();
  };

  constructor(socket: Socket, options: NbdClientOptions) {
    this.#socket = socket;
    this.#signal = options.signal;
    socket.on('data', (chunk: Buffer) => {
      this.queue.push(chunk);
      if (this.#waiter && this.queue.length >= this.#waiter.n) {
        const w = this.#waiter;
        this.#waiter = undefined;
        w.resolve(this.queue.take(w.n));
      }
    });
    socket.on('error', (error) => this.#fail(new NbdError('NBD_CONNECT_FAILED', `Cannot connect to the NBD server: ${error.message}`, { cause: error })));
    socket.on('close', () => this.#fail(new NbdError('NBD_DISCONNECTED', 'Server closed the connection during the handshake')));
    const timeoutMs = options.timeoutMs ?? 10_000;
    this.#timer = setTimeout(() => {
      this.#fail(new NbdError('NBD_TIMEOUT', `NBD handshake took longer than ${timeoutMs} ms`));
      socket.destroy();
    }, timeoutMs);
    this.#signal?.addEventListener('abort', this.#onAbort, { once: true });
  }

  /** The next `n` bytes, copied out of the queue. */
  read(n: number): Promise<Buffer> {
    if (this.#failure) return Promise.reject(this.#failure);
    if (this.queue.length >= n) return Promise.resolve(Buffer.from(this.queue.take(n)));
    return new Promise((resolve, reject) => (this.#waiter = { n, resolve: (b) => resolve(Buffer.from(b)), reject }));
  }

  /** Stops the timeout and the abort listener (the socket's own listeners are the client's to replace). */
  dispose(): void {
    clearTimeout(this.#timer);
    this.#signal?.removeEventListener('abort', this.#onAbort);
  }

  #fail(error: Error): void {
    this.#failure ??= error;
    this.#waiter?.reject(this.#failure);
    this.#waiter = undefined;
  }
}

/** proto.md "Newstyle negotiation": checks the server's greeting and answers with the client flags. */
export async function negotiateFlags(reader: HandshakeReader, socket: Socket): Promise<void> {
  const greeting = await reader.read(18);
  if (greeting.readBigUInt64BE(0) !== C.NBD_INIT_PASSWD || greeting.readBigUInt64BE(8) !== C.NBD_IHAVEOPT) {
    throw new NbdError('NBD_PROTOCOL', 'Server does not speak newstyle NBD');
  }
  const serverFlags = greeting.readUInt16BE(16);
  if ((serverFlags & C.NBD_FLAG_FIXED_NEWSTYLE) === 0) throw new NbdError('NBD_PROTOCOL', 'Server lacks fixed newstyle negotiation');
  const clientFlags = Buffer.allocUnsafe(4);
  clientFlags.writeUInt32BE(C.NBD_FLAG_C_FIXED_NEWSTYLE | (serverFlags & C.NBD_FLAG_NO_ZEROES ? C.NBD_FLAG_C_NO_ZEROES : 0));
  socket.write(clientFlags);
}

/**
 * Sends NBD_OPT_GO for `exportName` (no information requests) and reads the replies up to the
 * ACK: the size and transmission flags come in NBD_INFO_EXPORT.
 */
export async function selectExport(reader: HandshakeReader, socket: Socket, exportName: string): Promise<{ sizeBytes: number; flags: number }> {
  const name = Buffer.from(exportName, 'utf8');
  const data = Buffer.alloc(4 + name.length + 2);
  data.writeUInt32BE(name.length, 0);
  name.copy(data, 4);
  socket.write(encodeOption(C.NBD_OPT_GO, data));
  let sizeBytes = -1;
  let flags = 0;
  for (;;) {
    const header = await reader.read(20);
    if (header.readBigUInt64BE(0) !== C.NBD_REP_MAGIC) throw new NbdError('NBD_PROTOCOL', 'Wrong option reply magic');
    const type = header.readUInt32BE(12);
    const length = header.readUInt32BE(16);
    if (length > 64 * 1024) throw new NbdError('NBD_PROTOCOL', 'Option reply too long');
    const payload = length > 0 ? await reader.read(length) : Buffer.alloc(0);
    if (type === C.NBD_REP_ACK) break;
    if (type === C.NBD_REP_INFO) {
      if (payload.length >= 12 && payload.readUInt16BE(0) === C.NBD_INFO_EXPORT) {
        sizeBytes = payload.readUInt32BE(2) * 0x1_0000_0000 + payload.readUInt32BE(6);
        flags = payload.readUInt16BE(10);
      }
      continue;
    }
    if (type >= 0x80000000) {
      const code = type === C.NBD_REP_ERR_UNKNOWN ? 'NBD_EXPORT_UNKNOWN' : 'NBD_PROTOCOL';
      throw new NbdError(code, `Server refused export ${JSON.stringify(exportName)}: ${payload.toString('utf8') || type}`);
    }
  }
  if (sizeBytes < 0) throw new NbdError('NBD_PROTOCOL', 'Server sent no NBD_INFO_EXPORT');
  return { sizeBytes, flags };
}

export function encodeOption(option: number, data: Buffer): Buffer {
  const out = Buffer.allocUnsafe(16 + data.length);
  out.writeBigUInt64BE(C.NBD_IHAVEOPT, 0);
  out.writeUInt32BE(option, 8);
  out.writeUInt32BE(data.length, 12);
  data.copy(out, 16);
  return out;
}

export function encodeRequest(type: number, flags: number, handle: number, offset: number, length: number): Buffer {
  const out = Buffer.allocUnsafe(28);
  out.writeUInt32BE(C.NBD_REQUEST_MAGIC, 0);
  out.writeUInt16BE(flags, 4);
  out.writeUInt16BE(type, 6);
  out.writeUInt32BE(Math.floor(handle / 0x1_0000_0000), 8);
  out.writeUInt32BE(handle % 0x1_0000_0000, 12);
  out.writeUInt32BE(Math.floor(offset / 0x1_0000_0000), 16);
  out.writeUInt32BE(offset % 0x1_0000_0000, 20);
  out.writeUInt32BE(length, 24);
  return out;
}
