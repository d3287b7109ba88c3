/**
 * The CLI's view of the API: where it is, with which token, and how to follow an operation's
 * event stream. The CLI reaches the control plane over HTTP or HTTPS (api-fetch.ts).
 */
import { existsSync, readFileSync } from 'node:fs';
import { NubisError } from '../core/errors.ts';
import { dataPaths } from '../core/paths.ts';
import { readCredentials } from './credentials.ts';
import { type ApiFetch, apiFetch, unreachableError } from './api-fetch.ts';
import type { Operation, OperationEvent } from '../wire/schemas.ts';

export interface ApiTarget {
  url: string;
  token: string;
  /** A CA certificate file the API's certificate must chain to (HTTPS with a private CA). */
  ca?: string;
}

/**
 * URL, token and CA from flags, then NUBIS_URL / NUBIS_TOKEN / NUBIS_CA, then what `nubis login`
 * stored, then the data folder of `nubis up` (its Nubis CA only with its URL: another control
 * plane has a CA of its own).
 */
export function resolveApiTarget(dataDir: string, flags: { url?: string; token?: string; ca?: string; localAdmin?: boolean } = {}): ApiTarget {
  const paths = dataPaths(dataDir);
  let url = flags.url ?? process.env.NUBIS_URL;
  let ca = flags.ca ?? process.env.NUBIS_CA;
  // After `nubis login`: its URL and token, unless flags or the environment name others. `nubis
  // up` and `down` act as the local admin (the data folder's token), whoever signed in.
  const stored = flags.localAdmin ? undefined : readCredentials();
  if (stored && (!url || url === stored.url) && !flags.token && !process.env.NUBIS_TOKEN) {
    return { url: stored.url, token: stored.token, ...((ca ?? stored.ca) ? { ca: ca ?? stored.ca } : {}) };
  }
  if (!url && existsSync(paths.apiInfo)) {
    const info = JSON.parse(readFileSync(paths.apiInfo, 'utf8')) as { url: string; caPath?: string };
    url = info.url;
    ca ??= info.caPath;
  }
  if (!url)
    throw new NubisError(
      'CLI_NOT_CONFIGURED',
      `No Nubis API found and not signed in: sign in with nubis login --url URL, start one with npx nubis up (data folder ${dataDir}), or set NUBIS_URL and NUBIS_TOKEN`,
    );
  let token = flags.token ?? process.env.NUBIS_TOKEN;
  if (!token && existsSync(paths.adminToken)) token = readFileSync(paths.adminToken, 'utf8').trim();
  if (!token) throw new NubisError('CLI_NOT_CONFIGURED', `No API token: set NUBIS_TOKEN or run as a user who can read ${paths.adminToken}`);
  return { url, token, ...(ca ? { ca } : {}) };
}

export class ApiClient {
  readonly target: ApiTarget;
  readonly #fetch: ApiFetch;

  constructor(target: ApiTarget) {
    this.target = target;
    this.#fetch = apiFetch(target.ca);
  }

  async request<T>(method: string, path: string, body?: unknown): Promise<T> {
    const text = await this.#send(method, path, body);
    return (text ? JSON.parse(text) : undefined) as T;
  }

  /** A GET whose answer is text, not JSON (GET /metrics); an error answer is thrown as `request` throws it. */
  async text(path: string): Promise<string> {
    return this.#send('GET', path, undefined, 'text/plain');
  }

  /** Sends a request and resolves with the body of a 2xx answer; an error answer becomes a NubisError with its code. */
  async #send(method: string, path: string, body: unknown, accept?: string): Promise<string> {
    let response: Response;
    try {
      response = await this.#fetch(`${this.target.url}${path}`, {
        method,
        headers: {
          authorization: `Bearer ${this.target.token}`,
          ...(accept ? { accept } : {}),
          ...(body === undefined ? {} : { 'content-type': 'application/json' }),
        },
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (error) {
      throw unreachableError(this.target.url, error);
    }
    const text = await response.text();
    if (!response.ok) {
      const error = (text ? JSON.parse(text) : undefined) as { code?: string; message?: string; details?: Record<string, unknown> } | undefined;
      throw new NubisError(error?.code ?? `HTTP_${response.status}`, error?.message ?? `${method} ${path} answered ${response.status}`, {
        details: error?.details,
      });
    }
    return text;
  }

  /**
   * Follows the cluster-wide event stream (GET /v1/events?...`query`) until the process ends:
   * `onMessage` sees each `change` and `reset`. A dropped connection is opened again after a
   * second, resuming after the last event seen (Last-Event-ID), as a browser's EventSource does.
   */
  async followEvents(query: string, onMessage: (event: 'change' | 'reset', data: unknown) => void): Promise<never> {
    let lastEventId: string | undefined;
    for (;;) {
      let response: Response | undefined;
      try {
        response = await this.#fetch(`${this.target.url}/v1/events${query}`, {
          headers: { authorization: `Bearer ${this.target.token}`, accept: 'text/event-stream', ...(lastEventId ? { 'last-event-id': lastEventId } : {}) },
        });
      } catch {
        response = undefined;
      }
      if (response && !response.ok) {
        const error = JSON.parse((await response.text()) || '{}') as { code?: string; message?: string };
        throw new NubisError(error.code ?? `HTTP_${response.status}`, error.message ?? `GET /v1/events answered ${response.status}`);
      }
      if (response?.body) {
        for await (const block of sseBlocks(response.body as unknown as AsyncIterable<Uint8Array>)) {
          lastEventId = /^id: (.*)$/m.exec(block)?.[1] ?? lastEventId;
          const event = /^event: (.*)$/m.exec(block)?.[1];
          const data = /^data: (.*)$/m.exec(block)?.[1];
          if (data && (event === 'change' || event === 'reset')) onMessage(event, JSON.parse(data));
        }
      }
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
  }

  /**
   * Follows an operation's event stream until it ends; `onEvent` sees each progress event.
   * Resolves with the final operation (which may have failed: the caller decides).
   */
  async follow(operationId: string, onEvent: (event: OperationEvent) => void): Promise<Operation> {
    const response = await this.#fetch(`${this.target.url}/v1/operations/${operationId}/events`, {
      headers: { authorization: `Bearer ${this.target.token}`, accept: 'text/event-stream' },
    });
    if (!response.ok || !response.body) return this.request<Operation>('GET', `/v1/operations/${operationId}`);
    const decoder = new TextDecoder();
    let buffer = '';
    for await (const chunk of response.body as unknown as AsyncIterable<Uint8Array>) {
      buffer += decoder.decode(chunk, { stream: true });
      let boundary: number;
      while ((boundary = buffer.indexOf('\n\n')) !== -1) {
        const block = buffer.slice(0, boundary);
        buffer = buffer.slice(boundary + 2);
        const event = /^event: (.*)$/m.exec(block)?.[1];
        const data = /^data: (.*)$/m.exec(block)?.[1];
        if (!data) continue;
        if (event === 'progress') onEvent(JSON.parse(data) as OperationEvent);
        if (event === 'end') return JSON.parse(data) as Operation;
      }
    }
    return this.request<Operation>('GET', `/v1/operations/${operationId}`);
  }
}

/** The blocks (separated by an empty line) of a server-sent event stream, as they arrive. */
async function* sseBlocks(body: AsyncIterable<Uint8Array>): AsyncGenerator<string> {
  const decoder = new TextDecoder();
  let buffer = '';
  for await (const chunk of body) {
    buffer += decoder.decode(chunk, { stream: true });
    let boundary: number;
    while ((boundary = buffer.indexOf('\n\n')) !== -1) {
      yield buffer.slice(0, boundary);
      buffer = buffer.slice(boundary + 2);
    }
  }
}
