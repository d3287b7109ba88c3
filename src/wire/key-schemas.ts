/** Schemas of the keys of encrypted volumes: the key provider's state. Key material never appears here. */
import { Type, type Static } from '@sinclair/typebox';
import { Count, Text, Timestamp } from './schemas.ts';

const KekId = Text(64, { description: 'A key-encryption key by its id, e.g. kek-3f9c1a2b7d4e' });

export const KeyStatus = Type.Object(
  {
    provider: Text(32, { description: 'Where the KEKs live: file (a key file of the storage node)' }),
    location: Text(4096, { description: "The key file's path on the storage node" }),
    currentKekId: Type.Optional(KekId),
    currentKekCreatedAt: Type.Optional(Timestamp),
    retiredKekIds: Type.Array(KekId, {
      maxItems: 1024,
      description: 'Older KEKs still kept: a rotation was interrupted or could not rewrap every key (rotate again to destroy them)',
    }),
    encryptedVolumes: Count({ description: 'Encrypted volumes (snapshots and clones included) in the open pools' }),
    kekIdsInUse: Type.Array(KekId, { maxItems: 1024, description: 'The KEKs that wrap some volume key now' }),
  },
  { $id: 'KeyStatus' },
);
export type KeyStatus = Static<typeof KeyStatus>;
