/**
 * Which exports the clients of one listener may select (say, one VM's QEMU on a socket of its
 * own): an allow list by export name. A name not on the list is answered exactly like a name
 * that does not exist (NBD_REP_ERR_UNKNOWN, proto.md "the requested export is not available"),
 * with a sentence that says why, so a client can never learn from the answer whether an export
 * it may not use exists. NBD_OPT_LIST shows only the allowed names.
 *
 * The list can be replaced at any time. A connection already in transmission on an export that
 * is no longer on the list is cut at once (proto.md lets a server hard-disconnect; a client
 * cannot switch exports inside a session, so this is the only place a choice is ever checked),
 * and `replace` resolves once none of its requests still runs on the export: after that no byte
 * of it can reach the volume, which may then be given to someone else.
 *
 * Protocol code: imports nothing from the application.
 */
import type { NbdGateMember } from './nbd-gate.ts';

/** The most names one list holds. */
export const MAX_ALLOWED_EXPORTS = 256;

/** One listener's allow list: see the file comment. */
export class NbdExportAccess {
  /** Names the listener's clients in messages, e.g. `VM uid 1879048192 on host host-1`. */
  readonly name: string;
  #allowed: ReadonlySet<string>;
  /**
   * Connections accepted through this listener until none of their requests runs any more, with
   * the export each selected (once it has) and whether it is still open.
   */
  readonly #members = new Map<NbdGateMember, { exportName?: string; open: boolean }>();

  constructor(name: string, allowed: Iterable<string>) {
    this.name = name;
    this.#allowed = checkedSet(allowed);
  }

  /** The allowed names, sorted. */
  get allowed(): string[] {
    return [...this.#allowed].sort();
  }

  /** Connections open now (in the handshake or in transmission). */
  get connectionCount(): number {
    let count = 0;
    for (const { open } of this.#members.values()) if (open) count++;
    return count;
  }

  /** Undefined when `exportName` may be selected; else the sentence the client gets. */
  check(exportName: string): string | undefined {
    if (this.#allowed.has(exportName)) return undefined;
    const shown = JSON.stringify(exportName.length > 80 ? `${exportName.slice(0, 80)}...` : exportName);
    return `Export ${shown} is not available on this socket: it serves the disks of ${this.name} only`;
  }

  /** Called by the server for every connection it accepts through this listener. */
  attach(member: NbdGateMember): void {
    const entry: { exportName?: string; open: boolean } = { open: true };
    this.#members.set(member, entry);
    void member.done.then(() => (entry.open = false));
    void member.settled.then(() => this.#members.delete(member));
  }

  /** Called by a connection when it enters transmission on `exportName` (already checked). */
  selected(member: NbdGateMember, exportName: string): void {
    const entry = this.#members.get(member);
    if (entry) entry.exportName = exportName;
  }

  /**
   * Replaces the list. Connections in transmission on an export no longer listed are cut at
   * once; resolves once none of their requests still runs on an export (a write already past
   * its checks lands, unanswered, before this resolves).
   */
  replace(allowed: Iterable<string>): Promise<void> {
    this.#allowed = checkedSet(allowed);
    // A closed connection whose last requests still run counts too: they must end before this resolves.
    const cut = [...this.#members].flatMap(([member, { exportName }]) => (exportName !== undefined && !this.#allowed.has(exportName) ? [member] : []));
    return this.#cut(cut);
  }

  /** Cuts every connection (the listener goes away); resolves once none has a request running. */
  closeAll(): Promise<void> {
    this.#allowed = new Set();
    return this.#cut([...this.#members.keys()]);
  }

  #cut(members: NbdGateMember[]): Promise<void> {
    for (const member of members) member.destroy();
    return Promise.all(members.map((member) => member.settled)).then(() => undefined);
  }
}

function checkedSet(names: Iterable<string>): Set<string> {
  const set = new Set<string>();
  for (const name of names) {
    if (typeof name !== 'string') throw new TypeError('An allowed export name must be a string');
    set.add(name);
  }
  if (set.size > MAX_ALLOWED_EXPORTS) throw new RangeError(`An allow list holds at most ${MAX_ALLOWED_EXPORTS} exports, not ${set.size}`);
  return set;
}
