/** The cluster: its balancing settings and imbalance, and balancing runs (a dry run proposes only). */
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import type { ClusterBalancer } from '../../migration/cluster-balancer.ts';
import { BalanceProposal, BalanceRequest, ClusterUpdateRequest, ClusterView } from '../../wire/cluster-schemas.ts';
import { Accepted } from '../../wire/schemas.ts';
import { errorResponses } from './common.ts';

export type ClusterRouteServices = { balancer: ClusterBalancer };

export const clusterRoutes: FastifyPluginAsyncTypebox<ClusterRouteServices> = async (app, { balancer }) => {
  app.get(
    '/v1/cluster',
    {
      config: { access: { on: 'platform', permission: 'cluster.read' } },
      schema: {
        operationId: 'getCluster',
        tags: ['cluster'],
        summary: "The balancing settings, the imbalance now (every host's load) and the last balancing run with its moves",
        response: { 200: ClusterView, ...errorResponses },
      },
    },
    async () => balancer.view(),
  );
  app.patch(
    '/v1/cluster',
    {
      config: { access: { on: 'platform', permission: 'cluster.manage' } },
      schema: {
        operationId: 'updateCluster',
        tags: ['cluster'],
        summary: 'Set the balancing policy: auto, manual or off, the threshold (1 careful .. 5 eager), the interval, the cooldown and the moves per run',
        body: ClusterUpdateRequest,
        response: { 200: ClusterView, ...errorResponses },
      },
    },
    async (request) => balancer.update(request.body),
  );
  app.post(
    '/v1/cluster/balance',
    {
      config: { access: { on: 'platform', permission: 'cluster.manage' } },
      schema: {
        operationId: 'balanceCluster',
        tags: ['cluster'],
        summary:
          'Even out the hosts by live migration: each move with its benefit and predicted cost; with dryRun the proposal (200) and nothing moves, else an operation (202), or the empty proposal (200) when no move pays',
        body: BalanceRequest,
        response: { 200: BalanceProposal, 202: Accepted, ...errorResponses },
      },
      preValidation: async (request) => {
        request.body ??= { dryRun: false };
      },
    },
    async (request, reply) => {
      const answer = await balancer.balance({ dryRun: request.body.dryRun });
      if ('operation' in answer) return reply.status(202).send({ operation: answer.operation });
      return answer.proposal;
    },
  );
};
