/**
 * Follows the opening of an RFB (VNC) connection that passes through a relay, to tell the moment
 * its authentication is over: the relay expires the one-time VNC password then, so that the same
 * password never lets a second client in.
 *
 * Protocol code: it imports nothing from the application. RFC 6143 (RFB 3.8), sections 7.1.1 to
 * 7.2.2: the server sends its ProtocolVersion (12 bytes), the client answers with its own; from
 * 3.7 on the server lists its security types (a count byte, then one byte each; a count of 0 is a
 * failure) and the client picks one (1 byte), in 3.3 the server decides alone (a U32). For VNC
 * Authentication (type 2) the server sends a 16-byte challenge, the client a 16-byte DES answer,
 * and the server a U32 SecurityResult (0 is OK). Only the first bytes of each direction are kept.
 */

/** How the authentication ended: `ok`/`failed` for VNC Authentication, `other` for any other security type. */
export type RfbAuthOutcome = 'ok' | 'failed' | 'other';

const VNC_AUTHENTICATION = 2;
const VERSION_LENGTH = 12;
/** The server's bytes up to the SecurityResult at most: version, count, 255 types, challenge, result. */
const SERVER_PREFIX_MAX = VERSION_LENGTH + 1 + 255 + 16 + 4;
/** The client's bytes up to its chosen security type. */
const CLIENT_PREFIX_MAX = VERSION_LENGTH + 1;

/** Watches both directions of one RFB connection and calls `onDone` once its authentication is over. */
export class RfbAuthWatch {
  #server = Buffer.alloc(0);
  #client = Buffer.alloc(0);
  #outcome: RfbAuthOutcome | undefined;
  readonly #onDone: (outcome: RfbAuthOutcome) => void;

  constructor(onDone: (outcome: RfbAuthOutcome) => void) {
    this.#onDone = onDone;
  }

  /** The outcome, once known. */
  get outcome(): RfbAuthOutcome | undefined {
    return this.#outcome;
  }

  /** Bytes the server sent towards the client. */
  fromServer(chunk: Buffer): void {
    if (this.#outcome || this.#server.length >= SERVER_PREFIX_MAX) return;
    this.#server = Buffer.concat([this.#server, chunk.subarray(0, SERVER_PREFIX_MAX - this.#server.length)]);
    this.#evaluate();
  }

  /** Bytes the client sent towards the server. */
  fromClient(chunk: Buffer): void {
    if (this.#outcome || this.#client.length >= CLIENT_PREFIX_MAX) return;
    this.#client = Buffer.concat([this.#client, chunk.subarray(0, CLIENT_PREFIX_MAX - this.#client.length)]);
    this.#evaluate();
  }

  #evaluate(): void {
    const outcome = this.#read();
    if (!outcome) return;
    this.#outcome = outcome;
    this.#onDone(outcome);
  }

  /** Reads the handshake from the start of both prefixes: its outcome, or undefined while bytes are missing. */
  #read(): RfbAuthOutcome | undefined {
    const server = this.#server;
    const client = this.#client;
    if (server.length < VERSION_LENGTH || client.length < VERSION_LENGTH) return undefined;
    const version = /^RFB (\d{3})\.(\d{3})\n$/.exec(client.subarray(0, VERSION_LENGTH).toString('latin1'));
    if (!version) return 'failed';
    const minor = Number(version[1]) > 3 ? 8 : Number(version[2]);
    let at = VERSION_LENGTH;
    let type: number;
    if (minor >= 7) {
      if (server.length < at + 1) return undefined;
      const count = server[at];
      at += 1;
      if (count === 0) return 'failed';
      if (server.length < at + count || client.length < VERSION_LENGTH + 1) return undefined;
      at += count;
      type = client[VERSION_LENGTH];
    } else {
      if (server.length < at + 4) return undefined;
      type = server.readUInt32BE(at);
      at += 4;
      if (type === 0) return 'failed';
    }
    if (type !== VNC_AUTHENTICATION) return 'other';
    if (server.length < at + 16 + 4) return undefined;
    return server.readUInt32BE(at + 16) === 0 ? 'ok' : 'failed';
  }
}
