/**
 * Every request's way in: who is asking (the bearer token, or the web console's session cookie
 * when the request has no Authorization header), whether the route's declared
 * permission holds on the project or platform it acts on (access/authorize.ts decides), and the
 * audit entry it leaves. Each route declares its rule in `config.access`; a route without one
 * does not start (a new route cannot ship unchecked).
 */
import type { FastifyInstance, FastifyReply, FastifyRequest, RouteOptions } from 'fastify';
import type { AccessControl } from '../access/access-control.ts';
import { type AccessTarget, type Principal, projectsWith } from '../access/authorize.ts';
import type { Permission } from '../access/permissions.ts';
import type { ConsoleKind, ConsoleTicketGrant } from '../access/console-tickets.ts';
import { finishAudit, type PendingAudit, runWithAudit } from '../audit/audit-context.ts';
import { redactSecrets } from '../audit/audit-store.ts';
import { sha256Hex } from '../access/tokens.ts';
import { NubisError } from '../core/errors.ts';
import type { Db } from '../state/database.ts';
import { ResourceName } from '../wire/schemas.ts';
import { isSameOrigin, sessionSecretOf } from './session-cookie.ts';

/**
 * How a route is guarded:
 * - `public`: no token (the OpenAPI document, signing in);
 * - `agent`: host agents with their own join or host credentials, never a user's token;
 * - `self`: any valid token (whoami, one's own tokens);
 * - `platform`: `permission` on the platform;
 * - `project`: `permission` on the project named by `?project=` or the body's `project` (default `default`);
 * - `list`: like `project` when a project is named, else the route lists what the principal may see;
 * - `resource`: the handler finds the project from the resource (an operation) and checks it.
 */
export type AccessRule =
  | { on: 'public' | 'agent' | 'self'; audit?: boolean }
  | { on: 'platform' | 'project' | 'list' | 'resource'; permission: Permission; audit?: boolean; ticket?: TicketRule; alternative?: AccessAlternative };

/**
 * A second way into a `project` route when `permission` does not hold there: asked only then,
 * with the principal and the project; true lets the request in (with `request.accessAlternative`
 * set), false leaves the permission's own refusal. A user's own desktop is the one use: its
 * consoles open without `vm.console` (desktop/desktop-broker.ts `mayOpen`).
 */
export type AccessAlternative = (request: FastifyRequest, principal: Principal, project: { id: string; name: string }) => Promise<boolean>;

/**
 * A console WebSocket that a browser opens: a console ticket of `kind` in `?ticket=` stands in
 * for the bearer token (access/console-tickets.ts); with `required`, nothing else opens it.
 * The ticket's project is the project the request acts in.
 */
export interface TicketRule {
  kind: ConsoleKind;
  required?: boolean;
}

declare module 'fastify' {
  interface FastifyContextConfig {
    access?: AccessRule;
  }
  interface FastifyRequest {
    principal?: Principal;
    /** The project the route acts in, once authorized (`project` and `list` with a project). */
    accessProject?: { id: string; name: string };
    /** For `list` without a project: the projects the principal may see (`all` for every one). */
    visibleProjects?: 'all' | string[];
    audit?: PendingAudit;
    /** The principal came from the session cookie, not an Authorization header. */
    viaSessionCookie?: boolean;
    /** What the request's console ticket was issued for (console WebSockets opened with one). */
    consoleTicket?: ConsoleTicketGrant;
    /** The route's permission did not hold: its `alternative` let the request in. */
    accessAlternative?: boolean;
  }
}

const PROJECT_NAME = new RegExp(ResourceName.pattern ?? '^.+$');

function bearerOf(request: FastifyRequest): string | undefined {
  const header = request.headers.authorization ?? '';
  return header.startsWith('Bearer ') ? header.slice(7).trim() || undefined : undefined;
}

/**
 * The baseline bench/access compares against: a valid bearer token is required (a hash lookup, as
 * before access control), nothing is authorized or audited. Never used to serve users.
 */
export function installTokenOnlyHook(app: FastifyInstance, services: { db: Db }): void {
  app.addHook('onRequest', async (request) => {
    const rule = request.routeOptions.config.access;
    if (!rule || rule.on === 'public' || rule.on === 'agent') return;
    const secret = bearerOf(request);
    const known = secret ? await services.db.selectFrom('tokens').select('id').where('secret_sha256', '=', sha256Hex(secret)).executeTakeFirst() : undefined;
    if (!known) throw new NubisError('AUTH_INVALID_TOKEN', 'The bearer token is not valid');
  });
}

/**
 * The project a request names, read only where its route's schema declares `project` (the path,
 * the query or the body): the place the route's handler reads it from too. A `?project=` added to
 * a route whose body names the project must not get authorized while the body's project is used.
 */
function namedProject(request: FastifyRequest): string | undefined {
  const schema = request.routeOptions.schema as Partial<Record<'params' | 'querystring' | 'body', { properties?: Record<string, unknown> }>> | undefined;
  const sources = { params: request.params, querystring: request.query, body: request.body } as Record<string, Record<string, unknown> | undefined>;
  const declared = (['params', 'querystring', 'body'] as const).filter((where) => schema?.[where]?.properties?.project !== undefined);
  const values = declared.map((where) => sources[where]?.project).filter((value) => value !== undefined);
  if (new Set(values).size > 1) throw new NubisError('VALIDATION_FAILED', 'The project is named twice, differently; name it once');
  const value = values[0];
  if (value === undefined) return undefined;
  if (typeof value !== 'string' || !PROJECT_NAME.test(value))
    throw new NubisError('VALIDATION_FAILED', `Invalid project ${JSON.stringify(value).slice(0, 80)}: give a project name (lowercase letters, digits and -)`);
  return value;
}

/**
 * The secret the request authenticates with: its bearer token, else the session cookie. A request
 * with an Authorization header is judged by that header alone, even when it carries a cookie too.
 */
function credentialOf(request: FastifyRequest): { secret: string | undefined; viaCookie: boolean } {
  if (request.headers.authorization !== undefined) return { secret: bearerOf(request), viaCookie: false };
  const cookie = sessionSecretOf(request);
  return { secret: cookie, viaCookie: cookie !== undefined };
}

function isMutating(request: FastifyRequest): boolean {
  return request.method !== 'GET' && request.method !== 'HEAD';
}

/** Installs authentication, authorization and auditing on `app` (before any route is registered). */
export function installAccessHooks(app: FastifyInstance, services: { db: Db; access: AccessControl }): void {
  const { db, access } = services;
  // Projects are never renamed or deleted: one found stays found (a new one is looked up on first use).
  const projects = new Map<string, { id: string; name: string }>();
  const projectByName = async (name: string) => {
    const known = projects.get(name);
    if (known) return known;
    const row = await db.selectFrom('projects').select(['id', 'name']).where('name', '=', name).executeTakeFirst();
    if (row) projects.set(name, row);
    return row;
  };
  app.addHook('onRoute', (route: RouteOptions) => {
    if (!route.config?.access) throw new Error(`Route ${route.method} ${route.url} declares no access rule (config.access)`);
  });
  // The audit context is created first, so everything after (hooks, handler, its transactions) sees it.
  app.addHook('onRequest', (request, reply, done) => {
    request.audit = { entry: undefined, written: false };
    if (!isMutating(request)) return done();
    const end = runWithAudit(request.audit, done);
    reply.raw.once('close', end);
  });
  app.addHook('onRequest', async (request) => {
    const rule = request.routeOptions.config.access;
    if (!rule || rule.on === 'public' || rule.on === 'agent') return;
    try {
      request.principal = await principalOf(request, rule, access);
    } catch (error) {
      recordEntry(request, undefined, undefined);
      throw error;
    }
  });
  app.addHook('preValidation', async (request) => {
    const rule = request.routeOptions.config.access;
    // Sign-in and agent requests have no principal yet: their changes (and attempts) are still recorded.
    if (rule && !request.principal) recordEntry(request, rule, undefined);
    if (!rule || !request.principal) return;
    let project: { id: string; name: string } | undefined;
    try {
      if (request.consoleTicket) project = ticketProject(request, request.consoleTicket);
      else if (rule.on === 'project' || rule.on === 'list') {
        const name = namedProject(request) ?? (rule.on === 'project' ? 'default' : undefined);
        if (name) project = await resolveProject(await projectByName(name), access, request.principal, rule.permission, name);
      }
      recordEntry(request, rule, project);
      if (rule.on === 'platform') access.check(request.principal, rule.permission, 'platform');
      else if ((rule.on === 'project' || rule.on === 'list') && project) {
        await checkOrAlternative(access, request, request.principal, rule, project);
        request.accessProject = project;
      } else if (rule.on === 'list') request.visibleProjects = projectsWith(request.principal, rule.permission);
    } catch (error) {
      if (request.audit && !request.audit.entry) recordEntry(request, rule, project, true);
      throw error;
    }
  });
  app.addHook('onResponse', async (request, reply) => writeOutcome(db, request, reply));
}

/** `rule.permission` on `project`, else the rule's alternative; the permission's refusal when neither lets in. */
async function checkOrAlternative(
  access: AccessControl,
  request: FastifyRequest,
  principal: Principal,
  rule: { permission: Permission; alternative?: AccessAlternative },
  project: { id: string; name: string },
): Promise<void> {
  try {
    access.check(principal, rule.permission, { project });
  } catch (error) {
    if (!rule.alternative || !(await rule.alternative(request, principal, project).catch(() => false))) throw error;
    request.accessAlternative = true;
  }
}

/**
 * The project named `name` for an authorization check. A principal who could not act there
 * anyway is told it lacks the permission, not whether the project exists.
 */
function resolveProject(
  row: { id: string; name: string } | undefined,
  access: AccessControl,
  principal: Principal,
  permission: Permission,
  name: string,
): { id: string; name: string } {
  if (row) return row;
  if (projectsWith(principal, permission) === 'all')
    throw new NubisError('PROJECT_NOT_FOUND', `No project ${name}; create it with nubis project create ${name}`);
  access.check(principal, permission, { project: { id: '', name } });
  throw new NubisError('PROJECT_NOT_FOUND', `No project ${name}`);
}

/** Prepares the request's audit entry: for changes, consoles and every denial. */
function recordEntry(request: FastifyRequest, rule: AccessRule | undefined, project: { id: string; name: string } | undefined, force = false): void {
  if (!request.audit || request.audit.entry) return;
  const audited = force || rule === undefined || rule.audit === true || (isMutating(request) && rule.audit !== false);
  if (!audited) return;
  const params = redactSecrets({ ...(request.body && typeof request.body === 'object' ? { body: request.body } : {}), query: request.query }) as Record<
    string,
    unknown
  >;
  request.audit.entry = {
    ...(request.principal ? { user: request.principal.userName, token: request.principal.tokenName } : {}),
    ...(project ? { projectId: project.id, project: project.name } : {}),
    action: rule && 'permission' in rule ? rule.permission : ((request.routeOptions.schema?.operationId as string | undefined) ?? 'request'),
    method: request.method,
    route: request.routeOptions.url ?? request.url.split('?')[0].slice(0, 200),
    ...(request.params && Object.keys(request.params as object).length > 0 ? { resource: redactSecrets(request.params) as Record<string, string> } : {}),
    params,
    result: 'ok',
  };
}

/** Writes the entry with how the request ended, unless a transaction of the request already wrote it. */
async function writeOutcome(db: Db, request: FastifyRequest, reply: FastifyReply): Promise<void> {
  const pending = request.audit;
  const status = reply.statusCode;
  // Every denial is recorded, also one a handler decided (an agent's wrong credential).
  if (pending && !pending.entry && (status === 401 || status === 403)) recordEntry(request, request.routeOptions.config.access, request.accessProject, true);
  if (!pending?.entry || pending.written) return;
  const failure = (reply as FastifyReply & { nubisError?: { code: string; message: string } }).nubisError;
  const result = status < 400 ? 'ok' : status === 401 || status === 403 ? 'denied' : 'failed';
  await finishAudit(db, pending, {
    result,
    status,
    ...(failure ? { code: failure.code } : {}),
    ...(result === 'denied' && failure ? { reason: failure.message } : {}),
  });
}

/**
 * Who a request is: its console ticket's token where the route takes tickets and one is given
 * (the ticket is spent here, before anything else), else its bearer token.
 */
async function principalOf(request: FastifyRequest, rule: AccessRule, access: AccessControl): Promise<Principal> {
  const { secret, viaCookie } = credentialOf(request);
  const ticketRule = 'ticket' in rule ? rule.ticket : undefined;
  const ticket = ticketRule ? (request.query as Record<string, unknown> | undefined)?.ticket : undefined;
  if (ticketRule && typeof ticket === 'string' && ticket !== '') {
    // A credential sent along (a page's session cookie, the CLI's bearer token) must be the one the ticket was issued to.
    const { principal, grant } = await access.redeemConsoleTicket(ticket, ticketRule.kind, secret);
    request.consoleTicket = grant;
    return principal;
  }
  if (ticketRule?.required)
    throw new NubisError(
      'AUTH_REQUIRED',
      `This console opens with a console ticket in ?ticket=: POST /v1/vms/{vm}/console-ticket with {"kind":"${ticketRule.kind}"} gives one`,
    );
  // Set before the origin check, so that a refused change is audited as its user's.
  request.principal = await access.tokens.authenticate(secret);
  request.viaSessionCookie = viaCookie;
  if (viaCookie && isMutating(request) && !isSameOrigin(request))
    throw new NubisError(
      'AUTH_ORIGIN_REFUSED',
      `A change with the session cookie must come from this origin's pages (Origin ${JSON.stringify(request.headers.origin ?? '(none)').slice(0, 120)}); other clients send a bearer token`,
    );
  return request.principal;
}

/** A ticket's request acts in the ticket's project; a `?project=` naming another one is refused. */
function ticketProject(request: FastifyRequest, grant: ConsoleTicketGrant): { id: string; name: string } {
  const named = namedProject(request);
  if (named !== undefined && named !== grant.project.name)
    throw new NubisError('ACCESS_DENIED', `The console ticket was issued for project ${grant.project.name}, not ${named}`);
  return grant.project;
}

/** The project a `resource` route acts in, checked: for routes whose project comes from the resource itself. */
export function checkResource(access: AccessControl, request: FastifyRequest, permission: Permission, target: AccessTarget): void {
  const principal = request.principal;
  if (!principal) throw new NubisError('AUTH_REQUIRED', 'This request needs a bearer token');
  if (request.audit?.entry && target !== 'platform') {
    request.audit.entry.projectId = target.project.id;
    request.audit.entry.project = target.project.name;
  }
  try {
    access.check(principal, permission, target);
  } catch (error) {
    if (request.audit?.entry === undefined && request.audit)
      recordEntry(request, { on: 'resource', permission }, target === 'platform' ? undefined : target.project, true);
    throw error;
  }
}
