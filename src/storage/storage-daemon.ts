/**
 * Runs the storage service as its own process until SIGTERM/SIGINT:
 *
 *   node --import tsx src/storage/storage-daemon.ts --pools DIR [--socket PATH] [--tcp PORT] [--keys DIR]
 *
 * `--keys` is the folder of the key file of encrypted volumes (storage/keys/file-key-provider.ts).
 * Prints one JSON line `{"ready":true,...}` once it serves, so a supervisor (or a test that kills
 * it with SIGKILL) knows when to connect.
 */
import { parseArgs } from 'node:util';
import { FileKeyProvider } from './keys/file-key-provider.ts';
import { StorageService } from './service.ts';

const { values } = parseArgs({
  options: {
    pools: { type: 'string' },
    socket: { type: 'string' },
    tcp: { type: 'string' },
    keys: { type: 'string' },
  },
});
if (!values.pools) {
  process.stderr.write('Usage: storage-daemon --pools DIR [--socket PATH] [--tcp PORT] [--keys DIR]\n');
  process.exit(2);
}
const { service, failures } = await StorageService.start({
  poolsDir: values.pools,
  socketPath: values.socket,
  tcp: values.tcp === undefined ? undefined : { port: Number(values.tcp) },
  ...(values.keys ? { keys: new FileKeyProvider(values.keys) } : {}),
});
process.stdout.write(`${JSON.stringify({ ready: true, pid: process.pid, ...service.addresses, pools: service.listPools().map((p) => p.name), failures })}\n`);
const stop = async () => {
  await service.close();
  process.exit(0);
};
process.once('SIGTERM', () => void stop());
process.once('SIGINT', () => void stop());
