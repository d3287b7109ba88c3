/**
 * Signing in and out of the web console. The session secret travels only in an HttpOnly cookie
 * that the API sets (POST /v1/auth/session): this code never sees it, and nothing is kept in
 * local storage. A token typed on the login page is exchanged for such a cookie session once.
 */
import { api, unwrap } from './client';

export type WhoAmI = Awaited<ReturnType<typeof whoAmI>>;

/** Who the cookie session acts as, or undefined when there is none. */
export async function whoAmI() {
  const result = await api.GET('/v1/auth/whoami');
  if (result.response.status === 401) return undefined;
  return unwrap(result);
}

/** Signs in with a user name and password (and a TOTP code when the user has one). */
export async function signInWithPassword(user: string, password: string, totp?: string): Promise<void> {
  unwrap(await api.POST('/v1/auth/session', { body: { user, password, ...(totp ? { totp } : {}) } }));
}

/** Exchanges an API token for a cookie session limited as the token is; the token is not kept. */
export async function signInWithToken(token: string): Promise<void> {
  unwrap(await api.POST('/v1/auth/session/token', { headers: { authorization: `Bearer ${token.trim()}` } }));
}

/** Revokes the session and clears its cookie. */
export async function signOut(): Promise<void> {
  unwrap(await api.POST('/v1/auth/logout'));
}
