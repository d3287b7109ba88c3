/**
 * The web console's sign-in: like POST /v1/auth/login, but the session secret goes into an
 * HttpOnly cookie (session-cookie.ts) instead of the answer, so no script of the page can read it.
 * A token holder gets a cookie session with the token's own limits. Signing out is
 * POST /v1/auth/logout, which also clears the cookie.
 */
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { Type } from '@sinclair/typebox';
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { AccessControl } from '../../access/access-control.ts';
import { SESSION_HOURS } from '../../access/users.ts';
import { NubisError } from '../../core/errors.ts';
import { LoginRequest, UserName } from '../../wire/access-schemas.ts';
import { Timestamp } from '../../wire/schemas.ts';
import { isSameOrigin, setSessionCookie } from '../session-cookie.ts';
import { errorResponses } from './common.ts';

export type WebSessionRouteServices = { access: AccessControl };

const WebSession = Type.Object({
  user: UserName,
  expiresAt: Timestamp,
});

/** A browser's sign-in must come from this origin's page (a login forged by another site would sign the victim in as the attacker). */
function refuseForeignOrigin(request: FastifyRequest): void {
  if (request.headers.origin !== undefined && !isSameOrigin(request))
    throw new NubisError('AUTH_ORIGIN_REFUSED', `Sign in from this origin's own page, not from ${JSON.stringify(request.headers.origin).slice(0, 120)}`);
}

function answerWithCookie(request: FastifyRequest, reply: FastifyReply, user: string, secret: string, expiresAt: string | undefined) {
  const until = new Date(expiresAt ?? Date.now() + SESSION_HOURS * 3_600_000);
  setSessionCookie(request, reply, secret, until);
  return { user, expiresAt: until.toISOString() };
}

/** POST /v1/auth/session and POST /v1/auth/session/token. */
export const webSessionRoutes: FastifyPluginAsyncTypebox<WebSessionRouteServices> = async (app, { access }) => {
  const responses = { 200: WebSession, 400: errorResponses[400], 401: errorResponses[401], 403: errorResponses[400], 429: errorResponses[400] };
  app.post(
    '/v1/auth/session',
    {
      config: { access: { on: 'public' } },
      schema: {
        operationId: 'createWebSession',
        tags: ['access'],
        summary: 'Sign in with a password (and a TOTP code) for the web console: the session is set as an HttpOnly cookie, not answered',
        body: LoginRequest,
        response: responses,
      },
    },
    async (request, reply) => {
      refuseForeignOrigin(request);
      const { token, secret } = await access.users.login(request.body);
      return answerWithCookie(request, reply, request.body.user, secret, token.expiresAt);
    },
  );
  app.post(
    '/v1/auth/session/token',
    {
      config: { access: { on: 'self' } },
      schema: {
        operationId: 'createWebSessionFromToken',
        tags: ['access'],
        summary: 'Exchange the bearer token of this request for a web console session cookie with the same limits (project, role, end)',
        response: responses,
      },
    },
    async (request, reply) => {
      if (request.viaSessionCookie) throw new NubisError('VALIDATION_FAILED', 'Send the token to exchange in the Authorization header (Bearer TOKEN)');
      refuseForeignOrigin(request);
      const principal = request.principal!;
      const latest = Date.now() + SESSION_HOURS * 3_600_000;
      const expiresAt = new Date(principal.expiresAt ? Math.min(new Date(principal.expiresAt).getTime(), latest) : latest);
      const { token, secret } = await access.tokens.create(principal, {
        name: `web-${new Date().toISOString().slice(0, 19)}`,
        kind: 'session',
        projectId: principal.tokenProjectId ?? undefined,
        roleId: principal.tokenRole ? await access.roles.id(principal.tokenRole.name) : undefined,
        expiresAt,
      });
      return answerWithCookie(request, reply, principal.userName, secret, token.expiresAt);
    },
  );
};
