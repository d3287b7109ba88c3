/**
 * What the NBD server serves: anything with a size that can read, write and flush bytes. Protocol
 * code: imports nothing from the application, so a pool volume, a raw file or a test double all
 * plug in the same way.
 */
import { NBD_EINVAL, NBD_EIO, NBD_ENOSPC, NBD_EPERM, NBD_ERRNO_NAMES, NBD_ESHUTDOWN } from './nbd-constants.ts';

/** One run of bytes with the same `base:allocation` state. */
export interface NbdExtent {
  lengthBytes: number;
  /** Not allocated in the backing store (NBD_STATE_HOLE). */
  hole: boolean;
  /** Reads as zeroes (NBD_STATE_ZERO). */
  zero: boolean;
}

/** Options of a write-like command. */
export interface NbdWriteOptions {
  /** The client set NBD_CMD_FLAG_FUA: the data must be on stable storage before this resolves. */
  fua: boolean;
}

/**
 * A block device exported over NBD. Positions and lengths are bytes; the server has already
 * checked them against `sizeBytes`, so an export only sees requests inside its bounds.
 */
export interface NbdExport {
  /** Current size; read when a client selects the export. */
  readonly sizeBytes: number;
  /** Refuse writes (NBD_FLAG_READ_ONLY). Default false. */
  readonly readOnly?: boolean;
  /** Shown to clients that ask for NBD_INFO_DESCRIPTION. */
  readonly description?: string;
  /**
   * True when FLUSH and FUA on one connection cover writes made on every other connection
   * (proto.md NBD_FLAG_CAN_MULTI_CONN). Default false.
   */
  readonly multiConn?: boolean;
  /** Fill `buffer` with the bytes at `position`. The buffer is recycled after the reply: keep no reference. */
  read(buffer: Buffer, position: number): Promise<void>;
  /** Store `data` at `position`. `data` is recycled once the promise settles: keep no reference. */
  write(data: Buffer, position: number, options: NbdWriteOptions): Promise<void>;
  /** Make every write that has completed so far durable. */
  flush(): Promise<void>;
  /** Discard a range (a hint; it may do nothing). */
  trim?(position: number, lengthBytes: number, options: NbdWriteOptions): Promise<void>;
  /** Make a range read as zeroes. Without it the server writes zero buffers. */
  writeZeroes?(position: number, lengthBytes: number, options: NbdWriteOptions & { noHole: boolean }): Promise<void>;
  /** Allocation map from `position`; may cover less or more than asked. Without it all is data. */
  blockStatus?(position: number, lengthBytes: number): Promise<NbdExtent[]>;
}

/** Where the server finds exports by name; the empty name is the default export (if any). */
export interface NbdExportCatalog {
  get(name: string): NbdExport | undefined;
  /** Names listed by NBD_OPT_LIST. */
  names(): string[];
}

/** A catalog over a plain map, for tests and single-export servers. */
export function mapCatalog(exports: Map<string, NbdExport>, defaultName?: string): NbdExportCatalog {
  return {
    get: (name) => exports.get(name === '' && defaultName !== undefined ? defaultName : name),
    names: () => [...exports.keys()],
  };
}

/** Stable codes of what the NBD module throws. */
export type NbdErrorCode =
  | 'NBD_EPERM'
  | 'NBD_EIO'
  | 'NBD_ENOMEM'
  | 'NBD_EINVAL'
  | 'NBD_ENOSPC'
  | 'NBD_EOVERFLOW'
  | 'NBD_ENOTSUP'
  | 'NBD_ESHUTDOWN'
  | 'NBD_PROTOCOL'
  | 'NBD_CONNECT_FAILED'
  | 'NBD_DISCONNECTED'
  | 'NBD_EXPORT_UNKNOWN'
  | 'NBD_TIMEOUT'
  | 'NBD_TLS_CONFIG';

/**
 * An error of the NBD module. An export may throw one to choose the wire error a client gets;
 * `errno` is the wire value (proto.md "Error values").
 */
export class NbdError extends Error {
  override readonly name = 'NbdError';
  readonly code: NbdErrorCode;
  readonly errno: number;

  constructor(code: NbdErrorCode, message: string, options: { cause?: unknown; errno?: number } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.errno = options.errno ?? errnoOfCode(code);
  }

  /** The error a client gets for wire value `errno`. */
  static fromErrno(errno: number, message: string): NbdError {
    const code = (NBD_ERRNO_NAMES[errno] ?? 'NBD_EIO') as NbdErrorCode;
    return new NbdError(code, message, { errno });
  }
}

function errnoOfCode(code: NbdErrorCode): number {
  for (const [errno, name] of Object.entries(NBD_ERRNO_NAMES)) if (name === code) return Number(errno);
  return NBD_EIO;
}

/**
 * Default mapping from anything an export throws to a wire error value: an NbdError keeps its own,
 * host errno codes map as proto.md asks (EDQUOT and EFBIG -> ENOSPC, EROFS -> EPERM), all else EIO.
 */
export function defaultErrnoOf(error: unknown): number {
  if (error instanceof NbdError) return error.errno;
  const code = (error as { code?: unknown } | null)?.code;
  switch (code) {
    case 'ENOSPC':
    case 'EDQUOT':
    case 'EFBIG':
      return NBD_ENOSPC;
    case 'EPERM':
    case 'EACCES':
    case 'EROFS':
      return NBD_EPERM;
    case 'EINVAL':
      return NBD_EINVAL;
    case 'ESHUTDOWN':
      return NBD_ESHUTDOWN;
    default:
      return NBD_EIO;
  }
}
