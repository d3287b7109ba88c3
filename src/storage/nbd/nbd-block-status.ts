/**
 * Reads one metadata context of an NBD export (proto.md "Metadata querying"), for example QEMU's
 * `qemu:dirty-bitmap:NAME`, which tells which blocks a dirty bitmap marks. A connection of its own:
 * it negotiates structured replies (BLOCK_STATUS answers only in them) and the one context, asks
 * NBD_CMD_BLOCK_STATUS over the whole export, then disconnects; it reads no data.
 * Protocol code: imports nothing from the application.
 */
import { connect } from 'node:net';
import { encodeOption, encodeRequest, HandshakeReader, negotiateFlags, selectExport } from './nbd-client.ts';
import * as C from './nbd-constants.ts';
import { NbdError } from './nbd-export.ts';

/** A run of blocks with the same status flags (their meaning is the context's). */
export interface NbdContextExtent {
  offset: number;
  length: number;
  flags: number;
}

/** Largest length asked per request: the field is 32 bits, and a server may answer for less. */
const REQUEST_BYTES = 0x8000_0000;

/**
 * The extents of `context` over the whole export `exportName` at the unix socket `path`, in order
 * and without gaps. Fails when the server does not offer the context (for example a bitmap the
 * export was not given).
 */
export async function readMetaContext(options: { path: string; exportName: string; context: string; timeoutMs?: number }): Promise<NbdContextExtent[]> {
  const socket = connect(options.path);
  const reader = new HandshakeReader(socket, { timeoutMs: options.timeoutMs ?? 60_000 });
  try {
    await negotiateFlags(reader, socket);
    await negotiateStructuredReplies(reader, socket);
    const contextId = await setMetaContext(reader, socket, options.exportName, options.context);
    const { sizeBytes } = await selectExport(reader, socket, options.exportName);
    const extents: NbdContextExtent[] = [];
    let offset = 0;
    for (let handle = 1; offset < sizeBytes; handle += 1) {
      socket.write(encodeRequest(C.NBD_CMD_BLOCK_STATUS, 0, handle, offset, Math.min(REQUEST_BYTES, sizeBytes - offset)));
      const answered = await readBlockStatusReply(reader, handle, contextId);
      if (answered.length === 0) throw new NbdError('NBD_PROTOCOL', `Server described no block at offset ${offset}`);
      for (const extent of answered) {
        // A server may describe past the request's end; the export's end bounds it.
        const length = Math.min(extent.length, sizeBytes - offset);
        if (length <= 0) break;
        extents.push({ offset, length, flags: extent.flags });
        offset += length;
      }
    }
    socket.end(encodeRequest(C.NBD_CMD_DISC, 0, 0, 0, 0));
    return extents;
  } finally {
    reader.dispose();
    socket.destroy();
  }
}

/** NBD_OPT_STRUCTURED_REPLY: required before BLOCK_STATUS can be asked. */
async function negotiateStructuredReplies(reader: HandshakeReader, socket: ReturnType<typeof connect>): Promise<void> {
  socket.write(encodeOption(C.NBD_OPT_STRUCTURED_REPLY, Buffer.alloc(0)));
  const { type, payload } = await readOptionReply(reader);
  if (type !== C.NBD_REP_ACK) throw new NbdError('NBD_PROTOCOL', `Server refused structured replies: ${payload.toString('utf8') || type}`);
}

/** NBD_OPT_SET_META_CONTEXT for one context; its id, as the server numbered it. */
async function setMetaContext(reader: HandshakeReader, socket: ReturnType<typeof connect>, exportName: string, context: string): Promise<number> {
  const name = Buffer.from(exportName, 'utf8');
  const query = Buffer.from(context, 'utf8');
  const data = Buffer.alloc(4 + name.length + 4 + 4 + query.length);
  data.writeUInt32BE(name.length, 0);
  name.copy(data, 4);
  data.writeUInt32BE(1, 4 + name.length);
  data.writeUInt32BE(query.length, 8 + name.length);
  query.copy(data, 12 + name.length);
  socket.write(encodeOption(C.NBD_OPT_SET_META_CONTEXT, data));
  let contextId: number | undefined;
  for (;;) {
    const { type, payload } = await readOptionReply(reader);
    if (type === C.NBD_REP_ACK) break;
    if (type === C.NBD_REP_META_CONTEXT && payload.length >= 4 && payload.subarray(4).toString('utf8') === context) contextId = payload.readUInt32BE(0);
    else if (type >= 0x8000_0000) throw new NbdError('NBD_PROTOCOL', `Server refused metadata context ${context}: ${payload.toString('utf8') || type}`);
  }
  if (contextId === undefined) throw new NbdError('NBD_PROTOCOL', `Server does not offer metadata context ${context} for export ${exportName}`);
  return contextId;
}

async function readOptionReply(reader: HandshakeReader): Promise<{ type: number; payload: Buffer }> {
  const header = await reader.read(20);
  if (header.readBigUInt64BE(0) !== C.NBD_REP_MAGIC) throw new NbdError('NBD_PROTOCOL', 'Wrong option reply magic');
  const length = header.readUInt32BE(16);
  if (length > 64 * 1024) throw new NbdError('NBD_PROTOCOL', 'Option reply too long');
  return { type: header.readUInt32BE(12), payload: length > 0 ? await reader.read(length) : Buffer.alloc(0) };
}

/** The structured reply chunks of request `handle` up to the one flagged DONE: the extents of `contextId`. */
async function readBlockStatusReply(reader: HandshakeReader, handle: number, contextId: number): Promise<Array<{ length: number; flags: number }>> {
  const extents: Array<{ length: number; flags: number }> = [];
  for (;;) {
    const header = await reader.read(20);
    if (header.readUInt32BE(0) !== C.NBD_STRUCTURED_REPLY_MAGIC) throw new NbdError('NBD_PROTOCOL', 'Expected a structured reply');
    const flags = header.readUInt16BE(4);
    const type = header.readUInt16BE(6);
    const replyHandle = header.readUInt32BE(8) * 0x1_0000_0000 + header.readUInt32BE(12);
    const length = header.readUInt32BE(16);
    if (replyHandle !== handle) throw new NbdError('NBD_PROTOCOL', `Reply for unknown handle ${replyHandle}`);
    if (length > 16 * 1024 * 1024) throw new NbdError('NBD_PROTOCOL', 'Block status reply too long');
    const payload = length > 0 ? await reader.read(length) : Buffer.alloc(0);
    if (type & 0x8000) {
      const errno = payload.length >= 4 ? payload.readUInt32BE(0) : 0;
      const message = payload.length >= 6 ? payload.subarray(6, 6 + payload.readUInt16BE(4)).toString('utf8') : '';
      throw NbdError.fromErrno(errno, `Server answered BLOCK_STATUS with error ${errno}${message ? `: ${message}` : ''}`);
    }
    if (type === C.NBD_REPLY_TYPE_BLOCK_STATUS && payload.length >= 4 && payload.readUInt32BE(0) === contextId)
      for (let at = 4; at + 8 <= payload.length; at += 8) extents.push({ length: payload.readUInt32BE(at), flags: payload.readUInt32BE(at + 4) });
    if (flags & C.NBD_REPLY_FLAG_DONE) return extents;
  }
}
