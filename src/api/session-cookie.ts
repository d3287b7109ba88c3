/**
 * The web console's session cookie: the secret of a session token, set by the API and sent back
 * by the browser, never readable by the page's scripts (HttpOnly) nor sent by another site's
 * request (SameSite=Strict). Over TLS it is `Secure` and takes the `__Host-` prefix, which the
 * browser accepts only from this origin with Path=/ and no Domain (RFC 6265bis 4.1.3.2).
 */
import type { FastifyReply, FastifyRequest } from 'fastify';

export const SESSION_COOKIE = 'nubis_session';
export const SECURE_SESSION_COOKIE = '__Host-nubis_session';

function isTls(request: FastifyRequest): boolean {
  return request.protocol === 'https';
}

/** The cookie's name on this request's scheme. */
export function sessionCookieName(request: FastifyRequest): string {
  return isTls(request) ? SECURE_SESSION_COOKIE : SESSION_COOKIE;
}

/** The session secret the request's cookie carries, if any. */
export function sessionSecretOf(request: FastifyRequest): string | undefined {
  return request.cookies?.[sessionCookieName(request)] || undefined;
}

/** Sets the cookie to `secret` until `expiresAt` (the session token's own end). */
export function setSessionCookie(request: FastifyRequest, reply: FastifyReply, secret: string, expiresAt: Date): void {
  reply.setCookie(sessionCookieName(request), secret, { httpOnly: true, sameSite: 'strict', secure: isTls(request), path: '/', expires: expiresAt });
}

/** Clears the cookie in the browser (the session itself is revoked by the caller). */
export function clearSessionCookie(request: FastifyRequest, reply: FastifyReply): void {
  reply.clearCookie(sessionCookieName(request), { httpOnly: true, sameSite: 'strict', secure: isTls(request), path: '/' });
}

/**
 * Whether the request's Origin header names this very origin. A cookie-authenticated change must
 * come from the console's own pages: SameSite=Strict already keeps other sites' requests from
 * carrying the cookie, and this check still holds where a browser or a sibling subdomain would
 * not honour that (defence in depth against cross-site request forgery).
 */
export function isSameOrigin(request: FastifyRequest): boolean {
  const origin = request.headers.origin;
  return origin !== undefined && origin === `${request.protocol}://${request.host}`;
}
