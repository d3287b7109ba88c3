/**
 * The keys of encrypted volumes: the key provider's state, and rotation of the key-encryption key
 * (a storage-node job followed as an operation). Platform admins only: a rotation touches every
 * project's volumes, and the state names the key file.
 */
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { Type } from '@sinclair/typebox';
import type { OperationManager } from '../../control/operations.ts';
import type { StorageCatalogue } from '../../control/storage.ts';
import { KeyStatus } from '../../wire/key-schemas.ts';
import { Accepted } from '../../wire/schemas.ts';
import { errorResponses } from './common.ts';

export type KeyRouteServices = { storage: StorageCatalogue; operations: OperationManager };

/** What a finished rotation reports (storage/service.ts KeyRotationReport). */
interface RotationResult {
  kekId: string;
  rewrappedKeys: number;
  destroyedKekIds: string[];
}

export const keyRoutes: FastifyPluginAsyncTypebox<KeyRouteServices> = async (app, { storage, operations }) => {
  app.get(
    '/v1/keys',
    {
      config: { access: { on: 'platform', permission: 'key.manage' } },
      schema: {
        operationId: 'getKeyStatus',
        tags: ['storage'],
        summary: 'The key-encryption key of encrypted volumes: which is current, which older ones are still kept, which wrap keys now',
        response: { 200: KeyStatus, ...errorResponses },
      },
    },
    async () => storage.call<KeyStatus>({ method: 'GET', path: '/storage/keys' }),
  );
  app.post(
    '/v1/keys/rotate',
    {
      config: { access: { on: 'platform', permission: 'key.manage' } },
      schema: {
        operationId: 'rotateKeys',
        tags: ['storage'],
        summary:
          'Make a new key-encryption key, rewrap every volume key with it (no data is re-encrypted), then destroy the old ones; a crash midway leaves every volume readable (operation)',
        body: Type.Optional(Type.Object({}, { additionalProperties: false })),
        response: { 202: Accepted, ...errorResponses },
      },
    },
    async (_request, reply) => {
      // The storage node refuses at once (no key provider, a rotation running): this request's 4xx.
      const job = await storage.startJob('/storage/keys/rotate', {});
      const operation = await operations.start('key.rotate', { type: 'keys', id: 'kek', name: 'key-encryption key' }, async (op) => {
        await op.report('rotating', 'A new key-encryption key is current; rewrapping every volume key with it', 0);
        const result = (await storage.followJob(job, op, 'rewrapping')) as RotationResult;
        const destroyed = result.destroyedKekIds.length > 0 ? `destroyed ${result.destroyedKekIds.join(', ')}` : 'no older key to destroy';
        await op.report('rotated', `${result.rewrappedKeys} volume keys rewrapped with ${result.kekId}; ${destroyed}`, 1, result);
        return result;
      });
      return reply.status(202).send({ operation });
    },
  );
};
