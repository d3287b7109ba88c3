/**
 * Serves one raw file as the NBD export `disk` on a unix socket with our NBD server, until
 * SIGTERM: `node --import tsx bench/storage/serve-file.ts FILE SOCKET`. Prints one JSON line when ready.
 */
import { FileExport } from '../../src/storage/nbd/file-export.ts';
import { mapCatalog } from '../../src/storage/nbd/nbd-export.ts';
import { NbdServer } from '../../src/storage/nbd/nbd-server.ts';

const [file, socket] = process.argv.slice(2);
if (!file || !socket) {
  process.stderr.write('Usage: serve-file.ts FILE SOCKET\n');
  process.exit(2);
}
const disk = await FileExport.open(file);
const server = new NbdServer({ catalog: mapCatalog(new Map([['disk', disk]]), 'disk') });
await server.listen({ path: socket });
process.stdout.write(`${JSON.stringify({ ready: true, socket })}\n`);
process.once('SIGTERM', async () => {
  await server.close();
  await disk.close();
  process.exit(0);
});
