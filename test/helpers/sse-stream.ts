/**
 * A client of the server-sent event stream (GET /v1/events) over a real HTTP connection: the
 * messages as they come, and waiting for one.
 */
import { request as httpRequest, type IncomingMessage } from 'node:http';

export interface SseMessage {
  id?: string;
  event: string;
  data: unknown;
}

/** An open event stream: the messages so far, and waiting for one. */
export interface SseStream {
  status: number;
  messages: SseMessage[];
  next(predicate: (message: SseMessage) => boolean, timeoutMs?: number): Promise<SseMessage>;
  ended: Promise<void>;
  close(): void;
}

/** Opens `url` as an event stream (status first; messages as they come). */
export function openStream(url: string, token: string, headers: Record<string, string> = {}): Promise<SseStream> {
  return new Promise((resolve, reject) => {
    const request = httpRequest(
      url,
      { headers: { authorization: `Bearer ${token}`, accept: 'text/event-stream', ...headers } },
      (response: IncomingMessage) => {
        const messages: SseMessage[] = [];
        const waiters = new Set<() => void>();
        let buffer = '';
        response.setEncoding('utf8');
        response.on('data', (chunk: string) => {
          buffer += chunk;
          for (let end = buffer.indexOf('\n\n'); end >= 0; end = buffer.indexOf('\n\n')) {
            const block = buffer.slice(0, end);
            buffer = buffer.slice(end + 2);
            const fields = new Map<string, string>();
            for (const line of block.split('\n')) if (!line.startsWith(':')) fields.set(line.slice(0, line.indexOf(':')), line.slice(line.indexOf(':') + 2));
            if (!fields.has('data')) continue;
            messages.push({ id: fields.get('id'), event: fields.get('event') ?? 'message', data: JSON.parse(fields.get('data')!) });
            for (const wake of waiters) wake();
          }
        });
        const ended = new Promise<void>((done) => response.on('close', done));
        resolve({
          status: response.statusCode ?? 0,
          messages,
          ended,
          close: () => request.destroy(),
          next: (predicate, timeoutMs = 10_000) =>
            new Promise((found, fail) => {
              const check = () => {
                const match = messages.find(predicate);
                if (!match) return;
                clearTimeout(timer);
                waiters.delete(check);
                found(match);
              };
              const timer = setTimeout(() => {
                waiters.delete(check);
                fail(new Error(`No such event within ${timeoutMs} ms; got ${JSON.stringify(messages).slice(0, 2000)}`));
              }, timeoutMs);
              waiters.add(check);
              check();
            }),
        });
      },
    );
    request.on('error', reject);
    request.end();
  });
}
