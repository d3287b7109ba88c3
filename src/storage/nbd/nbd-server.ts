/**
 * An NBD server (NetworkBlockDevice/nbd doc/proto.md, fixed newstyle only) over TCP and unix
 * sockets, in plaintext (NOTLS) or, given a certificate and key, requiring TLS through
 * NBD_OPT_STARTTLS (FORCEDTLS), optionally with client certificates. Exports come from a catalog,
 * so the server knows nothing of pools or files.
 *
 * Protocol code: imports nothing from the application and can be lifted into its own package.
 */
import { unlink } from 'node:fs/promises';
import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { createSecureContext } from 'node:tls';
import { DEFAULT_MAX_PAYLOAD_BYTES } from './nbd-constants.ts';
import { NbdConnection, type NbdServerEvent, type NbdTlsSettings } from './nbd-connection.ts';
import { defaultErrnoOf, NbdError, type NbdExportCatalog } from './nbd-export.ts';
import type { NbdGate } from './nbd-gate.ts';

export type { NbdServerEvent } from './nbd-connection.ts';

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
 * Where to listen: a unix socket path, or a TCP host and port (port 0 picks a free one). On a
 * server with TLS credentials, `tls: false` serves this listener in plaintext (say, a unix socket
 * that only local QEMU processes can open); proto.md lets the mode depend on the session.
 * `gate`: the connections accepted here belong to that group of clients and can be fenced with it
 * (nbd-gate.ts); several listeners may share one gate.
 */
export type NbdListenAddress = ({ path: string } | { host?: string; port: number }) & { tls?: boolean; gate?: NbdGate };

/** An NBD server; `listen` may be called several times (e.g. a unix socket and TCP). */
export class NbdServer {
  readonly #settings;
  readonly #tls?: NbdTlsSettings;
  readonly #listeners: Server[] = [];
  readonly #connections = new Set<NbdConnection>();
  readonly #socketPaths: string[] = [];
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
   * given). A stale unix socket file at the path is replaced.
   */
  async listen(address: NbdListenAddress): Promise<{ path: string } | { host: string; port: number }> {
    if (this.#closing) throw new NbdError('NBD_ESHUTDOWN', 'Server is closed');
    if (address.tls === true && !this.#tls) throw new NbdError('NBD_TLS_CONFIG', 'A listener asks for TLS but the server has no TLS credentials');
    const tls = address.tls === false ? undefined : this.#tls;
    const gate = address.gate;
    const server = createServer({ noDelay: true }, (socket) => this.#accept(socket, tls, gate));
    if ('path' in address) await unlink(address.path).catch(() => undefined);
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      if ('path' in address) server.listen(address.path, resolve);
      else server.listen(address.port, address.host ?? '127.0.0.1', resolve);
    });
    server.on('error', () => undefined);
    this.#listeners.push(server);
    if ('path' in address) {
      this.#socketPaths.push(address.path);
      return { path: address.path };
    }
    const bound = server.address() as AddressInfo;
    return { host: bound.address, port: bound.port };
  }

  /**
   * Stops listening, lets running requests finish (new ones get ESHUTDOWN), then closes every
   * connection; connections still open after `graceMs` are cut.
   */
  async close(graceMs = 5000): Promise<void> {
    this.#closing = true;
    await Promise.all(this.#listeners.map((server) => new Promise<void>((resolve) => server.close(() => resolve()))));
    for (const connection of this.#connections) connection.shutdown();
    const all = Promise.all([...this.#connections].map((connection) => connection.done));
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([all, new Promise<void>((resolve) => (timer = setTimeout(resolve, graceMs)))]);
    clearTimeout(timer);
    for (const connection of this.#connections) connection.destroy();
    await Promise.all(this.#socketPaths.map((path) => unlink(path).catch(() => undefined)));
  }

  #accept(socket: Socket, tls: NbdTlsSettings | undefined, gate: NbdGate | undefined): void {
    if (this.#closing) {
      socket.destroy();
      return;
    }
    const connection = new NbdConnection(this.#nextConnectionId++, socket, this.#settings, tls, gate);
    this.#connections.add(connection);
    void connection.done.then(() => this.#connections.delete(connection));
  }
}
