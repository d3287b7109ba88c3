/**
 * A VM's interactive serial console: xterm.js (fitted to its box) over the console ticket's
 * WebSocket, binary frames both ways. Like the screen, it reconnects with a new ticket by itself
 * when the control plane closes it with 4000 (the VM moved to another host), and needs only the
 * right to open the console, not to read the VM.
 */
import { FitAddon } from '@xterm/addon-fit';
import { Terminal } from '@xterm/xterm';
import '@xterm/xterm/css/xterm.css';
import { useEffect, useRef, useState } from 'react';
import { adoptStyleElements } from '../console/adopt-styles';
import { CONSOLE_MOVED_CODE, describeClose, MAX_MOVED_RECONNECTS, requestConsoleTicket } from '../console/console-ticket';
import type { ScreenState } from './vnc-screen';

/** Connects `terminal` to the VM's serial console until `isEnded()`; reports each state. */
function connectSerial(
  terminal: Terminal,
  where: { project: string; name: string },
  report: (state: ScreenState, text: string) => void,
  isEnded: () => boolean,
): { close(): void } {
  let socket: WebSocket | undefined;
  let moves = 0;
  const encoder = new TextEncoder();
  const open = async (state: ScreenState, text: string): Promise<void> => {
    report(state, text);
    let url: string;
    try {
      url = (await requestConsoleTicket(where.project, where.name, 'serial')).url;
    } catch (error) {
      if (!isEnded()) report('failed', `No console ticket: ${error instanceof Error ? error.message : String(error)}`);
      return;
    }
    if (isEnded()) return;
    const opened = new WebSocket(url);
    socket = opened;
    opened.binaryType = 'arraybuffer';
    opened.addEventListener('open', () => {
      moves = 0;
      report('connected', 'Connected: what you type goes to the VM; press Enter for a prompt');
      terminal.focus();
    });
    opened.addEventListener('message', (event) => {
      terminal.write(typeof event.data === 'string' ? event.data : new Uint8Array(event.data as ArrayBuffer));
    });
    opened.addEventListener('close', (event) => {
      if (isEnded() || socket !== opened) return;
      if (event.code === CONSOLE_MOVED_CODE && moves < MAX_MOVED_RECONNECTS) {
        moves += 1;
        void open('reconnecting', 'The VM moved to another host: reconnecting with a new ticket');
        return;
      }
      report(event.code === 1000 ? 'closed' : 'failed', describeClose(event.code, event.reason));
    });
  };
  // Keys (and the terminal's own answers, such as the cursor position the shell asks for) go out
  // as binary frames, as the CLI's console sends them.
  const send = (data: string) => socket?.readyState === WebSocket.OPEN && socket.send(encoder.encode(data));
  const typed = terminal.onData(send);
  const binary = terminal.onBinary((data) => socket?.readyState === WebSocket.OPEN && socket.send(Uint8Array.from(data, (c) => c.charCodeAt(0))));
  void open('connecting', 'Asking for a console ticket');
  return {
    close() {
      typed.dispose();
      binary.dispose();
      socket?.close(1000, 'page closed');
    },
  };
}

/** The serial console of one VM, with its status line. */
export function SerialTerminal({ project, name }: { project: string; name: string }) {
  const box = useRef<HTMLDivElement>(null);
  const [status, setStatus] = useState<{ state: ScreenState; text: string }>({ state: 'connecting', text: 'Asking for a console ticket' });
  const [attempt, setAttempt] = useState(0);
  // biome-ignore lint/correctness/useExhaustiveDependencies: `attempt` is the reconnect button's trigger
  useEffect(() => {
    const target = box.current;
    if (!target) return;
    let ended = false;
    const unadopt = adoptStyleElements(target);
    const terminal = new Terminal({ convertEol: false, cursorBlink: true, fontSize: 14, scrollback: 5000 });
    const fit = new FitAddon();
    terminal.loadAddon(fit);
    terminal.open(target);
    fit.fit();
    const resized = new ResizeObserver(() => fit.fit());
    resized.observe(target);
    const connection = connectSerial(
      terminal,
      { project, name },
      (state, text) => !ended && setStatus({ state, text }),
      () => ended,
    );
    return () => {
      ended = true;
      connection.close();
      resized.disconnect();
      terminal.dispose();
      unadopt();
    };
  }, [project, name, attempt]);
  return (
    <section className="serial-frame" aria-label={`Serial console of ${name}`}>
      <p className={`vnc-status status-${status.state}`} role="status" data-console-state={status.state}>
        {status.text}{' '}
        {(status.state === 'failed' || status.state === 'closed') && (
          <button type="button" onClick={() => setAttempt((count) => count + 1)}>
            Reconnect
          </button>
        )}
      </p>
      <div className="serial-terminal" ref={box} data-testid="serial-terminal" />
    </section>
  );
}
