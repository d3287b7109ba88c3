/**
 * GET /metrics: the control plane's metrics in Prometheus' text format, for a scraper holding a
 * token with `metrics.read` (the built-in role `metrics` holds only that), and the hook that
 * counts and times every API request by its route pattern.
 */
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { Type } from '@sinclair/typebox';
import type { FastifyInstance } from 'fastify';
import type { ControlPlaneMetrics } from '../../metrics/control-plane-metrics.ts';
import { ErrorBody } from '../../wire/schemas.ts';
import { listErrorResponses } from './common.ts';

/** Where Prometheus looks by default (its `metrics_path`). */
export const METRICS_PATH = '/metrics';

/** What the metrics route reads: the control plane's metrics. */
export type MetricsRouteServices = { metrics: ControlPlaneMetrics };

/**
 * Counts and times every answered request, labelled with its route's pattern (`/v1/vms/:vm`),
 * never the URL as sent: one series per route, method and status however many VMs there are.
 * A request no route matched is `unmatched`. Scrapes themselves are left out: Prometheus records
 * each scrape's duration and success on its side (`scrape_duration_seconds`, `up`).
 */
export function installRequestMetrics(app: FastifyInstance, metrics: Pick<ControlPlaneMetrics, 'observeRequest'>): void {
  app.addHook('onResponse', async (request, reply) => {
    const route = request.routeOptions.url;
    if (route === METRICS_PATH) return;
    metrics.observeRequest({ route: route ?? 'unmatched', method: request.method, statusCode: reply.statusCode, seconds: reply.elapsedTime / 1000 });
  });
}

/** GET /metrics. */
export const metricsRoutes: FastifyPluginAsyncTypebox<MetricsRouteServices> = async (app, services) => {
  app.get(
    METRICS_PATH,
    {
      config: { access: { on: 'platform', permission: 'metrics.read' } },
      schema: {
        operationId: 'getMetrics',
        tags: ['status'],
        summary: 'Metrics in the Prometheus text format 0.0.4 (hosts, VMs, migrations, storage, API, process); needs metrics.read',
        response: {
          200: {
            description: 'Prometheus text exposition format, version 0.0.4',
            content: {
              'text/plain': {
                schema: Type.String({ maxLength: 2 ** 30, description: 'One sample a line, each metric family after its # HELP and # TYPE lines' }),
              },
            },
          },
          ...listErrorResponses,
          403: ErrorBody,
        },
      },
    },
    async (_request, reply) => {
      const { contentType, body } = await services.metrics.scrape();
      return reply.type(contentType).send(body);
    },
  );
};
