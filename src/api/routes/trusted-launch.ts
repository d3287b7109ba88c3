/** Measured launch: a VM's attestation, and a project's trusted-launch requirement (control/trusted-launch.ts). */
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { Type } from '@sinclair/typebox';
import { attestationOf, attestPcrs, setRequireTrustedLaunch } from '../../control/trusted-launch.ts';
import { verifyPcrQuote } from '../../control/pcr-quote.ts';
import type { VmService } from '../../control/vms.ts';
import { NubisError } from '../../core/errors.ts';
import type { Db } from '../../state/database.ts';
import { ProjectQuery, ResourceRef, VmRef } from '../../wire/schemas.ts';
import { PcrQuoteRequest, TrustedLaunchSetting, VmAttestation } from '../../wire/trusted-launch-schemas.ts';
import { errorResponses } from './common.ts';

/** What the trusted-launch routes use: the database (references, projects) and the VM service (references to VMs). */
export type TrustedLaunchRouteServices = { db: Db; vms: VmService };

export const trustedLaunchRoutes: FastifyPluginAsyncTypebox<TrustedLaunchRouteServices> = async (app, { db, vms }) => {
  app.get(
    '/v1/vms/:vm/attestation',
    {
      config: { access: { on: 'project', permission: 'vm.read' } },
      schema: {
        operationId: 'getVmAttestation',
        tags: ['vms'],
        summary: "A VM's launch measurements (what its QEMU really runs), each with its expected value and whether it matches",
        params: VmRef,
        querystring: ProjectQuery,
        response: { 200: VmAttestation, ...errorResponses },
      },
    },
    async (request) => attestationOf(db, await vms.row(request.params.vm, request.query.project)),
  );
  app.post(
    '/v1/vms/:vm/attestation/quote',
    {
      config: { access: { on: 'project', permission: 'vm.read' } },
      schema: {
        operationId: 'verifyVmQuote',
        tags: ['vms'],
        summary: "Verify a TPM quote of the VM's PCRs 0-7 (from nubis-tool tpm-quote in its guest) and check the PCRs against their expected values",
        params: VmRef,
        querystring: ProjectQuery,
        body: PcrQuoteRequest,
        response: { 200: VmAttestation, ...errorResponses },
      },
    },
    async (request) => {
      const row = await vms.row(request.params.vm, request.query.project);
      const pcrs = verifyPcrQuote(request.body);
      const components = await attestPcrs(db, row, pcrs);
      const project = await db.selectFrom('projects').select('require_trusted_launch').where('id', '=', row.project_id).executeTakeFirst();
      const verdict = components.some((c) => c.matches === false) ? ('mismatch' as const) : ('match' as const);
      return { vm: row.name, measuredAt: new Date().toISOString(), requireTrustedLaunch: Boolean(project?.require_trusted_launch), verdict, components };
    },
  );
  app.put(
    '/v1/projects/:project/trusted-launch',
    {
      config: { access: { on: 'platform', permission: 'project.residency' } },
      schema: {
        operationId: 'setProjectTrustedLaunch',
        tags: ['projects'],
        summary: "Require (or stop requiring) trusted launch of the project's VMs: from their next create, they run only from matching measurements",
        params: Type.Object({ project: ResourceRef('Project name') }),
        body: TrustedLaunchSetting,
        response: { 200: Type.Object({ project: Type.String({ maxLength: 63 }), requireTrustedLaunch: Type.Boolean() }), ...errorResponses },
      },
    },
    async (request) => {
      const project = await db.selectFrom('projects').select('id').where('name', '=', request.params.project).executeTakeFirst();
      if (!project) throw new NubisError('PROJECT_NOT_FOUND', `No project ${request.params.project}`);
      await setRequireTrustedLaunch(db, project.id, request.body.required);
      return { project: request.params.project, requireTrustedLaunch: request.body.required };
    },
  );
};
