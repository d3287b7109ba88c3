/**
 * The typed API client: openapi-fetch over the paths of docs/openapi.json (schema.d.ts is
 * generated from it by `npm run build:web`), so a page that calls a route the API does not have,
 * or reads a field it does not send, fails the build. Requests carry the session cookie (same
 * origin); no token is kept by the page.
 */
import createClient from 'openapi-fetch';
import type { components, operations, paths } from './schema';

export type Schemas = components['schemas'];
export type Vm = Schemas['Vm'];
export type Host = Schemas['Host'];
export type Network = Schemas['Network'];
export type Pool = Schemas['Pool'];
export type Operation = Schemas['Operation'];
export type Desktop = Schemas['Desktop'];
export type DesktopPool = Schemas['DesktopPool'];
/** A pool the signed-in user may use, with the desktop they hold there ("my desktops"). */
export type MyDesktop = operations['listMyDesktops']['responses'][200]['content']['application/json'][number];

export const api = createClient<paths>({ baseUrl: window.location.origin, credentials: 'same-origin' });

/** An error the API answered: its status, stable code, sentence and details (e.g. the field). */
export class ApiError extends Error {
  readonly status: number;
  readonly code: string;
  readonly details: Record<string, unknown> | undefined;
  constructor(status: number, body: { code?: string; message?: string; details?: Record<string, unknown> } | undefined) {
    super(body?.message ?? `The API answered ${status}`);
    this.status = status;
    this.code = body?.code ?? 'HTTP_ERROR';
    this.details = body?.details;
  }

  /** The request field the API named as wrong (`body.name` -> `name`), when it named one. */
  get field(): string | undefined {
    const field = this.details?.field;
    return typeof field === 'string' ? field.replace(/^body\./, '') : undefined;
  }
}

/** Listeners told when the session ends (a 401 anywhere): the app shows the login page. */
const signedOutListeners = new Set<() => void>();
export function onSignedOut(listener: () => void): () => void {
  signedOutListeners.add(listener);
  return () => signedOutListeners.delete(listener);
}

/** The data of an openapi-fetch result, or an ApiError with the API's code and message. */
export function unwrap<T>(result: { data?: T; error?: unknown; response: Response }): T {
  if (result.response.ok) return result.data as T;
  const error = new ApiError(result.response.status, result.error as ConstructorParameters<typeof ApiError>[1]);
  if (error.status === 401) for (const listener of signedOutListeners) listener();
  throw error;
}
