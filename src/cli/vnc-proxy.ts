/**
 * `nubis vm vnc`: a VM's screen for a native VNC viewer. A local TCP port takes the viewer; the
 * viewer authenticates here with a password this command prints (VNC Authentication, RFC 6143
 * 7.2.2), then this command asks the API for a console ticket, opens the screen's WebSocket and
 * authenticates there with the ticket's one-time password, and joins the two. Each viewer
 * connection gets its own ticket, so a viewer that reconnects (after the VM moved to another
 * host, close code 4000) simply reaches the VM where it runs now.
 */
import { randomBytes } from 'node:crypto';
import { type Socket, createServer } from 'node:net';
import type WebSocket from 'ws';
import { newVncPassword, vncAuthResponse } from '../compute/vnc/vnc-auth.ts';
import { NubisError, messageOf } from '../core/errors.ts';

/** Bytes of one connection read as a stream: `read(n)` waits for exactly n bytes. */
class ByteReader {
  #buffer = Buffer.alloc(0);
  #wake?: () => void;
  #ended?: string;

  push(data: Buffer): void {
    this.#buffer = Buffer.concat([this.#buffer, data]);
    this.#wake?.();
  }

  end(why: string): void {
    this.#ended = why;
    this.#wake?.();
  }

  async read(length: number): Promise<Buffer> {
    while (this.#buffer.length < length) {
      if (this.#ended) throw new NubisError('VM_CONSOLE_FAILED', this.#ended);
      await new Promise<void>((resolve) => (this.#wake = resolve));
    }
    const out = this.#buffer.subarray(0, length);
    this.#buffer = this.#buffer.subarray(length);
    return out;
  }

  /** What was read ahead and not consumed: it belongs to the spliced stream. */
  rest(): Buffer {
    const out = this.#buffer;
    this.#buffer = Buffer.alloc(0);
    return out;
  }
}

const u32 = (value: number) => {
  const bytes = Buffer.alloc(4);
  bytes.writeUInt32BE(value);
  return bytes;
};

/** Serves the viewer's side of the RFB opening with VNC Authentication against `password`; false when it fails. */
async function authenticateViewer(viewer: Socket, reader: ByteReader, password: string): Promise<boolean> {
  viewer.write('RFB 003.008\n');
  const minor = Number(/^RFB 003\.(\d{3})\n$/.exec((await reader.read(12)).toString('latin1'))?.[1] ?? 0);
  if (minor >= 7) {
    viewer.write(Buffer.from([1, 2]));
    if ((await reader.read(1))[0] !== 2) return false;
  } else viewer.write(u32(2));
  const challenge = randomBytes(16);
  viewer.write(challenge);
  const ok = (await reader.read(16)).equals(vncAuthResponse(challenge, password));
  const reason = Buffer.from('Wrong password: use the one nubis vm vnc printed');
  viewer.write(ok ? u32(0) : Buffer.concat([u32(1), ...(minor >= 8 ? [u32(reason.length), reason] : [])]));
  return ok;
}

/** Does the client's side of the RFB opening on the screen's WebSocket with the ticket's one-time password. */
async function authenticateToScreen(screen: WebSocket, reader: ByteReader, password: string): Promise<void> {
  await reader.read(12);
  screen.send(Buffer.from('RFB 003.008\n'));
  const count = (await reader.read(1))[0];
  if (count === 0) throw new NubisError('VM_CONSOLE_FAILED', `The screen refused: ${(await reader.read((await reader.read(4)).readUInt32BE(0))).toString()}`);
  if (!(await reader.read(count)).includes(2)) throw new NubisError('VM_CONSOLE_FAILED', 'The screen offers no VNC authentication');
  screen.send(Buffer.from([2]));
  screen.send(vncAuthResponse(await reader.read(16), password));
  if ((await reader.read(4)).readUInt32BE(0) !== 0)
    throw new NubisError(
      'VM_CONSOLE_FAILED',
      `The screen refused the one-time password: ${(await reader.read((await reader.read(4)).readUInt32BE(0))).toString()}`,
    );
}

/** How the proxy reaches the API: a new ticket per viewer, and the WebSocket URL of a ticket's path. */
export interface VncProxyOptions {
  listen: { host: string; port: number };
  ticket: () => Promise<{ path: string; password: string }>;
  webSocket: (path: string) => WebSocket;
  log: (message: string) => void;
}

/** Listens for viewers; resolves with the address and the viewers' password once listening. */
export async function startVncProxy(options: VncProxyOptions): Promise<{ address: string; password: string; close: () => void }> {
  const password = newVncPassword();
  const viewers = new Set<Socket>();
  const server = createServer((viewer) => {
    viewers.add(viewer);
    viewer.on('close', () => viewers.delete(viewer));
    void serveViewer(viewer, password, options);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', (error) =>
      reject(new NubisError('VALIDATION_FAILED', `Cannot listen on ${options.listen.host}:${options.listen.port}: ${messageOf(error)}`)),
    );
    server.listen(options.listen.port, options.listen.host, resolve);
  });
  const { address, port } = server.address() as { address: string; port: number };
  return {
    address: `${address}:${port}`,
    password,
    close: () => {
      server.close();
      for (const viewer of viewers) viewer.destroy();
    },
  };
}

/** One viewer: its authentication here, a ticket, the screen's authentication, then bytes both ways. */
async function serveViewer(viewer: Socket, password: string, options: VncProxyOptions): Promise<void> {
  const fromViewer = new ByteReader();
  viewer.on('data', (data) => fromViewer.push(data));
  viewer.on('close', () => fromViewer.end('The viewer left'));
  viewer.on('error', () => viewer.destroy());
  let screen: WebSocket | undefined;
  try {
    if (!(await authenticateViewer(viewer, fromViewer, password))) {
      options.log('A viewer gave the wrong password');
      viewer.end();
      return;
    }
    const ticket = await options.ticket();
    screen = options.webSocket(ticket.path);
    const fromScreen = new ByteReader();
    screen.on('message', (data: Buffer) => fromScreen.push(data));
    screen.on('close', (code, reason) => fromScreen.end(`The screen closed (${code}${reason.length > 0 ? ` ${reason.toString()}` : ''})`));
    screen.on('error', (error) => fromScreen.end(`The screen could not be opened: ${error.message}`));
    await authenticateToScreen(screen, fromScreen, ticket.password);
    splice(viewer, fromViewer, screen, fromScreen, options.log);
  } catch (error) {
    options.log(messageOf(error));
    screen?.close();
    viewer.destroy();
  }
}

/** Joins an authenticated viewer and screen: what each already sent past the opening goes first. */
function splice(viewer: Socket, fromViewer: ByteReader, screen: WebSocket, fromScreen: ByteReader, log: (message: string) => void): void {
  viewer.removeAllListeners('data');
  screen.removeAllListeners('message');
  const early = fromViewer.rest();
  if (early.length > 0) screen.send(early);
  const late = fromScreen.rest();
  if (late.length > 0) viewer.write(late);
  viewer.on('data', (data) => screen.send(data));
  screen.on('message', (data: Buffer) => viewer.write(data));
  viewer.on('close', () => screen.close());
  screen.on('close', (code, reason) => {
    if (code === 4000) log('The VM moved to another host: reconnect the viewer (a new ticket reaches it there)');
    else if (code >= 4000) log(`The screen closed: ${reason.toString()}`);
    viewer.end();
  });
}
