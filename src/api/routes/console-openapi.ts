/**
 * The OpenAPI entries of the console WebSockets, written by hand: @fastify/websocket hides its
 * routes from @fastify/swagger. The close codes are the contract a page reconnects by.
 */
import { ResourceName } from '../../wire/schemas.ts';

const errorContent = { 'application/json': { schema: { $ref: '#/components/schemas/Error' } } };
const vmParameter = {
  name: 'vm',
  in: 'path',
  required: true,
  schema: { type: 'string', pattern: ResourceName.pattern, maxLength: ResourceName.maxLength },
  description: 'VM name (in the project) or id',
};
const projectParameter = {
  name: 'project',
  in: 'query',
  required: false,
  schema: { type: 'string', pattern: ResourceName.pattern, maxLength: ResourceName.maxLength },
  description: 'With a ticket: the ticket names the project (another one here is refused)',
};
const ticketParameter = (required: boolean) => ({
  name: 'ticket',
  in: 'query',
  required,
  schema: { type: 'string', maxLength: 100 },
  description: 'A one-time console ticket (POST /v1/vms/{vm}/console-ticket): single use, valid 30 s',
});

/** How an open console ends, by close code (both WebSockets). */
export const CONSOLE_CLOSE_CODES =
  'Close codes: 1000 ended (the VM stopped, or either side closed); 1011 the host agent is not reachable; 4000 "moved": the VM now runs on another host (live migration, HA restart): ask for a new ticket and reconnect; 4401 the token was revoked, expired or lost vm.console; 4404 the VM is not on its host; 4409 the console is busy';

const responses = (what: string) => ({
  '101': { description: `Switching to the WebSocket protocol; binary frames carry ${what} both ways. ${CONSOLE_CLOSE_CODES}` },
  '400': { description: 'Invalid VM reference or project', content: errorContent },
  '401': { description: 'No or wrong bearer token, or a console ticket that is unknown, used, expired or of the other kind', content: errorContent },
  '403': {
    description: 'The token lacks vm.console in the project, a foreign Origin, or a ticket of another VM, project or token',
    content: errorContent,
  },
  '404': { description: 'No such VM', content: errorContent },
});

/** The console WebSockets, for the OpenAPI document. */
export const consolePath = {
  '/v1/vms/{vm}/console': {
    get: {
      operationId: 'openVmConsole',
      tags: ['vms'],
      summary: 'Interactive serial console: a WebSocket upgrade with a bearer token (CLI) or a serial console ticket (browser)',
      parameters: [vmParameter, projectParameter, ticketParameter(false)],
      responses: { ...responses('the console bytes'), '409': { description: 'Someone else is attached', content: errorContent } },
    },
  },
  '/v1/vms/{vm}/vnc': {
    get: {
      operationId: 'openVmVnc',
      tags: ['vms'],
      summary: "The VM's screen: a WebSocket upgrade with a vnc console ticket; the frames are RFB (VNC), authenticated with the ticket's one-time password",
      parameters: [vmParameter, projectParameter, ticketParameter(true)],
      responses: responses('RFB'),
    },
  },
};
