/**
 * An NBD server (NetworkBlockDevice/nbd doc/proto.md, fixed newstyle only) over TCP and unix
 * sockets, in plaintext (NOTLS) or, given a certificate and key, requiring TLS through
 * NBD_OPT_STARTTLS (FORCEDTLS), optionally with client certificates. Exports come from a catalog,
 * so the server knows nothing of pools or files.
 *
 * Protocol code: imports nothing from the application and can be lifted into its own package.
 */
import { chmod, chown, rename, unlink } from 'node:fs/promises';
import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { createSecureContext } from 'node:tls';
import { DEFAULT_MAX_PAYLOAD_BYTES } from './nbd-constants.ts';
import { NbdConnection, type NbdPeerAdmission, type NbdServerEvent, type NbdTlsSettings } from './nbd-connection.ts';
import type { NbdExportAccess } from './nbd-export-access.ts';
import { defaultErrnoOf, NbdError, type NbdExportCatalog } from './nbd-export.ts';
import type { NbdGate } from './nbd-gate.ts';

export type { NbdPeerAdmission, NbdServerEvent } from './nbd-connection.ts';

/** TLS credentials of a server, PEM-encoded. */
export interface NbdTlsOptions {
  /** The server's certificate (chain). */
  cert: string | Buffer;
  /** The server's private key (unencrypted). */
  key: string | Buffer;
  /** When given, clients must present a certificate signed by this CA (x509 client auth). */
  ca?: string | Buffer;
}

/** Options of `NbdServer`. */
export interface NbdServerOptions {
  catalog: NbdExportCatalog;
  /**
   * With credentials the server requires TLS (proto.md FORCEDTLS): clients must send
   * NBD_OPT_STARTTLS before anything else, on every listener that does not opt out with
   * `tls: false`. Without them (the default) the server runs NOTLS and refuses STARTTLS.
   */
  tls?: NbdTlsOptions;
  /** Largest READ/WRITE payload accepted (advertised in NBD_INFO_BLOCK_SIZE). Default 32 MiB. */
  maxPayloadBytes?: number;
  /** Largest option accepted during the handshake; more is a hard disconnect. Default 64 KiB. */
  maxOptionBytes?: number;
  /** Options one client may send before it is cut off. Default 1000. */
  maxOptions?: number;
  /** A client that has not chosen an export by then is disconnected. Default 30 000 ms. */
  handshakeTimeoutMs?: number;
  /** Requests one connection may have running before the server stops reading. Default 128. */
  maxInflightRequests?: number;
  /** Payload bytes one connection may have in flight before the server stops reading. Default 256 MiB. */
  maxInflightBytes?: number;
  /** Maps what an export throws to a wire error; default maps NbdError and host errno codes. */
  errnoOf?: (error: unknown) => number;
  /** Sees connections, selections, violations and failed requests. */
  onEvent?: (event: NbdServerEvent) => void;
}

/**
 * The owner and mode of a unix socket file, set before any other user can reach the socket: it
 * is bound at `bindPath` (in a folder only this process's user may enter, on the same filesystem
 * as the socket's path), given its owner and mode there, and only then renamed into place. A
 * socket bound in place would exist, for a moment, with the mode the umask gave it.
 */
export interface NbdSocketFile {
  /** Owner and group; omitted: this process's. */
  owner?: { uid: number; gid: number };
  /** Permission bits, e.g. 0o600: only the owner (and root) may connect. */
  mode: number;
  /**
   * Unique per listen, never reused while the server runs: libuv removes the path a listener was
   * bound at when it closes, which must never be another listener's file.
   */
  bindPath: string;
}

/**
 * Where to listen: a unix socket path, or a TCP host and port (port 0 picks a free one). On a
 * server with TLS credentials, `tls: false` serves this listener in plaintext (say, a unix socket
 * that only local QEMU processes can open); proto.md lets the mode depend on the session.
 * `gate`: the connections accepted here belong to that group of clients and can be fenced with it
 * (nbd-gate.ts); several listeners may share one gate. `access`: the clients of this listener may
 * select only the exports it allows (nbd-export-access.ts). `file`: the unix socket's owner and mode.
 * `admitPeer`: the listener serves several clients that tell themselves apart by their TLS client
 * certificate; each gets the gate and allow list its certificate's name maps to (TLS with client
 * certificates required).
 */
export type NbdListenAddress = ({ path: string; file?: NbdSocketFile } | { host?: string; port: number }) & {
  tls?: boolean;
  gate?: NbdGate;
  access?: NbdExportAccess;
  admitPeer?: NbdPeerAdmission;
};

/** One listener and the connections it accepted that may still have requests running. */
interface Listener {
  server: Server;
  connections: Set<NbdConnection>;
}

/** An NBD server; `listen` may be called several times (e.g. a unix socket and TCP). */
export class NbdServer {
  readonly #settings;
  readonly #tls?: NbdTlsSettings;
  readonly #listeners = new Set<Listener>();
  readonly #connections = new Set<NbdConnection>();
  /** Unix socket listeners by path, each removed with its file when it closes. */
  readonly #byPath = new Map<string, Listener>();
  #nextConnectionId = 1;
  #closing = false;

  constructor(options: NbdServerOptions) {
    this.#settings = Object.freeze({
      catalog: options.catalog,
      maxPayloadBytes: options.maxPayloadBytes ?? DEFAULT_MAX_PAYLOAD_BYTES,
      maxOptionBytes: options.maxOptionBytes ?? 64 * 1024,
      maxOptions: options.maxOptions ?? 1000,
      handshakeTimeoutMs: options.handshakeTimeoutMs ?? 30_000,
      maxInflightRequests: options.maxInflightRequests ?? 128,
      maxInflightBytes: options.maxInflightBytes ?? 256 * 1024 * 1024,
      errnoOf: options.errnoOf ?? defaultErrnoOf,
      onEvent: options.onEvent,
    });
    if (options.tls) {
      try {
        this.#tls = Object.freeze({
          // proto.md "TLS versions": MUST support TLS 1.2; older versions SHOULD NOT be on by default.
          secureContext: createSecureContext({ cert: options.tls.cert, key: options.tls.key, ca: options.tls.ca, minVersion: 'TLSv1.2' }),
          requireClientCertificate: options.tls.ca !== undefined,
        });
      } catch (error) {
        throw new NbdError('NBD_TLS_CONFIG', `TLS credentials are unusable: ${(error as Error).message}`, { cause: error });
      }
    }
  }

  /** Whether the server has TLS credentials (listeners require TLS unless opted out). */
  get tlsEnabled(): boolean {
    return this.#tls !== undefined;
  }

  /** Connections currently open. */
  get connectionCount(): number {
    return this.#connections.size;
  }

  /**
   * Starts accepting on `address`; resolves with the bound address (the TCP port when 0 was
   * given). A stale unix socket file at the path is replaced; a path this server listens on
   * already is refused.
   */
  async listen(address: NbdListenAddress): Promise<{ path: string } | { host: string; port: number }> {
    if (this.#closing) throw new NbdError('NBD_ESHUTDOWN', 'Server is closed');
    if (address.tls === true && !this.#tls) throw new NbdError('NBD_TLS_CONFIG', 'A listener asks for TLS but the server has no TLS credentials');
    if ('path' in address && this.#byPath.has(address.path)) throw new NbdError('NBD_EINVAL', `The server listens on ${address.path} already`);
    const tls = address.tls === false ? undefined : this.#tls;
    if (address.admitPeer && !tls?.requireClientCertificate)
      throw new NbdError('NBD_TLS_CONFIG', 'A listener that admits clients by certificate needs TLS with a CA for client certificates');
    const admission = { tls, gate: address.gate, access: address.access, admitPeer: address.admitPeer };
    const listener: Listener = {
      server: createServer({ noDelay: true }, (socket) => this.#accept(socket, listener, admission)),
      connections: new Set(),
    };
    const { server } = listener;
    if ('path' in address) {
      const file = address.file;
      const bindPath = file?.bindPath ?? address.path;
      await unlink(bindPath).catch(() => undefined);
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen(bindPath, resolve);
      });
      if (file) await placeSocketFile(server, bindPath, address.path, file);
      this.#byPath.set(address.path, listener);
    } else {
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen(address.port, address.host ?? '127.0.0.1', resolve);
      });
    }
    server.on('error', () => undefined);
    this.#listeners.add(listener);
    if ('path' in address) return { path: address.path };
    const bound = server.address() as AddressInfo;
    return { host: bound.address, port: bound.port };
  }

  /**
   * Stops listening on the unix socket `path` and removes its file, cuts the connections it
   * accepted, and resolves once none of their requests still runs on an export. A path this
   * server does not listen on is left alone.
   */
  async closeListener(path: string): Promise<void> {
    const listener = this.#byPath.get(path);
    if (!listener) return;
    this.#byPath.delete(path);
    this.#listeners.delete(listener);
    const closed = new Promise<void>((resolve) => listener.server.close(() => resolve()));
    await unlink(path).catch(() => undefined);
    const cut = [...listener.connections];
    for (const connection of cut) connection.destroy();
    await Promise.all([closed, ...cut.map((connection) => connection.settled)]);
  }

  /**
   * Stops listening, lets running requests finish (new ones get ESHUTDOWN), then closes every
   * connection; connections still open after `graceMs` are cut.
   */
  async close(graceMs = 5000): Promise<void> {
    this.#closing = true;
    // A listener's close completes only once its connections have ended: not awaited before
    // they are told to finish, or an open connection would hold the server open for ever.
    const listenersClosed = [...this.#listeners].map(({ server }) => new Promise<void>((resolve) => server.close(() => resolve())));
    for (const connection of this.#connections) connection.shutdown();
    const all = Promise.all([...this.#connections].map((connection) => connection.done));
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([all, new Promise<void>((resolve) => (timer = setTimeout(resolve, graceMs)))]);
    clearTimeout(timer);
    for (const connection of this.#connections) connection.destroy();
    await Promise.all(listenersClosed);
    await Promise.all([...this.#byPath.keys()].map((path) => unlink(path).catch(() => undefined)));
  }

  #accept(
    socket: Socket,
    listener: Listener,
    admission: { tls?: NbdTlsSettings; gate?: NbdGate; access?: NbdExportAccess; admitPeer?: NbdPeerAdmission },
  ): void {
    if (this.#closing || !this.#listeners.has(listener)) {
      socket.destroy();
      return;
    }
    const connection = new NbdConnection(
      this.#nextConnectionId++,
      socket,
      this.#settings,
      admission.tls,
      admission.gate,
      admission.access,
      admission.admitPeer,
    );
    this.#connections.add(connection);
    listener.connections.add(connection);
    void connection.done.then(() => this.#connections.delete(connection));
    // Kept until its last request ended, so that closing the listener can wait for it.
    void connection.settled.then(() => listener.connections.delete(connection));
  }
}

/**
 * Gives the socket bound at `bindPath` its owner and mode, then renames it to `path` (replacing
 * a stale file there atomically). On failure the listener is closed and nothing is left behind.
 */
async function placeSocketFile(server: Server, bindPath: string, path: string, file: NbdSocketFile): Promise<void> {
  try {
    if (file.owner) await chown(bindPath, file.owner.uid, file.owner.gid);
    await chmod(bindPath, file.mode);
    await rename(bindPath, path);
  } catch (error) {
    await new Promise<void>((resolve) => server.close(() => resolve()));
    await unlink(bindPath).catch(() => undefined);
    throw new NbdError('NBD_EINVAL', `Cannot give the NBD socket ${path} its owner and mode: ${(error as Error).message}`, { cause: error });
  }
}
