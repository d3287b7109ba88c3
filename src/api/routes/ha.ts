/** High availability: which hosts were lost and fenced, and what was restarted where and how fast. */
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { Type } from '@sinclair/typebox';
import type { HostRegistry } from '../../control/hosts.ts';
import { haEvents } from '../../ha/ha-restart.ts';
import type { Db } from '../../state/database.ts';
import { List, Text, Timestamp } from '../../wire/schemas.ts';
import { listErrorResponses } from './common.ts';

const HaStatus = Type.Object(
  {
    hosts: List(Type.Object({ name: Text(63), status: Text(16), lostAt: Type.Optional(Timestamp), fencedAt: Type.Optional(Timestamp) })),
    events: List(
      Type.Object({
        vm: Text(63),
        from: Text(63),
        to: Type.Optional(Text(63)),
        status: Text(32, { description: 'restarting, restarted, failed, not-restartable' }),
        message: Text(2048),
        hostLostAt: Timestamp,
        fencedAt: Timestamp,
        endedAt: Type.Optional(Timestamp),
        failoverSeconds: Type.Optional(Type.Number({ description: "From the host's last heartbeat to the VM's guest ready on its new host" })),
      }),
      { description: 'The last 100 HA restarts, newest first' },
    ),
  },
  { $id: 'HaStatus' },
);

export const haRoutes: FastifyPluginAsyncTypebox<{ db: Db; hosts: HostRegistry }> = async (app, { db, hosts }) => {
  app.get(
    '/v1/ha',
    {
      config: { access: { on: 'platform', permission: 'host.read' } },
      schema: {
        operationId: 'getHaStatus',
        tags: ['hosts'],
        summary: 'High availability: host states, and what was restarted where and how long it took',
        response: { 200: HaStatus, ...listErrorResponses },
      },
    },
    async () => {
      const rows = await db.selectFrom('hosts').select(['name', 'lost_at', 'fenced_at']).execute();
      const views = new Map((await hosts.list()).map((view) => [view.name, view.status]));
      return {
        hosts: rows.map((row) => ({
          name: row.name,
          status: views.get(row.name) ?? 'unknown',
          ...(row.fenced_at && row.lost_at ? { lostAt: row.lost_at } : {}),
          ...(row.fenced_at ? { fencedAt: row.fenced_at } : {}),
        })),
        events: await haEvents(db),
      };
    },
  );
};
