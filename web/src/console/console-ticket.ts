/**
 * What the screen and the serial console share: a one-time console ticket (POST
 * /v1/vms/{vm}/console-ticket, which needs only `vm.console`, not the right to read the VM), the
 * WebSocket address it names on this origin, and what a close code means to the user. Close code
 * 4000 (src/api/routes/console.ts) says the VM now runs on another host: the page asks for a new
 * ticket and reconnects by itself; 4401 says the ticket or the session was refused.
 */
import { api, unwrap } from '../api/client';

export type ConsoleKind = 'vnc' | 'serial';

/** The close code of a console WebSocket whose VM moved to another host (live migration). */
export const CONSOLE_MOVED_CODE = 4000;
/** The close code of a refused ticket, an ended session or a revoked right. */
export const CONSOLE_REFUSED_CODE = 4401;
/** How many times in a row a moved console is reopened before the page gives up and asks. */
export const MAX_MOVED_RECONNECTS = 5;

export interface ConsoleTicket {
  /** ws:// or wss:// of this origin, with the ticket in the query. */
  url: string;
  /** The one-time VNC password (screen tickets only). */
  password?: string;
}

/** Asks for a one-time ticket to open the VM's screen or serial console. */
export async function requestConsoleTicket(project: string, name: string, kind: ConsoleKind): Promise<ConsoleTicket> {
  const issued = unwrap(await api.POST('/v1/vms/{vm}/console-ticket', { params: { path: { vm: name }, query: { project } }, body: { kind } }));
  const scheme = window.location.protocol === 'https:' ? 'wss:' : 'ws:';
  return { url: `${scheme}//${window.location.host}${issued.path}`, password: issued.password };
}

/** What a console's close means, in a sentence for the status line; undefined for the page's own close. */
export function describeClose(code: number, reason: string): string {
  if (code === CONSOLE_REFUSED_CODE)
    return `Refused (${code}): ${reason || 'the ticket or the session is no longer valid'}. Reconnect to try with a new ticket`;
  if (code === 1000) return `Closed: ${reason || 'the console ended'}`;
  if (code === 1006) return 'The connection was lost (1006): the control plane or the VM stopped answering';
  return `Closed (${code})${reason ? `: ${reason}` : ''}`;
}
