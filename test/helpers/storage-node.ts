/**
 * A storage node in a test's data folder, as `nubis daemon storage` runs it, and the control
 * plane's storage catalogue over it alone (only its storage-node calls are used: no database or
 * dir pools behind them).
 */
import { StorageCatalogue, storageEndpointsOf } from '../../src/control/storage.ts';
import type { DirPoolCatalogue } from '../../src/control/dir-pools.ts';
import type { DataPaths } from '../../src/core/paths.ts';
import type { Db } from '../../src/state/database.ts';
import { startStorageNode, storageNodeFolders } from '../../src/storage/storage-node.ts';

export type StorageNode = Awaited<ReturnType<typeof startStorageNode>>;

export function startStorageNodeIn(paths: DataPaths): Promise<StorageNode> {
  return startStorageNode(storageNodeFolders(paths));
}

export function storageNodeCatalogue(paths: DataPaths): StorageCatalogue {
  return new StorageCatalogue({} as Db, storageEndpointsOf(paths), {} as DirPoolCatalogue);
}
