/**
 * One client connection of the NBD server: the fixed newstyle handshake, then the transmission
 * phase with requests served concurrently and answered out of order (proto.md "Transmission":
 * "Replies need not be sent in the same order as requests").
 *
 * Protocol code: imports nothing from the application. Every rule enforced here cites
 * NetworkBlockDevice/nbd doc/proto.md. A hostile or broken client can only ever end its own
 * connection: every read of client-controlled lengths is bounded before anything is allocated.
 *
 * Size: why one file of ~900 lines: it is one state machine, and its phases share one connection's
 * private state. NBD_OPT_STARTTLS swaps the socket under both phases; the options haggled in the
 * handshake (structured replies, the selected meta context) decide how the transmission phase
 * validates requests and shapes every reply; the inflight counts tie request parsing to reply
 * sending (back-pressure, NBD_CMD_DISC and shutdown wait for the last reply).
 * Split into classes, those fields would have to be public and writable from other files, and
 * the order rules proto.md imposes (no plaintext byte after STARTTLS, no simple READ reply once
 * structured replies are on) could no longer be checked in one place. Instead the file is in
 * sections (input, handshake, transmission, replies), each method stays under ~65 lines, and only
 * the pieces without connection state (the buffer pool, the zero-fill fallback) sit outside the
 * class. Should it grow, those pure pieces and the option-data parsers are the first to move out.
 */
import type { Socket } from 'node:net';
import { TLSSocket, type SecureContext } from 'node:tls';
import { ByteQueue } from './byte-queue.ts';
import * as C from './nbd-constants.ts';
import type { NbdExport, NbdExportCatalog, NbdExtent } from './nbd-export.ts';
import type { NbdExportAccess } from './nbd-export-access.ts';
import type { NbdGate, NbdGateMember } from './nbd-gate.ts';

/** How a server that requires TLS upgrades connections (proto.md "TLS support"). */
export interface NbdTlsSettings {
  secureContext: SecureContext;
  /** Ask clients for a certificate and refuse those without one signed by the configured CA. */
  requireClientCertificate: boolean;
}

/**
 * What a listener that tells clients apart by their certificate lets one client do: the gate it
 * belongs to and the exports it may select, or a sentence saying why it is refused. Called once
 * the TLS handshake verified the certificate, with its subject's common name, before any option
 * is read over TLS (a TCP listener serving several VMs: each VM's certificate names it).
 */
export type NbdPeerAdmission = (commonName: string) => { gate?: NbdGate; access?: NbdExportAccess } | string;

/** Settings shared by all connections of one server (frozen by the server). */
export interface NbdConnectionSettings {
  catalog: NbdExportCatalog;
  maxPayloadBytes: number;
  maxOptionBytes: number;
  maxOptions: number;
  handshakeTimeoutMs: number;
  maxInflightRequests: number;
  maxInflightBytes: number;
  errnoOf: (error: unknown) => number;
  onEvent?: (event: NbdServerEvent) => void;
}

/** What a server reports about its connections (wire it to a logger). */
export type NbdServerEvent =
  | { type: 'connected'; connectionId: number; remote: string }
  | { type: 'tls-established'; connectionId: number; protocol: string; clientCertificateSubject?: string }
  | { type: 'export-selected'; connectionId: number; exportName: string; structuredReplies: boolean; tls: boolean }
  | { type: 'protocol-violation'; connectionId: number; reason: string }
  | { type: 'request-failed'; connectionId: number; command: number; errno: number; message: string }
  | { type: 'disconnected'; connectionId: number };

const REQUEST_HEADER_BYTES = 28;
const TWO_POW_32 = 0x1_0000_0000;
/** Offsets above 2^53 cannot be exact in a double; no export is that large. */
const MAX_SAFE_HIGH_WORD = 0x1f_ffff;
const BLOCK_STATUS_MAX_DESCRIPTORS = 1024;
const ZERO_FILL_CHUNK_BYTES = 1024 * 1024;
const BASE_ALLOCATION_CONTEXT_ID = 1;

const ALLOWED_FLAGS: Record<number, number> = {
  [C.NBD_CMD_READ]: C.NBD_CMD_FLAG_FUA | C.NBD_CMD_FLAG_DF,
  [C.NBD_CMD_WRITE]: C.NBD_CMD_FLAG_FUA,
  [C.NBD_CMD_DISC]: C.NBD_CMD_FLAG_FUA,
  [C.NBD_CMD_FLUSH]: C.NBD_CMD_FLAG_FUA,
  [C.NBD_CMD_TRIM]: C.NBD_CMD_FLAG_FUA,
  [C.NBD_CMD_CACHE]: C.NBD_CMD_FLAG_FUA,
  [C.NBD_CMD_WRITE_ZEROES]: C.NBD_CMD_FLAG_FUA | C.NBD_CMD_FLAG_NO_HOLE,
  [C.NBD_CMD_BLOCK_STATUS]: C.NBD_CMD_FLAG_FUA | C.NBD_CMD_FLAG_REQ_ONE,
};

let zeroChunk: Buffer | undefined;

/**
 * Recycled payload buffers of READ replies and WRITE requests (64 KiB and up): a 1 MiB request
 * otherwise costs a fresh allocation and garbage collection each time. Shared by all connections.
 */
const POOLED_MIN_BYTES = 64 * 1024;
const POOLED_PER_SIZE = 64;
const bufferPool = new Map<number, Buffer[]>();

function takeBuffer(length: number): Buffer {
  if (length >= POOLED_MIN_BYTES) {
    const recycled = bufferPool.get(length)?.pop();
    if (recycled) return recycled;
  }
  return Buffer.allocUnsafe(length);
}

function giveBuffer(buffer: Buffer): void {
  if (buffer.length < POOLED_MIN_BYTES || buffer.byteOffset !== 0) return;
  let list = bufferPool.get(buffer.length);
  if (!list) bufferPool.set(buffer.length, (list = []));
  if (list.length < POOLED_PER_SIZE) list.push(buffer);
}

class Disconnected extends Error {}

/** A request taken off the wire; `payload` only for WRITE. */
interface Request {
  flags: number;
  type: number;
  handleHigh: number;
  handleLow: number;
  offset: number;
  length: number;
  /** False when the 64-bit offset does not fit in a double (always out of bounds). */
  offsetValid: boolean;
  payload?: Buffer;
}

/** Serves one socket until it closes; `done` settles when it has. */
export class NbdConnection implements NbdGateMember {
  readonly id: number;
  readonly done: Promise<void>;
  /** Settles once the connection is closed and no request of it still runs on its export. */
  readonly settled: Promise<void>;
  /** The client's socket; after NBD_OPT_STARTTLS, the TLS socket over `#rawSocket`. */
  #socket: Socket;
  readonly #rawSocket: Socket;
  readonly #settings: NbdConnectionSettings;
  /** Set when this connection must upgrade to TLS before anything else (FORCEDTLS). */
  readonly #tls?: NbdTlsSettings;
  #tlsStarted = false;
  readonly #queue = new ByteQueue();
  #closed = false;
  #resolveDone!: () => void;
  #resolveSettled!: () => void;
  /** The gate this connection came through, and its generation at accept (see nbd-gate.ts). */
  #gate?: NbdGate;
  #gateGeneration: number;
  /** The allow list of the listener this connection came through, if it has one (nbd-export-access.ts). */
  #access?: NbdExportAccess;
  /** Set on a listener that admits clients by certificate: gate and access come from it after TLS. */
  readonly #admitPeer?: NbdPeerAdmission;
  /** True from STARTTLS until the peer's certificate was admitted (no option is handled meanwhile). */
  #peerPending = false;
  /** Why the peer's certificate was not admitted: every option then gets NBD_REP_ERR_POLICY. */
  #peerRefusal?: string;

  // Handshake phase.
  #waiter?: { n: number; resolve: (b: Buffer) => void; reject: (e: Error) => void };
  #handshakeTimer?: NodeJS.Timeout;
  #structuredReplies = false;
  #noZeroes = false;
  #metaContextExport?: string;
  #baseAllocationSelected = false;

  // Transmission phase.
  #transmitting = false;
  #export?: NbdExport;
  #exportSize = 0;
  #readOnly = false;
  #pendingWrite?: { request: Request; filled: number };
  #discardBytes = 0;
  #inflightRequests = 0;
  #inflightBytes = 0;
  #pausedForLimits = false;
  #disconnectRequested = false;
  #shuttingDown = false;
  #corked = false;
  readonly #headerBuffer = Buffer.allocUnsafe(REQUEST_HEADER_BYTES);

  /**
   * `tls`: this connection is FORCEDTLS (proto.md); without it, NOTLS. `gate`: every request is
   * checked against it, with the generation it has now. `access`: only the exports it allows can
   * be selected. `admitPeer`: gate and access come from the client's certificate instead (needs
   * `tls` with client certificates).
   */
  constructor(
    id: number,
    socket: Socket,
    settings: NbdConnectionSettings,
    tls?: NbdTlsSettings,
    gate?: NbdGate,
    access?: NbdExportAccess,
    admitPeer?: NbdPeerAdmission,
  ) {
    this.id = id;
    this.#socket = socket;
    this.#rawSocket = socket;
    this.#settings = settings;
    this.#tls = tls;
    this.#gate = gate;
    this.#gateGeneration = gate?.generation ?? 0;
    this.#access = access;
    this.#admitPeer = admitPeer;
    this.done = new Promise((resolve) => (this.#resolveDone = resolve));
    this.settled = new Promise((resolve) => (this.#resolveSettled = resolve));
    gate?.attach(this);
    access?.attach(this);
    socket.setNoDelay?.(true);
    this.#listen(socket);
    this.#emit({ type: 'connected', connectionId: id, remote: `${socket.remoteAddress ?? 'unix'}:${socket.remotePort ?? ''}` });
    this.#handshakeTimer = setTimeout(() => this.#violation('handshake not completed in time'), settings.handshakeTimeoutMs);
    this.#handshake().catch((error: unknown) => {
      if (!(error instanceof Disconnected)) this.#violation(`handshake failed: ${(error as Error).message}`);
    });
  }

  /**
   * Stops taking requests: new ones get ESHUTDOWN (proto.md "Terminating the transmission
   * phase": on shutdown the server SHOULD wait for inflight requests, then disconnect).
   */
  shutdown(): void {
    if (!this.#transmitting) {
      this.#socket.destroy();
      return;
    }
    this.#shuttingDown = true;
    this.#maybeFinish();
  }

  /**
   * Hard disconnect now: from this call on no request of this connection is started, also none
   * already buffered (the socket's own 'close' event would come a tick later).
   */
  destroy(): void {
    this.#teardown();
  }

  // ---------------------------------------------------------------- input

  readonly #onDataListener = (chunk: Buffer) => this.#onData(chunk);
  readonly #teardownListener = () => this.#teardown();
  readonly #drainListener = () => this.#maybeResume();

  #listen(socket: Socket): void {
    socket.on('data', this.#onDataListener);
    socket.on('error', this.#teardownListener);
    socket.on('close', this.#teardownListener);
    socket.on('drain', this.#drainListener);
  }

  #onData(chunk: Buffer): void {
    if (this.#closed || this.#disconnectRequested) return;
    this.#queue.push(chunk);
    if (!this.#transmitting) {
      const waiter = this.#waiter;
      if (waiter && this.#queue.length >= waiter.n) {
        this.#waiter = undefined;
        waiter.resolve(this.#queue.take(waiter.n));
      }
      return;
    }
    this.#pump();
  }

  #read(n: number): Promise<Buffer> {
    if (this.#closed) return Promise.reject(new Disconnected());
    if (this.#queue.length >= n) return Promise.resolve(this.#queue.take(n));
    return new Promise((resolve, reject) => (this.#waiter = { n, resolve, reject }));
  }

  #teardown(): void {
    if (this.#closed) return;
    this.#closed = true;
    clearTimeout(this.#handshakeTimer);
    this.#queue.clear();
    this.#waiter?.reject(new Disconnected());
    this.#waiter = undefined;
    this.#socket.destroy();
    this.#rawSocket.destroy();
    this.#emit({ type: 'disconnected', connectionId: this.id });
    this.#resolveDone();
    if (this.#inflightRequests === 0) this.#resolveSettled();
  }

  /** proto.md: on a violation of a mandatory condition a party MAY initiate a hard disconnect. */
  #violation(reason: string): void {
    if (this.#closed) return;
    this.#emit({ type: 'protocol-violation', connectionId: this.id, reason });
    this.#teardown();
  }

  #emit(event: NbdServerEvent): void {
    try {
      this.#settings.onEvent?.(event);
    } catch {
      // A failing listener must not take a connection down.
    }
  }

  /** Sends `data` after `header`, then recycles `data` once the socket is done with it. */
  #sendPayload(header: Buffer, data: Buffer): void {
    if (this.#closed) {
      giveBuffer(data);
      return;
    }
    this.#send(header);
    this.#socket.write(data, () => giveBuffer(data));
  }

  #send(...buffers: Buffer[]): void {
    if (this.#closed) return;
    if (!this.#corked) {
      // Batch every reply produced in this tick into one writev.
      this.#corked = true;
      this.#socket.cork();
      process.nextTick(() => {
        this.#corked = false;
        this.#socket.uncork();
      });
    }
    for (const buffer of buffers) this.#socket.write(buffer);
  }

  // ---------------------------------------------------------------- handshake

  async #handshake(): Promise<void> {
    const greeting = Buffer.allocUnsafe(18);
    greeting.writeBigUInt64BE(C.NBD_INIT_PASSWD, 0);
    greeting.writeBigUInt64BE(C.NBD_IHAVEOPT, 8);
    greeting.writeUInt16BE(C.NBD_FLAG_FIXED_NEWSTYLE | C.NBD_FLAG_NO_ZEROES, 16);
    this.#send(greeting);

    const clientFlags = (await this.#read(4)).readUInt32BE(0);
    // proto.md "Client flags": the server MUST drop the connection if the client sets an unknown flag.
    if ((clientFlags & ~(C.NBD_FLAG_C_FIXED_NEWSTYLE | C.NBD_FLAG_C_NO_ZEROES)) !== 0) {
      this.#violation(`unknown client flags 0x${clientFlags.toString(16)}`);
      return;
    }
    this.#noZeroes = (clientFlags & C.NBD_FLAG_C_NO_ZEROES) !== 0;
    if (this.#tls && (clientFlags & C.NBD_FLAG_C_FIXED_NEWSTYLE) === 0) {
      // proto.md "TLS support": without fixed newstyle the server MUST operate in NOTLS mode,
      // which this server does not offer once TLS is configured.
      this.#violation('TLS is required but the client does not speak fixed newstyle');
      return;
    }

    for (let count = 0; ; count++) {
      if (count >= this.#settings.maxOptions) {
        // proto.md: a server MAY hard-disconnect a client whose behaviour is a denial of service.
        this.#violation(`more than ${this.#settings.maxOptions} options`);
        return;
      }
      const header = await this.#read(16);
      if (header.readBigUInt64BE(0) !== C.NBD_IHAVEOPT) {
        this.#violation('wrong option magic');
        return;
      }
      const option = header.readUInt32BE(8);
      const length = header.readUInt32BE(12);
      if (length > this.#settings.maxOptionBytes) {
        this.#violation(`option ${option} carries ${length} bytes`);
        return;
      }
      const data = length === 0 ? Buffer.alloc(0) : Buffer.from(await this.#read(length));
      if (this.#closed) return;
      const selected = this.#handleOption(option, data);
      if (selected === 'abort') {
        this.#socket.end();
        return;
      }
      if (selected) return;
    }
  }

  /** Answers one option; true when transmission begins, 'abort' on NBD_OPT_ABORT. */
  #handleOption(option: number, data: Buffer): boolean | 'abort' {
    if (this.#tls && !this.#tlsStarted) {
      // proto.md FORCEDTLS: every option other than STARTTLS and ABORT gets NBD_REP_ERR_TLS_REQD;
      // NBD_OPT_EXPORT_NAME cannot fail, so the server MUST terminate the session.
      if (option === C.NBD_OPT_EXPORT_NAME) {
        this.#violation('NBD_OPT_EXPORT_NAME before TLS on a server that requires TLS');
        return true;
      }
      if (option !== C.NBD_OPT_STARTTLS && option !== C.NBD_OPT_ABORT) {
        return this.#optError(option, C.NBD_REP_ERR_TLS_REQD, 'This server requires TLS: send NBD_OPT_STARTTLS first');
      }
    }
    if (this.#peerPending) {
      // Node emits 'secure' before any data of the TLS socket, so this is a guard, not a path.
      this.#violation('an option before the client certificate was admitted');
      return 'abort';
    }
    if (this.#peerRefusal !== undefined && option !== C.NBD_OPT_ABORT) {
      if (option === C.NBD_OPT_EXPORT_NAME) {
        this.#violation(this.#peerRefusal);
        return true;
      }
      return this.#optError(option, C.NBD_REP_ERR_POLICY, this.#peerRefusal);
    }
    const gate = this.#gate;
    if (gate !== undefined && !gate.admits(this.#gateGeneration) && option !== C.NBD_OPT_ABORT) {
      // A fenced group may not select an export. The error carries the reason, which clients
      // show (QEMU: "server reported: ..."); NBD_OPT_EXPORT_NAME cannot fail, so that one ends
      // the session (proto.md NBD_OPT_EXPORT_NAME).
      if (option === C.NBD_OPT_EXPORT_NAME) {
        this.#violation(`NBD_OPT_EXPORT_NAME while ${gate.name} is fenced`);
        return true;
      }
      return this.#optError(option, C.NBD_REP_ERR_POLICY, gate.refusal);
    }
    switch (option) {
      case C.NBD_OPT_EXPORT_NAME:
        return this.#optExportName(data);
      case C.NBD_OPT_ABORT:
        // proto.md NBD_OPT_ABORT: the server MUST reply with NBD_REP_ACK.
        this.#optReply(option, C.NBD_REP_ACK);
        return 'abort';
      case C.NBD_OPT_LIST:
        if (data.length !== 0) return this.#optError(option, C.NBD_REP_ERR_INVALID, 'NBD_OPT_LIST takes no data');
        for (const name of this.#settings.catalog.names()) {
          if (this.#access?.check(name) !== undefined) continue;
          const nameBytes = Buffer.from(name, 'utf8');
          const payload = Buffer.allocUnsafe(4 + nameBytes.length);
          payload.writeUInt32BE(nameBytes.length, 0);
          nameBytes.copy(payload, 4);
          this.#optReply(option, C.NBD_REP_SERVER, payload);
        }
        this.#optReply(option, C.NBD_REP_ACK);
        return false;
      case C.NBD_OPT_STARTTLS:
        return this.#optStartTls(option, data);
      case C.NBD_OPT_INFO:
      case C.NBD_OPT_GO:
        return this.#optInfoOrGo(option, data);
      case C.NBD_OPT_STRUCTURED_REPLY:
        // proto.md: the server SHOULD reject a request that includes data with NBD_REP_ERR_INVALID.
        if (data.length !== 0) return this.#optError(option, C.NBD_REP_ERR_INVALID, 'NBD_OPT_STRUCTURED_REPLY takes no data');
        this.#structuredReplies = true;
        this.#optReply(option, C.NBD_REP_ACK);
        return false;
      case C.NBD_OPT_LIST_META_CONTEXT:
      case C.NBD_OPT_SET_META_CONTEXT:
        return this.#optMetaContext(option, data);
      default:
        return this.#optError(option, C.NBD_REP_ERR_UNSUP, `Option ${option} is not supported`);
    }
  }

  #optStartTls(option: number, data: Buffer): false {
    // proto.md "NOTLS mode": reply NBD_REP_ERR_UNSUP or NBD_REP_ERR_POLICY.
    if (!this.#tls) return this.#optError(option, C.NBD_REP_ERR_POLICY, 'TLS is not enabled on this server');
    // proto.md FORCEDTLS: STARTTLS once TLS has been negotiated MUST get NBD_REP_ERR_INVALID.
    if (this.#tlsStarted) return this.#optError(option, C.NBD_REP_ERR_INVALID, 'TLS is already running');
    if (data.length !== 0) return this.#optError(option, C.NBD_REP_ERR_INVALID, 'NBD_OPT_STARTTLS takes no data');
    if (this.#queue.length > 0) {
      // The client MUST wait for our reply before its TLS handshake, so bytes already here were
      // sent in plaintext after STARTTLS: never process them as if they came over TLS (the
      // STARTTLS command-injection attack on mail servers).
      this.#violation('plaintext bytes after NBD_OPT_STARTTLS');
      return false;
    }
    this.#optReply(option, C.NBD_REP_ACK);
    this.#startTls(this.#tls);
    return false;
  }

  /**
   * Upgrades the socket to TLS in the same turn of the event loop as the ACK, so that no byte
   * of the client's handshake is read in plaintext. The ACK is flushed to the socket first.
   */
  #startTls(tls: NbdTlsSettings): void {
    const plain = this.#socket;
    if (this.#corked) {
      this.#corked = false;
      plain.uncork();
    }
    plain.off('data', this.#onDataListener);
    plain.off('drain', this.#drainListener);
    const secure = new TLSSocket(plain, {
      isServer: true,
      secureContext: tls.secureContext,
      requestCert: tls.requireClientCertificate,
      rejectUnauthorized: tls.requireClientCertificate,
    });
    this.#socket = secure;
    // From here every byte comes through TLS: a failed handshake errors the socket (teardown).
    this.#tlsStarted = true;
    this.#peerPending = this.#admitPeer !== undefined;
    this.#listen(secure);
    secure.once('secure', () => {
      const subject = tls.requireClientCertificate ? secure.getPeerCertificate()?.subject?.CN : undefined;
      this.#emit({
        type: 'tls-established',
        connectionId: this.id,
        protocol: secure.getProtocol() ?? 'unknown',
        clientCertificateSubject: typeof subject === 'string' ? subject : undefined,
      });
      if (this.#admitPeer) this.#admit(this.#admitPeer, typeof subject === 'string' ? subject : '');
    });
  }

  /** Takes the gate and allow list of the client its certificate names, or ends the connection. */
  #admit(admitPeer: NbdPeerAdmission, commonName: string): void {
    let admission: ReturnType<NbdPeerAdmission>;
    try {
      admission = admitPeer(commonName);
    } catch (error) {
      admission = `the admission check failed: ${(error as Error).message}`;
    }
    if (typeof admission === 'string') {
      // Every option is answered with the reason (QEMU shows "server reported: ..."), as a fence's.
      this.#peerRefusal = `The client certificate ${JSON.stringify(commonName.slice(0, 80))} is refused: ${admission}`;
      this.#emit({ type: 'protocol-violation', connectionId: this.id, reason: this.#peerRefusal });
      this.#peerPending = false;
      return;
    }
    this.#gate = admission.gate;
    this.#gateGeneration = admission.gate?.generation ?? 0;
    this.#access = admission.access;
    admission.gate?.attach(this);
    admission.access?.attach(this);
    this.#peerPending = false;
  }

  #optReply(option: number, type: number, payload?: Buffer): void {
    const header = Buffer.allocUnsafe(20);
    header.writeBigUInt64BE(C.NBD_REP_MAGIC, 0);
    header.writeUInt32BE(option, 8);
    header.writeUInt32BE(type, 12);
    header.writeUInt32BE(payload?.length ?? 0, 16);
    if (payload && payload.length > 0) this.#send(header, payload);
    else this.#send(header);
  }

  /** proto.md: error replies MAY carry a message suitable for display to the user. */
  #optError(option: number, type: number, message: string): false {
    this.#optReply(option, type, Buffer.from(message, 'utf8'));
    return false;
  }

  #transmissionFlags(exp: NbdExport): number {
    let flags = C.NBD_FLAG_HAS_FLAGS | C.NBD_FLAG_SEND_FLUSH | C.NBD_FLAG_SEND_FUA | C.NBD_FLAG_SEND_TRIM | C.NBD_FLAG_SEND_WRITE_ZEROES;
    // proto.md NBD_FLAG_SEND_DF: MUST be left clear unless structured replies were negotiated.
    if (this.#structuredReplies) flags |= C.NBD_FLAG_SEND_DF;
    if (exp.readOnly) flags |= C.NBD_FLAG_READ_ONLY;
    if (exp.multiConn) flags |= C.NBD_FLAG_CAN_MULTI_CONN;
    return flags;
  }

  #optExportName(data: Buffer): boolean {
    const name = data.toString('utf8');
    const exp = data.length <= C.MAX_STRING_BYTES ? this.#find(name) : undefined;
    if (!exp) {
      // proto.md NBD_OPT_EXPORT_NAME: if the export does not exist the server MUST terminate the session.
      this.#violation(`unknown or refused export ${JSON.stringify(name.slice(0, 64))} via NBD_OPT_EXPORT_NAME`);
      return true;
    }
    const reply = Buffer.alloc(this.#noZeroes ? 10 : 134);
    const size = exp.sizeBytes;
    reply.writeUInt32BE(Math.floor(size / TWO_POW_32), 0);
    reply.writeUInt32BE(size % TWO_POW_32, 4);
    reply.writeUInt16BE(this.#transmissionFlags(exp), 8);
    this.#send(reply);
    // Meta contexts only apply to the export named when they were set (proto.md NBD_CMD_BLOCK_STATUS).
    if (this.#metaContextExport !== name) this.#baseAllocationSelected = false;
    this.#enterTransmission(name, exp);
    return true;
  }

  #optInfoOrGo(option: number, data: Buffer): boolean {
    // proto.md NBD_OPT_INFO: 32-bit name length (MUST be no larger than the option length - 6),
    // name, 16-bit count of information requests, 16 bits each.
    if (data.length < 6) return this.#optError(option, C.NBD_REP_ERR_INVALID, 'Option data too short');
    const nameLength = data.readUInt32BE(0);
    if (nameLength > data.length - 6) return this.#optError(option, C.NBD_REP_ERR_INVALID, 'Export name overruns the option');
    if (nameLength > C.MAX_STRING_BYTES) return this.#optError(option, C.NBD_REP_ERR_INVALID, 'Export name longer than 4096 bytes');
    const name = data.toString('utf8', 4, 4 + nameLength);
    const infoCount = data.readUInt16BE(4 + nameLength);
    if (data.length !== 6 + nameLength + 2 * infoCount) {
      return this.#optError(option, C.NBD_REP_ERR_INVALID, 'Information request list does not match the option length');
    }
    const requested = new Set<number>();
    for (let i = 0; i < infoCount; i++) requested.add(data.readUInt16BE(6 + nameLength + 2 * i));

    const refused = this.#access?.check(name);
    if (refused !== undefined) return this.#optError(option, C.NBD_REP_ERR_UNKNOWN, refused);
    const exp = this.#settings.catalog.get(name);
    if (!exp) return this.#optError(option, C.NBD_REP_ERR_UNKNOWN, `No export named ${JSON.stringify(name)}`);

    const info = Buffer.allocUnsafe(12);
    info.writeUInt16BE(C.NBD_INFO_EXPORT, 0);
    const size = exp.sizeBytes;
    info.writeUInt32BE(Math.floor(size / TWO_POW_32), 2);
    info.writeUInt32BE(size % TWO_POW_32, 6);
    info.writeUInt16BE(this.#transmissionFlags(exp), 10);
    this.#optReply(option, C.NBD_REP_INFO, info);
    // Sent unasked too (proto.md allows unrequested info): default minimum, 4 KiB preferred.
    const blockSize = Buffer.allocUnsafe(14);
    blockSize.writeUInt16BE(C.NBD_INFO_BLOCK_SIZE, 0);
    blockSize.writeUInt32BE(1, 2);
    blockSize.writeUInt32BE(4096, 6);
    blockSize.writeUInt32BE(this.#settings.maxPayloadBytes, 10);
    this.#optReply(option, C.NBD_REP_INFO, blockSize);
    if (requested.has(C.NBD_INFO_NAME)) {
      const nameBytes = Buffer.from(name, 'utf8');
      const payload = Buffer.allocUnsafe(2 + nameBytes.length);
      payload.writeUInt16BE(C.NBD_INFO_NAME, 0);
      nameBytes.copy(payload, 2);
      this.#optReply(option, C.NBD_REP_INFO, payload);
    }
    if (requested.has(C.NBD_INFO_DESCRIPTION) && exp.description) {
      const text = Buffer.from(exp.description.slice(0, 1024), 'utf8');
      const payload = Buffer.allocUnsafe(2 + text.length);
      payload.writeUInt16BE(C.NBD_INFO_DESCRIPTION, 0);
      text.copy(payload, 2);
      this.#optReply(option, C.NBD_REP_INFO, payload);
    }
    this.#optReply(option, C.NBD_REP_ACK);
    if (option === C.NBD_OPT_INFO) return false;
    if (this.#metaContextExport !== name) this.#baseAllocationSelected = false;
    this.#enterTransmission(name, exp);
    return true;
  }

  #optMetaContext(option: number, data: Buffer): false {
    // proto.md NBD_OPT_SET_META_CONTEXT: MUST NOT be requested before structured replies; the
    // server SHOULD send NBD_REP_ERR_INVALID.
    if (!this.#structuredReplies) {
      if (option === C.NBD_OPT_SET_META_CONTEXT) this.#baseAllocationSelected = false;
      return this.#optError(option, C.NBD_REP_ERR_INVALID, 'Negotiate structured replies first');
    }
    // Data: 32-bit name length, name, 32-bit query count, queries (32-bit length + string).
    // proto.md: a query length reading beyond the option MUST fail with NBD_REP_ERR_INVALID.
    const invalid = (message: string): false => {
      if (option === C.NBD_OPT_SET_META_CONTEXT) this.#baseAllocationSelected = false;
      return this.#optError(option, C.NBD_REP_ERR_INVALID, message);
    };
    if (data.length < 8) return invalid('Option data too short');
    const nameLength = data.readUInt32BE(0);
    if (nameLength > data.length - 8 || nameLength > C.MAX_STRING_BYTES) return invalid('Export name overruns the option');
    const name = data.toString('utf8', 4, 4 + nameLength);
    const queryCount = data.readUInt32BE(4 + nameLength);
    let position = 8 + nameLength;
    const queries: string[] = [];
    for (let i = 0; i < queryCount; i++) {
      if (position + 4 > data.length) return invalid('Query list overruns the option');
      const queryLength = data.readUInt32BE(position);
      position += 4;
      if (queryLength > data.length - position || queryLength > C.MAX_STRING_BYTES) return invalid('Query overruns the option');
      queries.push(data.toString('utf8', position, position + queryLength));
      position += queryLength;
    }
    if (position !== data.length) return invalid('Trailing bytes after the queries');
    if (!this.#find(name)) {
      if (option === C.NBD_OPT_SET_META_CONTEXT) this.#baseAllocationSelected = false;
      return this.#optError(option, C.NBD_REP_ERR_UNKNOWN, this.#access?.check(name) ?? `No export named ${JSON.stringify(name)}`);
    }
    let matches = false;
    for (const query of queries) {
      const colon = query.indexOf(':');
      if (colon <= 0) return invalid(`Query ${JSON.stringify(query)} lacks a namespace`);
      // proto.md: the server MUST ignore queries of an unknown namespace.
      if (query === C.BASE_ALLOCATION) matches = true;
      else if (option === C.NBD_OPT_LIST_META_CONTEXT && query === 'base:') matches = true;
    }
    // proto.md LIST: zero queries lists every context; SET: zero queries selects none.
    if (option === C.NBD_OPT_LIST_META_CONTEXT && queries.length === 0) matches = true;
    if (matches) {
      const nameBytes = Buffer.from(C.BASE_ALLOCATION, 'utf8');
      const payload = Buffer.allocUnsafe(4 + nameBytes.length);
      // proto.md: in replies to LIST the context id is reserved and SHOULD be zero.
      payload.writeUInt32BE(option === C.NBD_OPT_SET_META_CONTEXT ? BASE_ALLOCATION_CONTEXT_ID : 0, 0);
      nameBytes.copy(payload, 4);
      this.#optReply(option, C.NBD_REP_META_CONTEXT, payload);
    }
    if (option === C.NBD_OPT_SET_META_CONTEXT) {
      this.#metaContextExport = name;
      this.#baseAllocationSelected = matches;
    }
    this.#optReply(option, C.NBD_REP_ACK);
    return false;
  }

  /** The export `name`, if it exists and this connection's listener allows it. */
  #find(name: string): NbdExport | undefined {
    return this.#access?.check(name) === undefined ? this.#settings.catalog.get(name) : undefined;
  }

  #enterTransmission(name: string, exp: NbdExport): void {
    clearTimeout(this.#handshakeTimer);
    this.#access?.selected(this, name);
    this.#export = exp;
    this.#exportSize = exp.sizeBytes;
    this.#readOnly = exp.readOnly === true;
    this.#transmitting = true;
    this.#emit({ type: 'export-selected', connectionId: this.id, exportName: name, structuredReplies: this.#structuredReplies, tls: this.#tlsStarted });
    if (this.#queue.length > 0) setImmediate(() => this.#pump());
  }

  // ---------------------------------------------------------------- transmission

  /** Parses every complete request in the queue and starts it. */
  #pump(): void {
    while (!this.#closed && !this.#disconnectRequested) {
      if (this.#discardBytes > 0) {
        const n = Math.min(this.#discardBytes, this.#queue.length);
        this.#queue.skip(n);
        this.#discardBytes -= n;
        if (this.#discardBytes > 0) return;
        continue;
      }
      const pending = this.#pendingWrite;
      if (pending) {
        const payload = pending.request.payload!;
        const n = Math.min(payload.length - pending.filled, this.#queue.length);
        this.#queue.copyInto(payload, pending.filled, n);
        pending.filled += n;
        if (pending.filled < payload.length) return;
        this.#pendingWrite = undefined;
        this.#start(pending.request);
        continue;
      }
      if (this.#pausedForLimits) return;
      if (this.#queue.length < REQUEST_HEADER_BYTES) return;
      const header = this.#headerBuffer;
      this.#queue.copyInto(header, 0, REQUEST_HEADER_BYTES);
      // proto.md "Request message": 32-bit magic, 16-bit flags, 16-bit type, 64-bit handle,
      // 64-bit offset, 32-bit length. A wrong magic means the stream cannot be resynchronised.
      if (header.readUInt32BE(0) !== C.NBD_REQUEST_MAGIC) {
        this.#violation('wrong request magic');
        return;
      }
      const offsetHigh = header.readUInt32BE(16);
      const request: Request = {
        flags: header.readUInt16BE(4),
        type: header.readUInt16BE(6),
        handleHigh: header.readUInt32BE(8),
        handleLow: header.readUInt32BE(12),
        offset: offsetHigh * TWO_POW_32 + header.readUInt32BE(20),
        offsetValid: offsetHigh <= MAX_SAFE_HIGH_WORD,
        length: header.readUInt32BE(24),
      };
      if (request.type === C.NBD_CMD_WRITE) {
        if (request.length > this.#settings.maxPayloadBytes) {
          // proto.md "Size constraints": the client MUST NOT exceed the maximum payload. The bytes
          // are skipped as they stream in (nothing is buffered), and the write fails with EINVAL.
          this.#discardBytes = request.length;
          this.#inflightRequests++;
          this.#replyError(request, C.NBD_EINVAL, `Write of ${request.length} bytes exceeds the maximum payload of ${this.#settings.maxPayloadBytes}`);
          continue;
        }
        request.payload = takeBuffer(request.length);
        this.#pendingWrite = { request, filled: 0 };
        continue;
      }
      if (request.type === C.NBD_CMD_DISC) {
        // proto.md NBD_CMD_DISC: handle all outstanding requests, then close; no reply.
        this.#disconnectRequested = true;
        this.#queue.clear();
        this.#maybeFinish();
        return;
      }
      this.#start(request);
    }
  }

  #start(request: Request): void {
    this.#inflightRequests++;
    const bytes = request.type === C.NBD_CMD_READ || request.type === C.NBD_CMD_WRITE ? request.length : 0;
    this.#inflightBytes += bytes;
    if (this.#inflightRequests >= this.#settings.maxInflightRequests || this.#inflightBytes >= this.#settings.maxInflightBytes) {
      this.#pausedForLimits = true;
      this.#socket.pause();
    }
    const failure = this.#validate(request);
    if (failure) {
      this.#inflightBytes -= bytes;
      this.#replyError(request, failure[0], failure[1]);
      return;
    }
    this.#execute(request).then(
      () => {
        this.#inflightBytes -= bytes;
      },
      (error: unknown) => {
        this.#inflightBytes -= bytes;
        const errno = this.#settings.errnoOf(error);
        const message = error instanceof Error ? error.message : String(error);
        this.#emit({ type: 'request-failed', connectionId: this.id, command: request.type, errno, message });
        this.#replyError(request, errno, message);
      },
    );
  }

  /** The wire error for a request that must not run, or undefined. */
  #validate(request: Request): [number, string] | undefined {
    // I/O fencing (nbd-gate.ts): two comparisons per request; nothing runs once the gate moved on.
    const gate = this.#gate;
    if (gate !== undefined && !gate.admits(this.#gateGeneration)) return [C.NBD_EPERM, gate.refusal];
    if (this.#shuttingDown) return [C.NBD_ESHUTDOWN, 'Server is shutting down'];
    const allowed = ALLOWED_FLAGS[request.type];
    // proto.md "Error values": the server SHOULD return EINVAL for an unknown command, an unknown
    // command flag, or a flag not documented for the given command.
    if (allowed === undefined) return [C.NBD_EINVAL, `Unknown command ${request.type}`];
    const flagsAllowed = request.type === C.NBD_CMD_READ && !this.#structuredReplies ? allowed & ~C.NBD_CMD_FLAG_DF : allowed;
    if ((request.flags & ~flagsAllowed) !== 0) return [C.NBD_EINVAL, `Flags 0x${request.flags.toString(16)} not valid for command ${request.type}`];
    const end = request.offset + request.length;
    const inBounds = request.offsetValid && end <= this.#exportSize;
    switch (request.type) {
      case C.NBD_CMD_READ:
        // proto.md NBD_CMD_READ: a structured server may reject large reads with EOVERFLOW; with
        // simple replies a length above the maximum payload fails.
        if (request.length > this.#settings.maxPayloadBytes) {
          return [this.#structuredReplies ? C.NBD_EOVERFLOW : C.NBD_EINVAL, `Read of ${request.length} bytes exceeds the maximum payload`];
        }
        // proto.md "Error values": EINVAL for a read beyond the size of the device.
        if (!inBounds) return [C.NBD_EINVAL, 'Read beyond the end of the export'];
        return undefined;
      case C.NBD_CMD_WRITE:
      case C.NBD_CMD_WRITE_ZEROES:
        // proto.md: EPERM for writes on a read-only export, ENOSPC for writes beyond the end.
        if (this.#readOnly) return [C.NBD_EPERM, 'Export is read-only'];
        if (!inBounds) return [C.NBD_ENOSPC, 'Write beyond the end of the export'];
        return undefined;
      case C.NBD_CMD_TRIM:
        if (this.#readOnly) return [C.NBD_EPERM, 'Export is read-only'];
        if (!inBounds) return [C.NBD_EINVAL, 'Trim beyond the end of the export'];
        return undefined;
      case C.NBD_CMD_FLUSH:
        // proto.md NBD_CMD_FLUSH: offset and length are reserved and MUST be zero.
        if (request.offset !== 0 || request.length !== 0) return [C.NBD_EINVAL, 'Flush with non-zero offset or length'];
        return undefined;
      case C.NBD_CMD_CACHE:
        if (!inBounds) return [C.NBD_EINVAL, 'Cache beyond the end of the export'];
        return undefined;
      case C.NBD_CMD_BLOCK_STATUS:
        // proto.md: BLOCK_STATUS needs structured replies and a selected context (else EINVAL),
        // and SHOULD fail with EINVAL beyond the size of the device.
        if (!this.#structuredReplies || !this.#baseAllocationSelected) return [C.NBD_EINVAL, 'No metadata context selected'];
        if (request.length === 0) return [C.NBD_EINVAL, 'Block status of zero bytes'];
        if (!inBounds) return [C.NBD_EINVAL, 'Block status beyond the end of the export'];
        return undefined;
      default:
        return [C.NBD_EINVAL, `Unknown command ${request.type}`];
    }
  }

  async #execute(request: Request): Promise<void> {
    const exp = this.#export!;
    const fua = (request.flags & C.NBD_CMD_FLAG_FUA) !== 0;
    switch (request.type) {
      case C.NBD_CMD_READ: {
        const data = takeBuffer(request.length);
        try {
          if (request.length > 0) await exp.read(data, request.offset);
        } catch (error) {
          giveBuffer(data);
          throw error;
        }
        this.#replyRead(request, data);
        return;
      }
      case C.NBD_CMD_WRITE:
        try {
          if (request.length > 0) await exp.write(request.payload!, request.offset, { fua });
        } finally {
          // The export contract: it keeps no reference to `data` once its promise settles.
          giveBuffer(request.payload!);
          request.payload = undefined;
        }
        this.#replyOk(request);
        return;
      case C.NBD_CMD_FLUSH:
        await exp.flush();
        this.#replyOk(request);
        return;
      case C.NBD_CMD_TRIM:
        if (request.length > 0 && exp.trim) await exp.trim(request.offset, request.length, { fua });
        this.#replyOk(request);
        return;
      case C.NBD_CMD_WRITE_ZEROES: {
        const noHole = (request.flags & C.NBD_CMD_FLAG_NO_HOLE) !== 0;
        if (request.length > 0) {
          if (exp.writeZeroes) await exp.writeZeroes(request.offset, request.length, { fua, noHole });
          else await writeZeroBuffers(exp, request.offset, request.length, fua);
        }
        this.#replyOk(request);
        return;
      }
      case C.NBD_CMD_CACHE:
        // Not advertised, but clients that send it anyway get a harmless success (proto.md CACHE).
        this.#replyOk(request);
        return;
      case C.NBD_CMD_BLOCK_STATUS: {
        const extents = exp.blockStatus ? await exp.blockStatus(request.offset, request.length) : [{ lengthBytes: request.length, hole: false, zero: false }];
        this.#replyBlockStatus(request, extents);
        return;
      }
    }
  }

  // ---------------------------------------------------------------- replies

  #finishRequest(): void {
    this.#inflightRequests--;
    if (this.#closed && this.#inflightRequests === 0) this.#resolveSettled();
    this.#maybeResume();
    this.#maybeFinish();
  }

  #maybeResume(): void {
    if (!this.#pausedForLimits || this.#closed) return;
    if (this.#inflightRequests >= this.#settings.maxInflightRequests || this.#inflightBytes >= this.#settings.maxInflightBytes) return;
    if (this.#socket.writableLength > this.#settings.maxInflightBytes) return;
    this.#pausedForLimits = false;
    this.#socket.resume();
    this.#pump();
  }

  #maybeFinish(): void {
    if ((this.#disconnectRequested || this.#shuttingDown) && this.#inflightRequests === 0 && !this.#pendingWrite) {
      this.#socket.end();
    }
  }

  #simpleHeader(request: Request, errno: number): Buffer {
    const header = Buffer.allocUnsafe(16);
    header.writeUInt32BE(C.NBD_SIMPLE_REPLY_MAGIC, 0);
    header.writeUInt32BE(errno, 4);
    header.writeUInt32BE(request.handleHigh, 8);
    header.writeUInt32BE(request.handleLow, 12);
    return header;
  }

  #structuredHeader(request: Request, flags: number, type: number, length: number, extra = 0): Buffer {
    const header = Buffer.allocUnsafe(20 + extra);
    header.writeUInt32BE(C.NBD_STRUCTURED_REPLY_MAGIC, 0);
    header.writeUInt16BE(flags, 4);
    header.writeUInt16BE(type, 6);
    header.writeUInt32BE(request.handleHigh, 8);
    header.writeUInt32BE(request.handleLow, 12);
    header.writeUInt32BE(length, 16);
    return header;
  }

  #replyOk(request: Request): void {
    // proto.md: with structured replies a simple reply MAY still answer anything but READ.
    this.#send(this.#simpleHeader(request, 0));
    this.#finishRequest();
  }

  #replyRead(request: Request, data: Buffer): void {
    if (!this.#structuredReplies) {
      this.#sendPayload(this.#simpleHeader(request, 0), data);
    } else if (data.length === 0) {
      this.#send(this.#structuredHeader(request, C.NBD_REPLY_FLAG_DONE, C.NBD_REPLY_TYPE_NONE, 0));
    } else {
      // One NBD_REPLY_TYPE_OFFSET_DATA chunk flagged DONE: the data is complete before sending,
      // so no error can follow (proto.md), and NBD_CMD_FLAG_DF is honoured by construction.
      const header = this.#structuredHeader(request, C.NBD_REPLY_FLAG_DONE, C.NBD_REPLY_TYPE_OFFSET_DATA, 8 + data.length, 8);
      header.writeUInt32BE(Math.floor(request.offset / TWO_POW_32), 20);
      header.writeUInt32BE(request.offset % TWO_POW_32, 24);
      this.#sendPayload(header, data);
    }
    this.#finishRequest();
  }

  #replyError(request: Request, errno: number, message: string): void {
    if (this.#structuredReplies) {
      // proto.md: the server SHOULD prefer structured errors, which carry a message; a READ MUST
      // NOT get a simple reply once structured replies are negotiated.
      const text = Buffer.from(message.slice(0, 200), 'utf8');
      const header = this.#structuredHeader(request, C.NBD_REPLY_FLAG_DONE, C.NBD_REPLY_TYPE_ERROR, 6 + text.length, 6);
      header.writeUInt32BE(errno, 20);
      header.writeUInt16BE(text.length, 24);
      this.#send(header, text);
    } else {
      // proto.md simple reply: on error no payload follows, not even for READ.
      this.#send(this.#simpleHeader(request, errno));
    }
    this.#finishRequest();
  }

  #replyBlockStatus(request: Request, extents: NbdExtent[]): void {
    const reqOne = (request.flags & C.NBD_CMD_FLAG_REQ_ONE) !== 0;
    const maxDescriptors = reqOne ? 1 : BLOCK_STATUS_MAX_DESCRIPTORS;
    const descriptors: number[] = [];
    let covered = 0;
    for (const extent of extents) {
      if (covered >= request.length || extent.lengthBytes <= 0) break;
      const length = Math.min(extent.lengthBytes, request.length - covered);
      const flags = (extent.hole ? C.NBD_STATE_HOLE : 0) | (extent.zero ? C.NBD_STATE_ZERO : 0);
      const last = descriptors.length - 2;
      // proto.md: the server SHOULD use different status values between consecutive descriptors.
      if (last >= 0 && descriptors[last + 1] === flags) descriptors[last] += length;
      else if (descriptors.length / 2 < maxDescriptors) descriptors.push(length, flags);
      else break;
      covered += length;
    }
    // proto.md: the server MUST return at least one descriptor; status 0 is always safe.
    if (descriptors.length === 0) descriptors.push(request.length, 0);
    const count = descriptors.length / 2;
    const header = this.#structuredHeader(request, C.NBD_REPLY_FLAG_DONE, C.NBD_REPLY_TYPE_BLOCK_STATUS, 4 + 8 * count, 4 + 8 * count);
    header.writeUInt32BE(BASE_ALLOCATION_CONTEXT_ID, 20);
    for (let i = 0; i < count; i++) {
      header.writeUInt32BE(descriptors[2 * i]!, 24 + 8 * i);
      header.writeUInt32BE(descriptors[2 * i + 1]!, 28 + 8 * i);
    }
    this.#send(header);
    this.#finishRequest();
  }
}

/** WRITE_ZEROES for an export without a native one: plain writes of a shared zero buffer. */
async function writeZeroBuffers(exp: NbdExport, position: number, length: number, fua: boolean): Promise<void> {
  zeroChunk ??= Buffer.alloc(ZERO_FILL_CHUNK_BYTES);
  for (let done = 0; done < length; done += ZERO_FILL_CHUNK_BYTES) {
    const n = Math.min(ZERO_FILL_CHUNK_BYTES, length - done);
    await exp.write(zeroChunk.subarray(0, n), position + done, { fua: false });
  }
  // One flush covers every chunk: proto.md FUA means all data of the command is persisted.
  if (fua) await exp.flush();
}
