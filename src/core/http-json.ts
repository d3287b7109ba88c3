/**
 * A small JSON-over-HTTP client for Nubis's own processes, which talk over unix sockets as well
 * as TCP (`unix:/path/agent.sock` or `http://host:port` endpoints). Errors in Nubis's error body
 * shape come back as NubisError with the same code.
 */
import { request } from 'node:http';
import { NubisError } from './errors.ts';

export interface JsonRequest {
  method: 'GET' | 'POST' | 'PUT' | 'DELETE';
  path: string;
  body?: unknown;
  token?: string;
  timeoutMs?: number;
  signal?: AbortSignal;
}

/** `unix:/path` -> socketPath; `http://host:port` -> host and port. */
export function parseEndpoint(endpoint: string): { socketPath?: string; host?: string; port?: number } {
  if (endpoint.startsWith('unix:')) return { socketPath: endpoint.slice('unix:'.length) };
  const url = new URL(endpoint);
  return { host: url.hostname, port: Number(url.port || 80) };
}

/** Sends one request to `endpoint` and resolves with the parsed JSON body (undefined for 204). */
export function requestJson<T>(endpoint: string, options: JsonRequest): Promise<T> {
  const body = options.body === undefined ? undefined : JSON.stringify(options.body);
  return new Promise<T>((resolve, reject) => {
    const req = request(
      {
        ...parseEndpoint(endpoint),
        method: options.method,
        path: options.path,
        headers: {
          accept: 'application/json',
          ...(body === undefined ? {} : { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) }),
          ...(options.token ? { authorization: `Bearer ${options.token}` } : {}),
        },
        timeout: options.timeoutMs ?? 30_000,
        signal: options.signal,
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (chunk: Buffer) => chunks.push(chunk));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          let parsed: unknown;
          try {
            parsed = text === '' ? undefined : JSON.parse(text);
          } catch {
            parsed = undefined;
          }
          if ((res.statusCode ?? 500) >= 400) {
            const error = parsed as { code?: string; message?: string; details?: Record<string, unknown> } | undefined;
            reject(
              new NubisError(
                error?.code ?? 'HTTP_ERROR',
                error?.message ?? `${options.method} ${options.path} answered ${res.statusCode}: ${text.slice(0, 200)}`,
                { details: { httpStatus: res.statusCode, ...error?.details } },
              ),
            );
          } else {
            resolve(parsed as T);
          }
        });
        res.on('error', reject);
      },
    );
    req.on('timeout', () =>
      req.destroy(new NubisError('HTTP_TIMEOUT', `${options.method} ${options.path} at ${endpoint} got no answer within ${options.timeoutMs ?? 30_000} ms`)),
    );
    req.on('error', (error) => {
      if (error instanceof NubisError) reject(error);
      else if ((error as { name?: string }).name === 'AbortError') reject(options.signal?.reason ?? error);
      else reject(new NubisError('HTTP_UNREACHABLE', `Cannot reach ${endpoint}: ${error.message}`, { cause: error }));
    });
    if (body !== undefined) req.write(body);
    req.end();
  });
}
