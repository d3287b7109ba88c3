/** Images: the disk images and kernel pairs that VMs boot from. */
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import type { ImageCatalogue } from '../../control/images.ts';
import type { OperationManager } from '../../control/operations.ts';
import { Accepted, Image, ImageImportRequest, List } from '../../wire/schemas.ts';
import { errorResponses, listErrorResponses } from './common.ts';

/** What the image routes use: the catalogue, and operations for the import that runs on. */
export type ImageRouteServices = { images: ImageCatalogue; operations: OperationManager };

/** GET /v1/images and POST /v1/images (an import as an operation). */
export const imageRoutes: FastifyPluginAsyncTypebox<ImageRouteServices> = async (app, services) => {
  app.get(
    '/v1/images',
    {
      config: { access: { on: 'self' } },
      schema: { operationId: 'listImages', tags: ['images'], summary: 'List images', response: { 200: List(Image), ...listErrorResponses } },
    },
    async () => services.images.list(),
  );
  app.post(
    '/v1/images',
    {
      config: { access: { on: 'platform', permission: 'image.import' } },
      schema: {
        operationId: 'importImage',
        tags: ['images'],
        summary: 'Import a qcow2/raw disk image or a kernel+initrd pair (operation)',
        body: ImageImportRequest,
        response: { 202: Accepted, ...errorResponses },
      },
    },
    async (request, reply) => {
      const checked = await services.images.checkImport(request.body);
      const operation = await services.operations.start('image.import', { type: 'image', id: request.body.name, name: request.body.name }, async (op) => {
        await op.report('copying', `Copying ${checked.kind === 'disk' ? request.body.path : 'kernel and initrd'} into the image store`, 0.05);
        return services.images.import(request.body, checked, {
          signal: op.signal,
          onProgress: (share) => op.report('copying', `Copied ${Math.round(share * 100)} %`, 0.05 + share * 0.9),
        });
      });
      return reply.status(202).send({ operation });
    },
  );
};
