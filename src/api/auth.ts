/**
 * Who may call the API: every route needs the admin token, except the OpenAPI document and the
 * two routes of host agents (join has the join token in its body, report an agent token).
 */
import { createHash } from 'node:crypto';
import type { onRequestAsyncHookHandler } from 'fastify';
import { NubisError } from '../core/errors.ts';
import type { Db } from '../state/database.ts';

function sha256(text: string): string {
  return createHash('sha256').update(text).digest('hex');
}

/** An onRequest hook that refuses a request without the admin bearer token, unless its route is public. */
export function adminTokenCheck(db: Db): onRequestAsyncHookHandler {
  const publicRoutes = new Set(['/v1/openapi.json', '/v1/hosts/join', '/v1/hosts/:name/report']);
  return async (request) => {
    if (publicRoutes.has(request.routeOptions.url ?? '')) return;
    const header = request.headers.authorization ?? '';
    const token = header.startsWith('Bearer ') ? header.slice(7).trim() : undefined;
    if (!token)
      throw new NubisError(
        'AUTH_REQUIRED',
        'This request needs a bearer token: send Authorization: Bearer <token> (the admin token is in the data folder, file admin-token)',
      );
    const known = await db.selectFrom('tokens').select(['role']).where('secret_sha256', '=', sha256(token)).executeTakeFirst();
    if (known?.role !== 'admin')
      throw new NubisError('AUTH_INVALID_TOKEN', 'The bearer token is not valid; use the admin token from the data folder (admin-token)');
  };
}
