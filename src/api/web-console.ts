/**
 * The web console at `/`, on the API's own origin: the files `npm run build:web` writes to
 * web/dist, and index.html for every other path outside /v1 (the console's pages are routed in
 * the browser, so a reload or a bookmark of /vms/default/web1 works). Hashed assets may be kept
 * by the browser for a year; index.html is checked every time so that a new build shows at once.
 * Every answer carries the console's security headers.
 */
import { readdirSync, statSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import fastifyStatic from '@fastify/static';
import type { FastifyInstance, FastifyPluginAsync, FastifyReply, FastifyRequest } from 'fastify';

/** Where `npm run build:web` writes the console (vite.config.ts in web/). */
export const WEB_DIST_DIR = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'web', 'dist');

const YEAR_MS = 365 * 24 * 3_600_000;
// A host name, an IPv4 address or a bracketed IPv6 address, with a port: what may go into the policy.
const PLAIN_HOST = /^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+)(:\d{1,5})?$/;

/**
 * The content security policy: scripts, styles and fonts only from this origin (no inline
 * script, no eval), connections only back to it (fetch, EventSource and the console WebSockets,
 * named by scheme because older browsers do not count ws: as 'self'), no plugins, and no framing
 * by any page (against clickjacking). The consoles fit in it as it is: noVNC draws on a canvas
 * and sets styles through the CSSOM, which the policy does not govern; xterm.js's `<style>`
 * elements are blocked and copied into a constructed sheet (web/src/console/adopt-styles.ts), so
 * `style-src` needs no 'unsafe-inline' (test/web/screen.test.ts checks what the policy refused).
 */
export function contentSecurityPolicy(request: FastifyRequest): string {
  const host = PLAIN_HOST.test(request.host) ? request.host : undefined;
  const sockets = host ? ` ${request.protocol === 'https' ? 'wss' : 'ws'}://${host}` : '';
  return [
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' data:",
    `connect-src 'self'${sockets}`,
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
  ].join('; ');
}

/** Headers on every answer of the control plane, the API's included. */
export function installSecurityHeaders(app: FastifyInstance): void {
  app.addHook('onSend', async (_request, reply: FastifyReply) => {
    reply.header('x-content-type-options', 'nosniff');
    reply.header('x-frame-options', 'DENY');
    reply.header('referrer-policy', 'no-referrer');
  });
}

/** The files of the build, by path relative to it; undefined when there is no build. */
function builtFiles(root: string): Set<string> | undefined {
  const files = new Set<string>();
  const walk = (dir: string) => {
    for (const entry of readdirSync(dir, { withFileTypes: true })) {
      const path = join(dir, entry.name);
      if (entry.isDirectory()) walk(path);
      else files.add(relative(root, path));
    }
  };
  try {
    if (!statSync(join(root, 'index.html')).isFile()) return undefined;
    walk(root);
  } catch {
    return undefined;
  }
  return files;
}

/** Serves the console from `root` (default web/dist): GET of any path outside /v1. */
export const webConsoleRoutes: FastifyPluginAsync<{ root?: string }> = async (app, options) => {
  const root = options.root ?? WEB_DIST_DIR;
  // Listed once: the build does not change under a running control plane (a rebuild is picked
  // up at the next start), and a request can only ever name a file of this list.
  const files = builtFiles(root);
  if (files) await app.register(fastifyStatic, { root, serve: false });
  app.get('/*', { config: { access: { on: 'public', audit: false } }, schema: { hide: true } }, async (request, reply) => {
    const path = (request.params as { '*': string })['*'];
    // An API path that no route has is the API's 404, not the console's page.
    if (path === 'v1' || path.startsWith('v1/')) return reply.callNotFound();
    reply.header('content-security-policy', contentSecurityPolicy(request));
    if (!files)
      return reply
        .status(503)
        .type('text/plain; charset=utf-8')
        .send(`The web console is not built: run npm run build:web in ${join(root, '..', '..')} (npm start does it), then restart Nubis\n`);
    if (path !== 'index.html' && files.has(path)) {
      const hashed = path.startsWith('assets/');
      return reply.sendFile(path, { maxAge: hashed ? YEAR_MS : 0, immutable: hashed, cacheControl: true });
    }
    // A missing file (a name with an extension) is missing; only page paths get the page.
    if (/\.[A-Za-z0-9]+$/.test(path))
      return reply
        .status(404)
        .type('text/plain; charset=utf-8')
        .send(`No file /${path.slice(0, 200)} in the web console\n`);
    reply.header('cache-control', 'no-cache');
    return reply.sendFile('index.html', { cacheControl: false });
  });
};
