/** Signing in and out, who am I, a second factor, and one's own API tokens. */
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { Type } from '@sinclair/typebox';
import type { AccessControl } from '../../access/access-control.ts';
import { NubisError } from '../../core/errors.ts';
import type { Db } from '../../state/database.ts';
import {
  IssuedToken,
  LoginRequest,
  OidcLoginRequest,
  Token,
  TokenCreateRequest,
  TokenName,
  TotpCode,
  TotpEnrolment,
  UserName,
  WhoAmI,
} from '../../wire/access-schemas.ts';
import { List } from '../../wire/schemas.ts';
import { checkResource } from '../access-hook.ts';
import { clearSessionCookie } from '../session-cookie.ts';
import { errorResponses, listErrorResponses } from './common.ts';

export type AuthRouteServices = { db: Db; access: AccessControl };

/** The routes under /v1/auth and /v1/tokens. */
export const authRoutes: FastifyPluginAsyncTypebox<AuthRouteServices> = async (app, services) => {
  registerSignInRoutes(app, services);
  registerSessionRoutes(app, services);
  registerTokenRoutes(app, services);
};

type RouteApp = Parameters<FastifyPluginAsyncTypebox>[0];

/** Signing in: with a password (and TOTP), or with an OpenID Connect ID token. */
function registerSignInRoutes(app: RouteApp, { access }: AuthRouteServices): void {
  const signInResponses = {
    200: IssuedToken,
    400: errorResponses[400],
    401: errorResponses[401],
    422: errorResponses[422],
    429: errorResponses[400],
    503: errorResponses[503],
  };
  app.post(
    '/v1/auth/login',
    {
      config: { access: { on: 'public' } },
      schema: {
        operationId: 'login',
        tags: ['access'],
        summary: 'Sign in with a password (and a TOTP code): a session token',
        body: LoginRequest,
        response: signInResponses,
      },
    },
    async (request) => access.users.login(request.body),
  );
  app.post(
    '/v1/auth/oidc',
    {
      config: { access: { on: 'public' } },
      schema: {
        operationId: 'loginOidc',
        tags: ['access'],
        summary: 'Sign in with an ID token of the configured OpenID Connect provider (its groups map to roles)',
        body: OidcLoginRequest,
        response: signInResponses,
      },
    },
    async (request) => {
      const { token, secret } = await access.users.loginOidc(request.body.idToken);
      return { token, secret };
    },
  );
}

/** The session of the request: sign out, who am I, a second factor. */
function registerSessionRoutes(app: RouteApp, { db, access }: AuthRouteServices): void {
  app.post(
    '/v1/auth/logout',
    {
      config: { access: { on: 'self' } },
      schema: {
        operationId: 'logout',
        tags: ['access'],
        summary: 'Revoke the token of this request (end the session); a web console session also has its cookie cleared',
        response: { 204: Type.Null(), ...errorResponses },
      },
    },
    async (request, reply) => {
      await access.tokens.revoke([request.principal!.tokenId]);
      if (request.viaSessionCookie) clearSessionCookie(request, reply);
      return reply.status(204).send(null);
    },
  );
  app.get(
    '/v1/auth/whoami',
    {
      config: { access: { on: 'self' } },
      schema: {
        operationId: 'whoami',
        tags: ['access'],
        summary: 'Who this token acts as, with which roles and limits',
        response: { 200: WhoAmI, ...listErrorResponses },
      },
    },
    async (request) => {
      const principal = request.principal!;
      const projects = new Map((await db.selectFrom('projects').select(['id', 'name']).execute()).map((p) => [p.id, p.name]));
      const token = await db.selectFrom('tokens').select(['kind']).where('id', '=', principal.tokenId).executeTakeFirstOrThrow();
      const user = await access.users.row(principal.userName);
      return {
        user: principal.userName,
        hasPassword: user.password_hash !== null,
        token: principal.tokenName,
        tokenKind: token.kind,
        ...(principal.expiresAt ? { expiresAt: principal.expiresAt } : {}),
        ...(principal.tokenProjectId ? { limitedToProject: projects.get(principal.tokenProjectId) } : {}),
        ...(principal.tokenRole ? { limitedToRole: principal.tokenRole.name } : {}),
        roles: principal.grants.map((grant) => ({ role: grant.role, ...(grant.projectId ? { project: projects.get(grant.projectId) } : {}), via: grant.via })),
      };
    },
  );
  app.post(
    '/v1/auth/totp',
    {
      config: { access: { on: 'self' } },
      schema: {
        operationId: 'enrollTotp',
        tags: ['access'],
        summary: 'Start a TOTP second factor: a secret for the authenticator app (active once confirmed)',
        response: { 200: TotpEnrolment, ...errorResponses },
      },
    },
    async (request) => access.users.enrollTotp(request.principal!.userId),
  );
  app.post(
    '/v1/auth/totp/confirm',
    {
      config: { access: { on: 'self' } },
      schema: {
        operationId: 'confirmTotp',
        tags: ['access'],
        summary: 'Turn the second factor on with a code from the authenticator app',
        body: Type.Object({ code: TotpCode }, { additionalProperties: false }),
        response: { 204: Type.Null(), ...errorResponses },
      },
    },
    async (request, reply) => {
      await access.users.confirmTotp(request.principal!.userId, request.body.code);
      return reply.status(204).send(null);
    },
  );
}

/** One's own tokens; with token.manage, everyone's. */
function registerTokenRoutes(app: RouteApp, { db, access }: AuthRouteServices): void {
  app.get(
    '/v1/tokens',
    {
      config: { access: { on: 'self' } },
      schema: {
        operationId: 'listTokens',
        tags: ['access'],
        summary: "Your tokens and sessions (every user's with all=true, which needs token.manage)",
        querystring: Type.Object({ all: Type.Boolean({ default: false }) }, { additionalProperties: false }),
        response: { 200: List(Token), ...errorResponses },
      },
    },
    async (request) => {
      if (request.query.all) checkResource(access, request, 'token.manage', 'platform');
      return access.tokens.list(request.query.all ? undefined : request.principal!.userId);
    },
  );
  app.post(
    '/v1/tokens',
    {
      config: { access: { on: 'self' } },
      schema: {
        operationId: 'createToken',
        tags: ['access'],
        summary: 'Make a named token for yourself, optionally limited to a project and a role (never wider than you); the secret is shown once',
        body: TokenCreateRequest,
        response: { 201: IssuedToken, ...errorResponses },
      },
    },
    async (request, reply) => {
      const { name, project, role, expiresInSeconds } = request.body;
      const projectRow = project ? await db.selectFrom('projects').select('id').where('name', '=', project).executeTakeFirst() : undefined;
      if (project && !projectRow) throw new NubisError('PROJECT_NOT_FOUND', `No project ${project}`);
      const issued = await access.tokens.create(request.principal!, {
        name,
        projectId: projectRow?.id,
        roleId: role ? await access.roles.id(role) : undefined,
        expiresAt: expiresInSeconds ? new Date(Date.now() + expiresInSeconds * 1000) : undefined,
      });
      return reply.status(201).send(issued);
    },
  );
  app.delete(
    '/v1/tokens/:name',
    {
      config: { access: { on: 'self' } },
      schema: {
        operationId: 'revokeToken',
        tags: ['access'],
        summary: "Revoke one of your tokens (another user's with ?user=, which needs token.manage); open consoles of it close",
        params: Type.Object({ name: TokenName }),
        querystring: Type.Object({ user: Type.Optional(UserName) }, { additionalProperties: false }),
        response: { 204: Type.Null(), ...errorResponses },
      },
    },
    async (request, reply) => {
      let userId = request.principal!.userId;
      if (request.query.user && request.query.user !== request.principal!.userName) {
        checkResource(access, request, 'token.manage', 'platform');
        userId = (await access.users.row(request.query.user)).id;
      }
      const token = await access.tokens.find(userId, request.params.name);
      await access.tokens.revoke([token.id]);
      return reply.status(204).send(null);
    },
  );
}
