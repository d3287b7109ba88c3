/**
 * The serial console of a VM: a WebSocket relayed to the host agent's console socket. The route
 * is hidden from @fastify/swagger, so its OpenAPI entry is written here by hand.
 */
import type { AccessControl } from '../../access/access-control.ts';
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import type { FastifyRequest } from 'fastify';
import WebSocket from 'ws';
import { finishAudit } from '../../audit/audit-context.ts';
import type { HostRegistry } from '../../control/hosts.ts';
import type { Db } from '../../state/database.ts';
import type { VmService } from '../../control/vms.ts';
import { httpStatusOf } from '../../core/error-codes.ts';
import { NubisError, messageOf } from '../../core/errors.ts';
import { parseEndpoint } from '../../core/http-json.ts';
import { ProjectQuery, ResourceName, VmRef } from '../../wire/schemas.ts';

/** What the console route uses: the VM's host, and the token the control plane presents to its agent. */
export type ConsoleRouteServices = { db: Db; vms: VmService; hosts: HostRegistry; access: AccessControl };

/** The serial console route, which is a WebSocket and so not seen by @fastify/swagger. */
export const consolePath = {
  '/v1/vms/{vm}/console': {
    get: {
      operationId: 'openVmConsole',
      tags: ['vms'],
      summary: 'Interactive serial console: a WebSocket upgrade; binary frames carry the bytes both ways',
      parameters: [
        {
          name: 'vm',
          in: 'path',
          required: true,
          schema: { type: 'string', pattern: ResourceName.pattern, maxLength: ResourceName.maxLength },
          description: 'VM name (in the project) or id',
        },
        { name: 'project', in: 'query', required: false, schema: { type: 'string', pattern: ResourceName.pattern, maxLength: ResourceName.maxLength } },
      ],
      responses: {
        '101': { description: 'Switching to the WebSocket protocol' },
        '400': { description: 'Invalid VM reference or project', content: { 'application/json': { schema: { $ref: '#/components/schemas/Error' } } } },
        '401': { description: 'No or wrong bearer token', content: { 'application/json': { schema: { $ref: '#/components/schemas/Error' } } } },
        '403': {
          description:
            'The token lacks vm.console in the project, or a foreign origin. An open console closes with code 4401 when its token is revoked, expires or loses vm.console',
          content: { 'application/json': { schema: { $ref: '#/components/schemas/Error' } } },
        },
        '404': { description: 'No such VM', content: { 'application/json': { schema: { $ref: '#/components/schemas/Error' } } } },
        '409': { description: 'Someone else is attached', content: { 'application/json': { schema: { $ref: '#/components/schemas/Error' } } } },
      },
    },
  },
};

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

/** GET /v1/vms/:vm/console, a WebSocket upgrade. */
export const consoleRoutes: FastifyPluginAsyncTypebox<ConsoleRouteServices> = async (app, services) => {
  app.get(
    '/v1/vms/:vm/console',
    {
      websocket: true,
      config: { access: { on: 'project', permission: 'vm.console', audit: true } },
      schema: {
        operationId: 'openVmConsole',
        tags: ['vms'],
        summary: 'Interactive serial console (WebSocket; binary frames both ways)',
        params: VmRef,
        querystring: ProjectQuery,
      },
      preValidation: refuseForeignOrigin,
    },
    (socket, request) => {
      const params = request.params as { vm: string };
      const query = request.query as { project?: string };
      void services.vms.consoleTarget(params.vm, query.project).then(
        ({ host, vmId }) => {
          // A WebSocket has no response to end with: its entry is written when the console opens.
          if (request.audit) void finishAudit(services.db, request.audit, { result: 'ok', status: 101 });
          const { socketPath, host: address, port } = parseEndpoint(host.endpoint);
          const url = socketPath ? `ws+unix://${socketPath}:/agent/vms/${vmId}/console` : `ws://${address}:${port}/agent/vms/${vmId}/console`;
          const upstream = new WebSocket(url, { headers: { authorization: `Bearer ${services.hosts.controlTokenFor(host)}` } });
          const pending: Buffer[] = [];
          socket.on('message', (data: Buffer) => (upstream.readyState === WebSocket.OPEN ? upstream.send(data) : pending.push(data)));
          upstream.on('open', () => {
            for (const data of pending.splice(0)) upstream.send(data);
          });
          upstream.on('message', (data: Buffer) => socket.send(data));
          upstream.on('close', (code, reason) => socket.close(code >= 4000 ? code : 1000, reason.toString()));
          upstream.on('error', () => socket.close(1011, 'The host agent console is not reachable'));
          // Open as long as its token holds vm.console there: a revoked token, an ended session or a revoked role closes it (4401).
          const unwatch = services.access.watch(request.principal!, 'vm.console', { project: request.accessProject! }, (reason) =>
            socket.close(4401, reason.slice(0, 120)),
          );
          socket.on('close', () => {
            unwatch();
            upstream.close();
          });
        },
        (error) => socket.close(4000 + (httpStatusOf((error as NubisError).code ?? '') % 1000), messageOf(error).slice(0, 120)),
      );
    },
  );
};
