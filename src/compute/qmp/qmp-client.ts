/**
 * A typed client for the QEMU Machine Protocol (QMP) over a unix socket.
 *
 * Protocol code: it imports nothing from the application, so it can be lifted into its own
 * package as it is. QMP is one JSON object per line in each direction (docs/interop/qmp-spec.rst):
 * the server greets with `{"QMP": {...}}`, the client must send `qmp_capabilities` before any
 * other command, and then every command may carry an `id` that the server echoes in its `return`
 * or `error` reply. Asynchronous `event` messages may arrive at any time, also between a command
 * and its reply, so replies are matched by id, never by order.
 */
import { connect, type Socket } from 'node:net';

/** Stable codes of everything this client throws. */
export type QmpErrorCode = 'QMP_CONNECT_FAILED' | 'QMP_TIMEOUT' | 'QMP_ABORTED' | 'QMP_DISCONNECTED' | 'QMP_COMMAND_FAILED' | 'QMP_PROTOCOL';

/** An error from the QMP client. For `QMP_COMMAND_FAILED`, `qmpClass` holds QEMU's error class. */
export class QmpError extends Error {
  override readonly name = 'QmpError';
  readonly code: QmpErrorCode;
  readonly qmpClass?: string;

  constructor(code: QmpErrorCode, message: string, options: { cause?: unknown; qmpClass?: string } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.qmpClass = options.qmpClass;
  }
}

/** An asynchronous QMP event, with QEMU's timestamp turned into milliseconds since the epoch. */
export interface QmpEvent {
  event: string;
  data: Record<string, unknown>;
  timestampMs: number;
}

/** Options of every call that waits on QEMU. */
export interface QmpCallOptions {
  /** Give up after this long; defaults to the client's `defaultTimeoutMs`. */
  timeoutMs?: number;
  signal?: AbortSignal;
  /**
   * Out-of-band (`exec-oob`): QEMU runs it on the monitor's own thread, so it is answered even
   * while the main loop is blocked (as on a post-copy destination waiting for a page). Only for
   * commands QEMU allows there (e.g. `migrate-pause`, `migrate-recover`); without OOB support in
   * the session it is sent in-band.
   */
  outOfBand?: boolean;
}

/** Options of `QmpClient.connect`. */
export interface QmpConnectOptions extends QmpCallOptions {
  /** Timeout of each command when the call does not give one. Default 30 000 ms. */
  defaultTimeoutMs?: number;
  /** Sees every line sent (`>`) and received (`<`): wire it to a debug-level logger. */
  traffic?: (direction: '>' | '<', line: string) => void;
  /** Sees lines that are not valid QMP (they are skipped, never fatal). */
  onProtocolWarning?: (message: string) => void;
}

interface PendingCall {
  command: string;
  resolve: (value: unknown) => void;
  reject: (error: QmpError) => void;
}

/** A queue that turns pushed events into an async iterator for one subscriber. */
class EventSubscription implements AsyncIterableIterator<QmpEvent> {
  readonly #buffered: QmpEvent[] = [];
  #waiting?: { resolve: (result: IteratorResult<QmpEvent>) => void; reject: (error: unknown) => void };
  #ended = false;
  #failure?: unknown;
  readonly #onReturn: () => void;

  constructor(onReturn: () => void) {
    this.#onReturn = onReturn;
  }

  push(event: QmpEvent): void {
    if (this.#ended) return;
    if (this.#waiting) {
      const waiting = this.#waiting;
      this.#waiting = undefined;
      waiting.resolve({ value: event, done: false });
    } else {
      this.#buffered.push(event);
    }
  }

  end(failure?: unknown): void {
    if (this.#ended) return;
    this.#ended = true;
    this.#failure = failure;
    const waiting = this.#waiting;
    this.#waiting = undefined;
    if (!waiting) return;
    if (failure) waiting.reject(failure);
    else waiting.resolve({ value: undefined, done: true });
  }

  next(): Promise<IteratorResult<QmpEvent>> {
    const buffered = this.#buffered.shift();
    if (buffered) return Promise.resolve({ value: buffered, done: false });
    if (this.#ended) {
      return this.#failure ? Promise.reject(this.#failure) : Promise.resolve({ value: undefined, done: true });
    }
    return new Promise((resolve, reject) => {
      this.#waiting = { resolve, reject };
    });
  }

  return(): Promise<IteratorResult<QmpEvent>> {
    this.end();
    this.#onReturn();
    return Promise.resolve({ value: undefined, done: true });
  }

  [Symbol.asyncIterator](): AsyncIterableIterator<QmpEvent> {
    return this;
  }
}

/** Runs `work` with a deadline and an optional abort signal; cleans up its timer either way. */
function withDeadline<T>(
  what: string,
  options: { timeoutMs: number; signal?: AbortSignal },
  work: (settle: { resolve: (value: T) => void; reject: (error: unknown) => void }) => () => void,
): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    if (options.signal?.aborted) {
      reject(new QmpError('QMP_ABORTED', `${what} was aborted`, { cause: options.signal.reason }));
      return;
    }
    let cancelWork = (): void => {};
    const finish = (): void => {
      clearTimeout(timer);
      options.signal?.removeEventListener('abort', onAbort);
      cancelWork();
    };
    const onAbort = (): void => {
      finish();
      reject(new QmpError('QMP_ABORTED', `${what} was aborted`, { cause: options.signal?.reason }));
    };
    const timer = setTimeout(() => {
      finish();
      reject(new QmpError('QMP_TIMEOUT', `${what} got no answer within ${options.timeoutMs} ms`));
    }, options.timeoutMs);
    options.signal?.addEventListener('abort', onAbort, { once: true });
    cancelWork = work({
      resolve: (value) => {
        finish();
        resolve(value);
      },
      reject: (error) => {
        finish();
        reject(error);
      },
    });
  });
}

/** A connected, capabilities-negotiated QMP session. Create it with `QmpClient.connect`. */
export class QmpClient {
  readonly #socket: Socket;
  readonly #options: Required<Pick<QmpConnectOptions, 'defaultTimeoutMs'>> & QmpConnectOptions;
  readonly #pending = new Map<number, PendingCall>();
  readonly #subscriptions = new Set<EventSubscription>();
  #nextId = 1;
  #buffer = '';
  #closedError?: QmpError;
  readonly #closed: Promise<void>;
  #greetingWaiter?: (greeting: Record<string, unknown>) => void;
  /** QEMU's version and capabilities as sent in its greeting. */
  greeting: Record<string, unknown> = {};
  /** Whether out-of-band execution was negotiated (QEMU offers it on socket monitors). */
  outOfBand = false;

  private constructor(socket: Socket, options: QmpConnectOptions) {
    this.#socket = socket;
    this.#options = Object.freeze({ defaultTimeoutMs: 30_000, ...options });
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => this.#onData(chunk));
    this.#closed = new Promise((resolve) => {
      socket.on('close', () => {
        this.#failAll(this.#closedError ?? new QmpError('QMP_DISCONNECTED', 'QEMU closed the QMP connection'));
        resolve();
      });
    });
    socket.on('error', (error) => {
      this.#closedError ??= new QmpError('QMP_DISCONNECTED', `QMP connection failed: ${error.message}`, { cause: error });
    });
  }

  /**
   * Connects to the QMP socket at `socketPath`, waits for the greeting and negotiates
   * capabilities. Rejects with `QMP_CONNECT_FAILED` when nothing listens there.
   */
  static async connect(socketPath: string, options: QmpConnectOptions = {}): Promise<QmpClient> {
    const timeoutMs = options.timeoutMs ?? options.defaultTimeoutMs ?? 30_000;
    const socket = await withDeadline<Socket>(`Connecting to QMP at ${socketPath}`, { timeoutMs, signal: options.signal }, (settle) => {
      const candidate = connect(socketPath);
      let connected = false;
      const onError = (error: Error): void =>
        settle.reject(new QmpError('QMP_CONNECT_FAILED', `Cannot connect to QMP socket ${socketPath}: ${error.message}`, { cause: error }));
      candidate.once('error', onError);
      candidate.once('connect', () => {
        connected = true;
        settle.resolve(candidate);
      });
      return () => {
        candidate.off('error', onError);
        if (!connected) candidate.destroy();
      };
    });
    const client = new QmpClient(socket, options);
    try {
      client.greeting = await withDeadline<Record<string, unknown>>('Waiting for the QMP greeting', { timeoutMs, signal: options.signal }, (settle) => {
        client.#greetingWaiter = settle.resolve;
        client.#closed.then(() => settle.reject(client.#closedError ?? new QmpError('QMP_DISCONNECTED', 'QEMU closed the QMP connection before its greeting')));
        return () => {
          client.#greetingWaiter = undefined;
        };
      });
      const offered = ((client.greeting.QMP as { capabilities?: string[] } | undefined)?.capabilities ?? []).includes('oob');
      await client.execute('qmp_capabilities', offered ? { enable: ['oob'] } : undefined, { timeoutMs, signal: options.signal });
      client.outOfBand = offered;
      return client;
    } catch (error) {
      client.close();
      throw error;
    }
  }

  /** Resolves when the connection is gone (QEMU exited, or `close()` was called). */
  get closed(): Promise<void> {
    return this.#closed;
  }

  /** True once the connection has ended. */
  get isClosed(): boolean {
    return this.#socket.destroyed;
  }

  /**
   * Runs one QMP command and resolves with its `return` value. Rejects with
   * `QMP_COMMAND_FAILED` (QEMU's error class and description), `QMP_TIMEOUT`, `QMP_ABORTED` or
   * `QMP_DISCONNECTED`. A timed-out command may still run in QEMU; its late reply is dropped.
   */
  execute<T = unknown>(command: string, args?: Record<string, unknown>, options: QmpCallOptions = {}): Promise<T> {
    if (this.#socket.destroyed) {
      return Promise.reject(this.#closedError ?? new QmpError('QMP_DISCONNECTED', `Cannot run ${command}: the QMP connection is closed`));
    }
    const id = this.#nextId++;
    const timeoutMs = options.timeoutMs ?? this.#options.defaultTimeoutMs;
    return withDeadline<T>(`QMP command ${command}`, { timeoutMs, signal: options.signal }, (settle) => {
      this.#pending.set(id, { command, resolve: settle.resolve as (value: unknown) => void, reject: settle.reject });
      this.#send({ [options.outOfBand && this.outOfBand ? 'exec-oob' : 'execute']: command, ...(args === undefined ? {} : { arguments: args }), id });
      return () => this.#pending.delete(id);
    });
  }

  /**
   * Every event from now on, as an async iterator. Each call is an independent subscriber;
   * breaking out of the loop unsubscribes. The iterator ends when the connection closes.
   */
  events(): AsyncIterableIterator<QmpEvent> {
    const subscription: EventSubscription = new EventSubscription(() => this.#subscriptions.delete(subscription));
    if (this.#socket.destroyed) subscription.end();
    else this.#subscriptions.add(subscription);
    return subscription;
  }

  /**
   * Resolves with the first event named `name` (and matching `predicate`) that arrives after the
   * call. Subscribe before triggering the action whose event you wait for.
   */
  waitForEvent(name: string, predicate: (event: QmpEvent) => boolean = () => true, options: QmpCallOptions = {}): Promise<QmpEvent> {
    const subscription = this.events();
    const timeoutMs = options.timeoutMs ?? this.#options.defaultTimeoutMs;
    return withDeadline<QmpEvent>(`Waiting for QMP event ${name}`, { timeoutMs, signal: options.signal }, (settle) => {
      (async () => {
        for await (const event of subscription) {
          if (event.event === name && predicate(event)) {
            settle.resolve(event);
            return;
          }
        }
        settle.reject(this.#closedError ?? new QmpError('QMP_DISCONNECTED', `The QMP connection closed before event ${name}`));
      })().catch(settle.reject);
      return () => void subscription.return?.();
    });
  }

  /** Closes the connection; pending calls reject with `QMP_DISCONNECTED`. */
  close(): void {
    this.#closedError ??= new QmpError('QMP_DISCONNECTED', 'The QMP connection was closed by the client');
    this.#socket.destroy();
  }

  #send(message: Record<string, unknown>): void {
    const line = JSON.stringify(message);
    const args = message.arguments as Record<string, unknown> | undefined;
    // A password (set_password's one-time VNC password) is a secret: the traffic log shows its place, not its value.
    this.#options.traffic?.('>', args && 'password' in args ? JSON.stringify({ ...message, arguments: { ...args, password: '[redacted]' } }) : line);
    this.#socket.write(`${line}\n`);
  }

  #onData(chunk: string): void {
    this.#buffer += chunk;
    let newline: number;
    while ((newline = this.#buffer.indexOf('\n')) !== -1) {
      const line = this.#buffer.slice(0, newline).trim();
      this.#buffer = this.#buffer.slice(newline + 1);
      if (line !== '') this.#onLine(line);
    }
    // A peer that never sends a newline must not make us buffer without bound.
    if (this.#buffer.length > 16 * 1024 * 1024) {
      this.#closedError = new QmpError('QMP_PROTOCOL', 'QMP peer sent over 16 MiB without a line break');
      this.#socket.destroy();
    }
  }

  #onLine(line: string): void {
    this.#options.traffic?.('<', line);
    let message: Record<string, unknown>;
    try {
      const parsed: unknown = JSON.parse(line);
      if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw new Error('not a JSON object');
      message = parsed as Record<string, unknown>;
    } catch (error) {
      this.#options.onProtocolWarning?.(`Skipped a QMP line that is not a JSON object (${(error as Error).message}): ${line.slice(0, 200)}`);
      return;
    }
    if ('QMP' in message) {
      this.#greetingWaiter?.(message.QMP as Record<string, unknown>);
      return;
    }
    if (typeof message.event === 'string') {
      const timestamp = message.timestamp as { seconds?: number; microseconds?: number } | undefined;
      const event: QmpEvent = {
        event: message.event,
        data: (message.data as Record<string, unknown>) ?? {},
        timestampMs: timestamp?.seconds !== undefined ? timestamp.seconds * 1000 + Math.floor((timestamp.microseconds ?? 0) / 1000) : Date.now(),
      };
      for (const subscription of this.#subscriptions) subscription.push(event);
      return;
    }
    const pending = typeof message.id === 'number' ? this.#pending.get(message.id) : undefined;
    if (!pending) {
      this.#options.onProtocolWarning?.(`Skipped a QMP reply that matches no pending command: ${line.slice(0, 200)}`);
      return;
    }
    this.#pending.delete(message.id as number);
    if ('return' in message) {
      pending.resolve(message.return);
    } else if (typeof message.error === 'object' && message.error !== null) {
      const error = message.error as { class?: string; desc?: string };
      pending.reject(new QmpError('QMP_COMMAND_FAILED', `QEMU refused ${pending.command}: ${error.desc ?? 'no description'}`, { qmpClass: error.class }));
    } else {
      pending.reject(new QmpError('QMP_PROTOCOL', `QMP reply to ${pending.command} has neither return nor error`));
    }
  }

  #failAll(error: QmpError): void {
    for (const [id, pending] of this.#pending) {
      this.#pending.delete(id);
      pending.reject(error);
    }
    for (const subscription of this.#subscriptions) subscription.end();
    this.#subscriptions.clear();
  }
}
