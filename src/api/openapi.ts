/**
 * How @fastify/swagger writes the OpenAPI document that /v1/openapi.json serves and
 * docs/openapi.json checks in: the routes' own TypeBox schemas, plus what no route schema says.
 */
import type { SwaggerOptions } from '@fastify/swagger';
import { consolePath } from './routes/console-openapi.ts';
import { API_VERSION } from './version.ts';

/** The options buildApp registers @fastify/swagger with, before any route. */
export const openApiOptions: SwaggerOptions = {
  openapi: {
    openapi: '3.0.3',
    info: { title: 'Nubis API', version: API_VERSION, description: 'Private-cloud virtualization: VMs, hosts, images, operations' },
    // The document is served by the API it describes: its paths are relative to the same origin.
    // x-internal: a private cloud's control plane is for its operators, not the public.
    servers: [
      { url: '/', description: 'Same origin: the production control plane that serves this document', 'x-internal': true } as {
        url: string;
        description: string;
      },
    ],
    components: {
      securitySchemes: {
        bearer: { type: 'http', scheme: 'bearer', description: 'The admin token (file admin-token in the data folder)' },
        agentBearer: { type: 'http', scheme: 'bearer', description: 'A host agent token, chosen by the agent when it joins' },
      },
    },
    security: [{ bearer: [] }],
  },
  // Components take the schemas' $id (Error, Vm, ...) rather than def-0, def-1...: stable names
  // that clients and the hand-written console path can refer to.
  refResolver: { buildLocalReference: (json, _baseUri, _fragment, i) => (typeof json.$id === 'string' ? json.$id : `def-${i}`) },
  // @fastify/websocket hides WebSocket routes from the document; list the console by hand.
  transformObject: (documentObject) => {
    const document = (documentObject as { openapiObject: { paths?: Record<string, unknown> } }).openapiObject;
    return { ...document, paths: { ...document.paths, ...consolePath } };
  },
};
