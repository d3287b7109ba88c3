/**
 * Admission of one group of clients (say, every QEMU of one host, on a listener of their own):
 * I/O fencing for the NBD server. A gate has a generation and a fenced flag. Every connection
 * accepted through the gate is tagged with the generation current at accept, and every request
 * it sends is checked against the gate before anything runs: a connection whose generation is
 * no longer the gate's, or any connection while the gate is fenced, gets NBD_EPERM.
 *
 * Why EPERM: proto.md "Error values" lists EPERM ("Operation not permitted") and ESHUTDOWN
 * ("Server shutting down"); ESHUTDOWN describes a server that goes away, after which a client may
 * reasonably connect again and retry, while a fence is a standing refusal of this client that
 * lasts until someone lifts it. QEMU reports EPERM as "Operation not permitted".
 *
 * Protocol code: imports nothing from the application.
 */

/** What a gate needs of a connection (NbdConnection implements it). */
export interface NbdGateMember {
  /** Settles once the connection is closed. */
  readonly done: Promise<void>;
  /** Settles once the connection is closed and no request of it is still running on its export. */
  readonly settled: Promise<void>;
  /** Hard disconnect now. */
  destroy(): void;
}

/** The persisted part of a gate. */
export interface NbdGateState {
  generation: number;
  fenced: boolean;
}

/** One group's admission: see the file comment. */
export class NbdGate {
  /** Names the group in messages to clients, e.g. `host host-1`. */
  readonly name: string;
  #generation: number;
  #fenced: boolean;
  /** Connections open now. */
  readonly #open = new Set<NbdGateMember>();
  /** Connections closed with requests still running on an export. */
  readonly #closing = new Set<NbdGateMember>();
  #refusal: string;

  constructor(name: string, state: NbdGateState = { generation: 1, fenced: false }) {
    if (!Number.isSafeInteger(state.generation) || state.generation < 0) throw new RangeError(`Gate generation ${state.generation} is not a whole number`);
    this.name = name;
    this.#generation = state.generation;
    this.#fenced = state.fenced;
    this.#refusal = this.#refusalText();
  }

  /** The current generation: connections accepted now are tagged with it. */
  get generation(): number {
    return this.#generation;
  }

  get fenced(): boolean {
    return this.#fenced;
  }

  /** Connections open now. */
  get connectionCount(): number {
    return this.#open.size;
  }

  /** Connections closed whose last requests still run on an export. */
  get drainingCount(): number {
    return this.#closing.size;
  }

  /** The sentence clients get with a refusal (built once per change, never per request). */
  get refusal(): string {
    return this.#refusal;
  }

  /**
   * True when a connection tagged `generation` may still send requests. The I/O path calls this
   * for every request: two comparisons, no allocation.
   */
  admits(generation: number): boolean {
    return !this.#fenced && generation === this.#generation;
  }

  /** Called by the server for every connection it accepts through this gate. */
  attach(member: NbdGateMember): void {
    this.#open.add(member);
    let settled = false;
    void member.done.then(() => {
      if (this.#open.delete(member) && !settled) this.#closing.add(member);
    });
    void member.settled.then(() => {
      settled = true;
      this.#open.delete(member);
      this.#closing.delete(member);
    });
  }

  /**
   * Fences the group: raises the generation and marks the gate fenced (from this instant every
   * request of every connection is refused), then closes every connection at once. Resolves
   * once no request that passed its check before the fence is still running on an export, so a
   * caller that awaits it knows no write of this group can land afterwards. A request already
   * running completes (its write lands) but its reply is never sent: the client sees its
   * connection drop with the request unanswered, which proto.md clients must treat as unknown.
   */
  fence(): Promise<void> {
    this.#generation++;
    this.#fenced = true;
    this.#refusal = this.#refusalText();
    const cut = [...this.#open, ...this.#closing];
    for (const member of cut) member.destroy();
    return Promise.all(cut.map((member) => member.settled)).then(() => undefined);
  }

  /**
   * Lets new connections in again. The generation stays raised, so connections from before the
   * fence stay refused (they are closed anyway).
   */
  unfence(): void {
    this.#fenced = false;
    this.#refusal = this.#refusalText();
  }

  /**
   * Resolves once no closed connection has a request left running: what a caller waits on again
   * when an earlier `fence()` took longer than it was willing to wait.
   */
  quiesced(): Promise<void> {
    return Promise.all([...this.#closing].map((member) => member.settled)).then(() => undefined);
  }

  #refusalText(): string {
    return this.#fenced
      ? `I/O from ${this.name} is fenced (generation ${this.#generation}): this storage node refuses it until it is unfenced`
      : `This connection of ${this.name} predates its fence (now generation ${this.#generation}): connect again`;
  }
}
