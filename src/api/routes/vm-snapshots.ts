/** VM snapshots, rollback, templates and clones (control/vm-snapshots.ts, control/vm-clones.ts). */
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import type { VmSnapshots } from '../../control/vm-snapshots.ts';
import { Accepted, List, ProjectQuery, Vm, VmRef } from '../../wire/schemas.ts';
import { VmCloneRequest, VmSnapshot, VmSnapshotCreateRequest, VmSnapshotRef } from '../../wire/snapshot-schemas.ts';
import { errorResponses, type RouteApp } from './common.ts';

export type VmSnapshotRouteServices = { snapshots: VmSnapshots };

export const vmSnapshotRoutes: FastifyPluginAsyncTypebox<VmSnapshotRouteServices> = async (app, { snapshots }) => {
  app.get(
    '/v1/vms/:vm/snapshots',
    {
      config: { access: { on: 'project', permission: 'vm.read' } },
      schema: {
        operationId: 'listVmSnapshots',
        tags: ['vms'],
        summary: "A VM's snapshots, oldest first",
        params: VmRef,
        querystring: ProjectQuery,
        response: { 200: List(VmSnapshot), ...errorResponses },
      },
    },
    async (request) => snapshots.list(request.params.vm, request.query.project),
  );
  app.post(
    '/v1/vms/:vm/snapshots',
    {
      config: { access: { on: 'project', permission: 'vm.snapshot' } },
      schema: {
        operationId: 'createVmSnapshot',
        tags: ['vms'],
        summary: "Snapshot a VM's disks, and with withMemory its running state, all of one instant (operation)",
        params: VmRef,
        querystring: ProjectQuery,
        body: VmSnapshotCreateRequest,
        response: { 202: Accepted, ...errorResponses },
      },
    },
    async (request, reply) => reply.status(202).send({ operation: await snapshots.take(request.params.vm, request.body, request.query.project) }),
  );
  app.delete(
    '/v1/vms/:vm/snapshots/:snapshot',
    {
      config: { access: { on: 'project', permission: 'vm.snapshot' } },
      schema: {
        operationId: 'deleteVmSnapshot',
        tags: ['vms'],
        summary: 'Delete a snapshot of a VM (operation)',
        params: VmSnapshotRef,
        querystring: ProjectQuery,
        response: { 202: Accepted, ...errorResponses },
      },
    },
    async (request, reply) => reply.status(202).send({ operation: await snapshots.remove(request.params.vm, request.params.snapshot, request.query.project) }),
  );
  app.post(
    '/v1/vms/:vm/snapshots/:snapshot/rollback',
    {
      config: { access: { on: 'project', permission: 'vm.snapshot' } },
      schema: {
        operationId: 'rollbackVm',
        tags: ['vms'],
        summary: 'Roll a VM back to a snapshot: its disks, and for a memory snapshot its running state (operation)',
        params: VmSnapshotRef,
        querystring: ProjectQuery,
        response: { 202: Accepted, ...errorResponses },
      },
    },
    async (request, reply) =>
      reply.status(202).send({ operation: await snapshots.rollback(request.params.vm, request.params.snapshot, request.query.project) }),
  );
  registerTemplateRoutes(app, snapshots);
};

/** Templates and their clones. */
function registerTemplateRoutes(app: RouteApp, snapshots: VmSnapshots): void {
  app.post(
    '/v1/vms/:vm/template',
    {
      config: { access: { on: 'project', permission: 'vm.snapshot' } },
      schema: {
        operationId: 'makeVmTemplate',
        tags: ['vms'],
        summary: 'Make a stopped VM a template: read-only, never started again, the source of clones',
        params: VmRef,
        querystring: ProjectQuery,
        response: { 200: Vm, ...errorResponses },
      },
    },
    async (request) => snapshots.makeTemplate(request.params.vm, request.query.project),
  );
  app.post(
    '/v1/vms/:vm/clone',
    {
      config: { access: { on: 'project', permission: 'vm.create' } },
      schema: {
        operationId: 'cloneVm',
        tags: ['vms'],
        summary: 'Make a VM of a template: a full copy of its disks, or with linked a copy-on-write child of them (operation)',
        params: VmRef,
        querystring: ProjectQuery,
        body: VmCloneRequest,
        response: { 202: Accepted, ...errorResponses },
      },
    },
    async (request, reply) => reply.status(202).send({ operation: await snapshots.clone(request.params.vm, request.body, request.query.project) }),
  );
}
