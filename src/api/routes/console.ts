/**
 * A VM's consoles: the serial console and the screen (VNC), each a WebSocket relayed to the VM's
 * host agent (agent-api AGENT_STREAMS). A browser cannot send an Authorization header on a
 * WebSocket, so it first asks for a console ticket (POST .../console-ticket, with its token) and
 * opens the WebSocket with `?ticket=`; the CLI's serial console still sends its bearer token.
 * The access hook spends the ticket and re-checks its token (access-hook.ts), this file checks
 * the Origin and the ticket's VM. The OpenAPI entries of the WebSockets are in console-openapi.ts.
 */
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import type { FastifyRequest } from 'fastify';
import type { WebSocket } from '@fastify/websocket';
import type { AccessControl } from '../../access/access-control.ts';
import type { Principal } from '../../access/authorize.ts';
import type { ConsoleKind } from '../../access/console-tickets.ts';
import { finishAudit } from '../../audit/audit-context.ts';
import type { HostRegistry } from '../../control/hosts.ts';
import type { VmService } from '../../control/vms.ts';
import { NubisError, messageOf } from '../../core/errors.ts';
import type { HostsTable } from '../../state/schema.ts';
import type { Db } from '../../state/database.ts';
import { ConsoleTicket, ConsoleTicketRequest } from '../../wire/access-schemas.ts';
import { Type } from '@sinclair/typebox';
import { ErrorBody, ProjectQuery, ResourceName, VmRef } from '../../wire/schemas.ts';
import type { AccessAlternative } from '../access-hook.ts';
import { errorResponses } from './common.ts';

/**
 * The desktop broker as the consoles see it: a user's own desktop opens without `vm.console`,
 * and the grace time of floating desktops counts from the moment their last console closed.
 */
export interface DesktopConsoleGate {
  mayOpen(user: Principal, vmId: string): Promise<boolean>;
  consoleOpened(vmId: string, userId: string, close?: (reason: string) => void): Promise<void>;
  consoleClosed(vmId: string, userId: string, close?: (reason: string) => void): Promise<void>;
}

/** What the console routes use: the VM's host and agent, access control, the audit log and the desktop broker. */
export type ConsoleRouteServices = { db: Db; vms: VmService; hosts: HostRegistry; access: AccessControl; desktops?: DesktopConsoleGate };

/** The close code that tells a page the VM now runs on another host: ask for a new ticket and reconnect. */
export const CONSOLE_MOVED_CODE = 4000;

/**
 * A browser sends its page's Origin with every WebSocket, and lets any page open one to any
 * site: only pages of this API's own origin may attach. The CLI sends no Origin.
 */
async function refuseForeignOrigin(request: FastifyRequest): Promise<void> {
  const origin = request.headers.origin;
  if (origin === undefined) return;
  let originHost: string | undefined;
  try {
    originHost = new URL(origin).host;
  } catch {
    originHost = undefined;
  }
  if (originHost !== request.headers.host)
    throw new NubisError('AUTH_FORBIDDEN', `A console may be opened only from this API's own origin, not from ${origin.slice(0, 100)}`);
}

type Target = { host: HostsTable; vmId: string };

/** A console WebSocket's query: the project, and the ticket that the access hook has already spent. */
const ConsoleQuery = Type.Object(
  { project: Type.Optional(ResourceName), ticket: Type.Optional(Type.String({ maxLength: 100 })) },
  { additionalProperties: false },
);

/** GET /v1/vms/:vm/console and /vnc (WebSockets) and POST /v1/vms/:vm/console-ticket. */
export const consoleRoutes: FastifyPluginAsyncTypebox<ConsoleRouteServices> = async (app, services) => {
  // Without vm.console, the VM must be the caller's own desktop: asked when the ticket is issued and again when it is used.
  const ownDesktop: AccessAlternative = async (request, principal, project) => {
    if (!services.desktops) return false;
    const vmId = request.consoleTicket?.vmId ?? (await services.vms.consoleTarget((request.params as { vm: string }).vm, project.name)).vmId;
    return services.desktops.mayOpen(principal, vmId);
  };
  app.post(
    '/v1/vms/:vm/console-ticket',
    {
      config: { access: { on: 'project', permission: 'vm.console', alternative: ownDesktop } },
      schema: {
        operationId: 'createConsoleTicket',
        tags: ['vms'],
        summary:
          "A one-time ticket to open the VM's screen (vnc, with its one-time VNC password) or serial console from a browser: single use, valid 30 s, bound to you, this token and this VM",
        params: VmRef,
        querystring: ProjectQuery,
        body: ConsoleTicketRequest,
        response: { 201: ConsoleTicket, ...errorResponses, 403: ErrorBody, 429: ErrorBody },
      },
    },
    async (request, reply) => {
      const project = request.accessProject!;
      const { vmId } = await services.vms.consoleTarget(request.params.vm, project.name);
      const { kind } = request.body;
      const issued = services.access.consoleTickets.issue(request.principal!, { kind, vmId, project });
      return reply.status(201).send({
        ticket: issued.ticket,
        expiresAt: issued.expiresAt,
        path: `/v1/vms/${vmId}/${kind === 'vnc' ? 'vnc' : 'console'}?ticket=${encodeURIComponent(issued.ticket)}`,
        ...(issued.vncPassword ? { password: issued.vncPassword } : {}),
      });
    },
  );

  // The VM is found (and a ticket's VM checked) before the upgrade, so a refusal is an HTTP answer.
  const targets = new WeakMap<FastifyRequest, Target>();
  const findTarget = async (request: FastifyRequest): Promise<void> => {
    const target = await services.vms.consoleTarget((request.params as { vm: string }).vm, request.accessProject!.name);
    if (request.consoleTicket && request.consoleTicket.vmId !== target.vmId)
      throw new NubisError('ACCESS_DENIED', `The console ticket was issued for another VM than ${(request.params as { vm: string }).vm}`);
    targets.set(request, target);
  };
  const consoleRoute = (url: string, operationId: string, kind: ConsoleKind, summary: string) =>
    app.get(
      url,
      {
        websocket: true,
        config: { access: { on: 'project', permission: 'vm.console', audit: true, ticket: { kind, required: kind === 'vnc' }, alternative: ownDesktop } },
        schema: { operationId, tags: ['vms'], summary, params: VmRef, querystring: ConsoleQuery },
        preValidation: refuseForeignOrigin,
        preHandler: findTarget,
      },
      (socket, request) => relay(socket, request, services, targets.get(request)!, kind),
    );
  consoleRoute('/v1/vms/:vm/console', 'openVmConsole', 'serial', 'Interactive serial console (WebSocket; binary frames both ways)');
  consoleRoute('/v1/vms/:vm/vnc', 'openVmVnc', 'vnc', 'The screen of the VM (WebSocket carrying RFB)');
};

/** Joins the browser's (or CLI's) WebSocket to the agent's stream of the VM until either ends. */
function relay(socket: WebSocket, request: FastifyRequest, services: ConsoleRouteServices, target: Target, kind: ConsoleKind): void {
  // A WebSocket has no response to end with: its entry is written when the console opens.
  if (request.audit) void finishAudit(services.db, request.audit, { result: 'ok', status: 101 });
  const project = request.accessProject!;
  const upstream = services.hosts
    .agent(target.host)
    .openStream(kind === 'vnc' ? 'vnc' : 'console', target.vmId, { vncPassword: request.consoleTicket?.vncPassword });
  const pending: Buffer[] = [];
  let open = false;
  socket.on('message', (data: Buffer) => (open ? upstream.send(data) : pending.push(data)));
  upstream.listen({
    open() {
      open = true;
      for (const data of pending.splice(0)) upstream.send(data);
    },
    data: (data) => socket.send(data),
    end(code, reason) {
      void closingOf(services, target, project.name, code, reason).then(([closeCode, closeReason]) => socket.close(closeCode, closeReason));
    },
  });
  // Open as long as its token holds vm.console there: a revoked token, an ended session or a revoked role closes it (4401).
  // A desktop's console opened without vm.console is open as long as the token is valid and the desktop theirs.
  const closeRefused = (reason: string) => socket.close(4401, reason.slice(0, 120));
  const viaDesktop = request.accessAlternative === true;
  const unwatch = services.access.watch(request.principal!, viaDesktop ? null : 'vm.console', { project }, closeRefused);
  const userId = request.principal!.userId;
  const opened = services.desktops?.consoleOpened(target.vmId, userId, closeRefused).catch(() => undefined);
  socket.on('close', () => {
    unwatch();
    upstream.close();
    // The close is told after the open was recorded, so the grace time never starts before it.
    void opened?.then(() => services.desktops?.consoleClosed(target.vmId, userId, closeRefused)).catch(() => undefined);
  });
}

/**
 * How the browser's WebSocket closes after the agent's stream ended: the agent's own refusals
 * (4xxx) as they are; a stream that ended because the VM now runs on another host (the source
 * of a live migration lets its QEMU go) as 4000 "moved", so the page reconnects with a new ticket.
 */
async function closingOf(services: ConsoleRouteServices, target: Target, project: string, code: number, reason: string): Promise<[number, string]> {
  if (code >= 4000) return [code, reason.slice(0, 120)];
  try {
    const now = await services.vms.consoleTarget(target.vmId, project);
    if (now.host.id !== target.host.id) return [CONSOLE_MOVED_CODE, 'moved'];
  } catch (error) {
    return [1000, `The VM is gone: ${messageOf(error)}`.slice(0, 120)];
  }
  return code === 1011 ? [1011, reason.slice(0, 120)] : [1000, ''];
}
