/**
 * A VM's screen in the page: noVNC (RFB) over the console ticket's WebSocket, with the ticket's
 * one-time VNC password. Keyboard and mouse go to the guest; Ctrl-Alt-Del, scale to fit and full
 * screen are buttons; the status line says what the connection does. When the control plane closes
 * the screen with 4000 (the VM moved to another host in a live migration) it asks for a new ticket
 * and reconnects by itself. It needs only the right to open the console (`vm.console`), never to
 * read the VM, so a desktop-pool user sees the screen of the desktop they are entitled to.
 */
import RFB from '@novnc/novnc';
import { useCallback, useEffect, useRef, useState } from 'react';
import { CONSOLE_MOVED_CODE, describeClose, MAX_MOVED_RECONNECTS, requestConsoleTicket } from '../console/console-ticket';

export type ScreenState = 'connecting' | 'connected' | 'reconnecting' | 'closed' | 'failed';

interface Status {
  state: ScreenState;
  text: string;
}

/** Opens the screen of `project`/`name` while mounted; `attempt` changes to reconnect by hand. */
function useRfb(project: string, name: string, box: React.RefObject<HTMLDivElement | null>, scale: boolean, attempt: number) {
  const [status, setStatus] = useState<Status>({ state: 'connecting', text: 'Asking for a screen ticket' });
  const [reconnects, setReconnects] = useState(0);
  const rfbRef = useRef<RFB | undefined>(undefined);
  const scaleRef = useRef(scale);
  scaleRef.current = scale;
  // biome-ignore lint/correctness/useExhaustiveDependencies: `attempt` is the reconnect button's trigger
  useEffect(() => {
    let ended = false;
    let moves = 0;
    const open = async (state: ScreenState, text: string): Promise<void> => {
      setStatus({ state, text });
      let ticket: Awaited<ReturnType<typeof requestConsoleTicket>>;
      try {
        ticket = await requestConsoleTicket(project, name, 'vnc');
      } catch (error) {
        if (!ended) setStatus({ state: 'failed', text: `No screen ticket: ${error instanceof Error ? error.message : String(error)}` });
        return;
      }
      const target = box.current;
      if (ended || !target) return;
      // The WebSocket is opened here, not by noVNC, so that its close code can be read: noVNC
      // reports only whether a close was clean.
      const socket = new WebSocket(ticket.url);
      socket.addEventListener('close', (event) => {
        if (ended) return;
        if (event.code === CONSOLE_MOVED_CODE && moves < MAX_MOVED_RECONNECTS) {
          moves += 1;
          setReconnects((count) => count + 1);
          void open('reconnecting', 'The VM moved to another host: reconnecting with a new ticket');
          return;
        }
        setStatus({ state: event.code === 1000 ? 'closed' : 'failed', text: describeClose(event.code, event.reason) });
      });
      const rfb = new RFB(target, socket, { credentials: { password: ticket.password }, shared: true });
      rfbRef.current = rfb;
      rfb.scaleViewport = scaleRef.current;
      rfb.background = '#111';
      rfb.addEventListener('credentialsrequired', () => rfb.sendCredentials({ password: ticket.password }));
      rfb.addEventListener('connect', () => {
        moves = 0;
        setStatus({ state: 'connected', text: 'Connected: keyboard and mouse go to the VM' });
      });
      rfb.addEventListener('securityfailure', (event) => {
        const detail = (event as CustomEvent<{ status: number; reason?: string }>).detail;
        setStatus({ state: 'failed', text: `VNC authentication failed: ${detail.reason ?? `status ${detail.status}`}` });
      });
    };
    void open('connecting', 'Asking for a screen ticket');
    return () => {
      ended = true;
      rfbRef.current?.disconnect();
      rfbRef.current = undefined;
    };
  }, [project, name, attempt]);
  useEffect(() => {
    if (rfbRef.current) rfbRef.current.scaleViewport = scale;
  }, [scale]);
  return { status, reconnects, rfbRef };
}

/** The screen of one VM, with its buttons and status line. */
export function VncScreen({ project, name }: { project: string; name: string }) {
  const frame = useRef<HTMLDivElement>(null);
  const box = useRef<HTMLDivElement>(null);
  const [scale, setScale] = useState(true);
  const [attempt, setAttempt] = useState(0);
  const { status, reconnects, rfbRef } = useRfb(project, name, box, scale, attempt);
  const fullScreen = useCallback(() => {
    void frame.current?.requestFullscreen().then(() => rfbRef.current?.focus());
  }, [rfbRef]);
  const connected = status.state === 'connected';
  return (
    <section className="vnc-frame" ref={frame} aria-label={`Screen of ${name}`}>
      <div className="vnc-toolbar">
        <button type="button" disabled={!connected} onClick={() => rfbRef.current?.sendCtrlAltDel()}>
          Send Ctrl-Alt-Del
        </button>
        <label className="inline">
          <input type="checkbox" checked={scale} onChange={(event) => setScale(event.target.checked)} /> Scale to fit
        </label>
        <button type="button" onClick={fullScreen}>
          Full screen
        </button>
        {(status.state === 'failed' || status.state === 'closed') && (
          <button type="button" onClick={() => setAttempt((count) => count + 1)}>
            Reconnect
          </button>
        )}
      </div>
      <p className={`vnc-status status-${status.state}`} role="status" data-screen-state={status.state} data-reconnects={reconnects}>
        {status.text}
        {connected && reconnects > 0 ? ` (reconnected after ${reconnects} move${reconnects === 1 ? '' : 's'})` : ''}
      </p>
      <div className="vnc-screen" ref={box} data-testid="vnc-screen" />
    </section>
  );
}
