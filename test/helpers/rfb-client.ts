/**
 * A minimal RFB (VNC) client for tests, over a WebSocket to a Nubis screen: the RFB 3.8 opening
 * with VNC Authentication (RFC 6143 7.1-7.3), then raw framebuffer updates (7.5.3, 7.6.1, 7.7.1).
 * Test-only: it knows just enough to see what a guest shows.
 */
import { connect } from 'node:net';
import WebSocket from 'ws';
import { vncAuthResponse } from '../../src/compute/vnc/vnc-auth.ts';

/** An authenticated RFB session: the screen's size and a way to read it. */
export interface RfbSession {
  width: number;
  height: number;
  name: string;
  /** The whole screen as raw pixels (4 bytes each, QEMU's default format), after a full update. */
  screen(): Promise<Buffer>;
  close(): void;
}

/** Where the RFB bytes travel: a screen's WebSocket, or (to show it refuses) the VM's VNC socket itself. */
interface Transport {
  send(bytes: Buffer): void;
  onData(listener: (data: Buffer) => void): void;
  onClose(listener: (why: string) => void): void;
  close(): void;
}

/** A screen WebSocket (with its ticket) as a transport, once open. */
async function webSocketTransport(url: string): Promise<Transport> {
  const socket = new WebSocket(url);
  // Listening from the start: a frame that arrives with the upgrade's answer is emitted before
  // the code awaiting 'open' runs again, and would be lost.
  const early: Buffer[] = [];
  let deliver: ((data: Buffer) => void) | undefined;
  socket.on('message', (data: Buffer) => (deliver ? deliver(data) : early.push(data)));
  await new Promise((resolve, reject) => {
    socket.once('open', resolve);
    socket.once('error', reject);
  });
  return {
    send: (bytes) => socket.send(bytes),
    onData: (listener) => {
      deliver = listener;
      for (const data of early.splice(0)) listener(data);
    },
    onClose: (listener) => socket.on('close', (code, reason) => listener(`closed ${code} ${reason.toString()}`)),
    close: () => socket.close(),
  };
}

/** A unix socket (QEMU's vnc.sock), or `host:port` over TCP (nubis vm vnc), as a transport, once connected. */
async function socketTransport(where: string): Promise<Transport> {
  const tcp = /^([\d.]+):(\d+)$/.exec(where);
  const socket = tcp ? connect(Number(tcp[2]), tcp[1]) : connect(where);
  await new Promise((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('error', reject);
  });
  return {
    send: (bytes) => socket.write(bytes),
    onData: (listener) => socket.on('data', listener),
    onClose: (listener) => socket.on('close', () => listener('closed')),
    close: () => socket.destroy(),
  };
}

/** Bytes of a transport read as a stream: `read(n)` waits for exactly n bytes. */
class ByteReader {
  #buffer = Buffer.alloc(0);
  #waiting?: () => void;
  #closed?: string;

  constructor(transport: Transport) {
    transport.onData((data) => {
      this.#buffer = Buffer.concat([this.#buffer, data]);
      this.#waiting?.();
    });
    transport.onClose((why) => {
      this.#closed = why;
      this.#waiting?.();
    });
  }

  async read(length: number, timeoutMs = 20_000): Promise<Buffer> {
    const deadline = Date.now() + timeoutMs;
    while (this.#buffer.length < length) {
      if (this.#closed) throw new Error(`The screen's WebSocket ${this.#closed} while ${length} bytes were awaited`);
      if (Date.now() > deadline) throw new Error(`No ${length} bytes from the screen within ${timeoutMs} ms`);
      await new Promise<void>((resolve) => {
        this.#waiting = resolve;
        setTimeout(resolve, 200);
      });
    }
    const out = this.#buffer.subarray(0, length);
    this.#buffer = this.#buffer.subarray(length);
    return out;
  }
}

/**
 * Opens `url` (a screen WebSocket with its ticket, the path of a VNC unix socket, or host:port), authenticates with `password`, and resolves
 * with the session; rejects with the server's reason when authentication fails.
 */
export async function openRfb(url: string, password: string): Promise<RfbSession> {
  return rfbOver(url.startsWith('ws') ? await webSocketTransport(url) : await socketTransport(url), password);
}

async function rfbOver(socket: Transport, password: string): Promise<RfbSession> {
  const reader = new ByteReader(socket);
  const send = (bytes: Buffer | number[]) => socket.send(Buffer.from(bytes as Buffer));
  try {
    const version = (await reader.read(12)).toString('latin1');
    if (!/^RFB 003\.00[3-8]\n$/.test(version)) throw new Error(`Not an RFB server: ${JSON.stringify(version)}`);
    send(Buffer.from('RFB 003.008\n'));
    const count = (await reader.read(1))[0];
    if (count === 0) throw new Error(`RFB refused: ${(await reader.read((await reader.read(4)).readUInt32BE(0))).toString()}`);
    const types = [...(await reader.read(count))];
    if (!types.includes(2)) throw new Error(`The screen offers no VNC Authentication (types ${types.join(', ')})`);
    send([2]);
    send(vncAuthResponse(await reader.read(16), password));
    if ((await reader.read(4)).readUInt32BE(0) !== 0) {
      const reason = (await reader.read((await reader.read(4)).readUInt32BE(0))).toString();
      throw new Error(`VNC authentication failed: ${reason}`);
    }
    send([1]); // ClientInit: share the desktop
    const init = await reader.read(24);
    const name = (await reader.read(init.readUInt32BE(20))).toString();
    const width = init.readUInt16BE(0);
    const height = init.readUInt16BE(2);
    const bitsPerPixel = init[4];
    if (bitsPerPixel !== 32) throw new Error(`Expected 32 bits per pixel, the server says ${bitsPerPixel}`);
    // SetEncodings: raw only.
    send([2, 0, 0, 1, 0, 0, 0, 0]);
    return {
      width,
      height,
      name,
      async screen() {
        const request = Buffer.alloc(10);
        request[0] = 3; // FramebufferUpdateRequest, not incremental: the whole screen
        request.writeUInt16BE(width, 6);
        request.writeUInt16BE(height, 8);
        send(request);
        const pixels = Buffer.alloc(width * height * 4);
        for (;;) {
          const type = (await reader.read(1))[0];
          if (type === 2) continue; // Bell
          if (type === 3) {
            await reader.read(3);
            await reader.read((await reader.read(4)).readUInt32BE(0));
            continue;
          }
          if (type !== 0) throw new Error(`Unexpected RFB server message ${type}`);
          const rects = (await reader.read(3)).readUInt16BE(1);
          for (let r = 0; r < rects; r += 1) {
            const header = await reader.read(12);
            const [x, y, w, h] = [0, 2, 4, 6].map((at) => header.readUInt16BE(at));
            const encoding = header.readInt32BE(8);
            if (encoding !== 0) throw new Error(`Unexpected encoding ${encoding}`);
            const data = await reader.read(w * h * 4);
            for (let row = 0; row < h; row += 1) data.copy(pixels, ((y + row) * width + x) * 4, row * w * 4, (row + 1) * w * 4);
          }
          return pixels;
        }
      },
      close: () => socket.close(),
    };
  } catch (error) {
    socket.close();
    throw error;
  }
}
