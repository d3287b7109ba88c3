/** High availability: which hosts were lost and fenced, and what was restarted where and how fast. */
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { Type } from '@sinclair/typebox';
import type { HostRegistry } from '../../control/hosts.ts';
import { haEvents } from '../../ha/ha-restart.ts';
import type { Db } from '../../state/database.ts';
import type { HaGroups } from '../../control/ha-groups.ts';
import { List, ResourceId, ResourceName, ResourceRef, Text, Timestamp } from '../../wire/schemas.ts';
import { errorResponses, listErrorResponses, type RouteApp } from './common.ts';

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

const HaGroup = Type.Object(
  {
    id: ResourceId,
    name: ResourceName,
    hosts: List(Text(63)),
    restricted: Type.Boolean({ description: 'Its VMs run only on its hosts' }),
    failback: Type.Boolean({ description: 'A VM away from its hosts moves back when one is in service again' }),
    members: List(ResourceName, { description: 'Its VMs' }),
    createdAt: Timestamp,
  },
  { $id: 'HaGroup' },
);
const GroupRef = Type.Object({ group: ResourceRef('HA group name or id') });

export const haRoutes: FastifyPluginAsyncTypebox<{ db: Db; hosts: HostRegistry; groups: HaGroups }> = async (app, { db, hosts, groups }) => {
  registerGroupRoutes(app, groups);
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

/** HA groups: preferred hosts of HA VMs, restricted or not, with failback or not. */
function registerGroupRoutes(app: RouteApp, groups: HaGroups): void {
  app.get(
    '/v1/ha/groups',
    {
      config: { access: { on: 'platform', permission: 'host.read' } },
      schema: { operationId: 'listHaGroups', tags: ['hosts'], summary: 'List HA groups', response: { 200: List(HaGroup), ...listErrorResponses } },
    },
    async () => groups.list(),
  );
  app.post(
    '/v1/ha/groups',
    {
      config: { access: { on: 'platform', permission: 'host.update' } },
      schema: {
        operationId: 'createHaGroup',
        tags: ['hosts'],
        summary: 'Create an HA group: hosts its VMs prefer (restricted: the only ones), with failback or not',
        body: Type.Object(
          {
            name: ResourceName,
            hosts: Type.Array(ResourceName, { minItems: 1, maxItems: 1000 }),
            restricted: Type.Optional(Type.Boolean()),
            failback: Type.Optional(Type.Boolean()),
          },
          { additionalProperties: false },
        ),
        response: { 201: HaGroup, ...errorResponses },
      },
    },
    async (request, reply) => reply.status(201).send(await groups.create(request.body)),
  );
  app.delete(
    '/v1/ha/groups/:group',
    {
      config: { access: { on: 'platform', permission: 'host.update' } },
      schema: {
        operationId: 'deleteHaGroup',
        tags: ['hosts'],
        summary: 'Delete an HA group no VM is in',
        params: GroupRef,
        response: { 204: Type.Null(), ...errorResponses },
      },
    },
    async (request, reply) => {
      await groups.delete(request.params.group);
      return reply.status(204).send(null);
    },
  );
}
