/**
 * The agent's end of a VM's screen: a WebSocket from the control plane joined to the VM's VNC
 * socket. QEMU's display asks for VNC authentication (`password=on`), and its password is set
 * here for one connection only: the control plane hands over a console ticket's one-time
 * password, the display takes it for a few seconds, and as soon as that connection's
 * authentication is over (RfbAuthWatch sees the server's SecurityResult) it expires. So the
 * socket alone, or a password seen once, lets nobody in.
 *
 * One password window per VM at a time: a second viewer waits until the first has
 * authenticated (or its window has run out), so that it cannot replace a password in use.
 */
import { connect } from 'node:net';
import type { WebSocket } from '@fastify/websocket';
import type { FastifyInstance } from 'fastify';
import { AGENT_STREAMS, VNC_PASSWORD_FORMAT, VNC_PASSWORD_HEADER } from '../agent-api/contract.ts';
import { RfbAuthWatch } from '../compute/vnc/rfb-auth-watch.ts';
import { httpStatusOf } from '../core/error-codes.ts';
import { NubisError, messageOf } from '../core/errors.ts';
import type { VmSupervisor } from './vm-supervisor.ts';

/** How long the display takes a one-time password: the viewer's whole handshake fits in it. */
const PASSWORD_WINDOW_SECONDS = 15;

/** What the relay uses of the supervisor (a test passes a fake). */
export type VncDisplays = Pick<VmSupervisor, 'vncSocket' | 'setVncPassword' | 'expireVncPassword'>;

/** One password window per VM: each holder waits for the previous to close (or run out). */
class PasswordWindows {
  readonly #last = new Map<string, Promise<void>>();

  /** Resolves once VM `id`'s display is free for a new password; call the returned function to free it. */
  async enter(id: string): Promise<() => void> {
    const previous = this.#last.get(id) ?? Promise.resolve();
    let close!: () => void;
    const closed = new Promise<void>((resolve) => (close = resolve));
    const mine = previous.then(() => closed);
    this.#last.set(id, mine);
    await previous;
    // Counted from its opening: its password has expired in QEMU by then, whatever the holder does.
    const timer = setTimeout(close, PASSWORD_WINDOW_SECONDS * 1000);
    timer.unref();
    return () => {
      clearTimeout(timer);
      close();
      if (this.#last.get(id) === mine) this.#last.delete(id);
    };
  }
}

/** Registers GET /agent/vms/:id/vnc (WebSocket): the VM's display, with its one-time password in a header. */
export function registerVncRelay(app: FastifyInstance, displays: VncDisplays, log?: (message: string) => void): void {
  const windows = new PasswordWindows();
  app.get<{ Params: { id: string } }>('/agent/vms/:id/vnc', { websocket: true, schema: { params: AGENT_STREAMS.vnc.params } }, async (socket, request) => {
    const { id } = request.params;
    // Frames that arrive while the password is set wait here; nothing may be lost.
    const early: Buffer[] = [];
    const keep = (data: Buffer) => early.push(data);
    socket.on('message', keep);
    const password = request.headers[VNC_PASSWORD_HEADER];
    let leave: (() => void) | undefined;
    let path: string;
    try {
      if (typeof password !== 'string' || !VNC_PASSWORD_FORMAT.test(password))
        throw new NubisError('VALIDATION_FAILED', `The ${VNC_PASSWORD_HEADER} header must hold a one-time password of 8 letters and digits`);
      path = displays.vncSocket(id);
      leave = await windows.enter(id);
      await displays.setVncPassword(id, password, PASSWORD_WINDOW_SECONDS);
    } catch (error) {
      leave?.();
      socket.close(4000 + (httpStatusOf((error as NubisError).code ?? '') % 1000), messageOf(error).slice(0, 120));
      return;
    }
    socket.off('message', keep);
    pipeDisplay(socket, path, early, () => {
      const free = leave;
      leave = undefined;
      if (!free) return;
      // Expired before the window opens for anyone else: the next viewer sets its own.
      void displays
        .expireVncPassword(id)
        .catch((error: unknown) => log?.(`Could not expire the VNC password of VM ${id}: ${messageOf(error)}`))
        .finally(free);
    });
  });
}

/** Joins the WebSocket to the display's socket until either side ends; `authenticated` runs once the handshake is over or the connection ends. */
function pipeDisplay(socket: WebSocket, path: string, early: Buffer[], authenticated: () => void): void {
  const watch = new RfbAuthWatch(authenticated);
  const display = connect(path);
  display.on('data', (data) => {
    // The bytes are sent on before the watch ends the password: the SecurityResult is already on its way.
    socket.send(data);
    watch.fromServer(data);
  });
  const toDisplay = (data: Buffer) => {
    watch.fromClient(data);
    display.write(data);
  };
  for (const data of early) toDisplay(data);
  socket.on('message', toDisplay);
  let over = false;
  const end = (): void => {
    if (over) return;
    over = true;
    authenticated();
    display.destroy();
    socket.close();
  };
  display.on('close', end);
  display.on('error', end);
  socket.on('close', end);
}
