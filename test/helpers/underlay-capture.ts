/**
 * Records every frame that crosses a network interface (an AF_PACKET socket, as tcpdump opens,
 * here through Python's socket module: Node has none and tcpdump is not installed everywhere), so
 * a test can look for bytes that must, or must not, travel in plaintext. Root only.
 */
import { spawn } from 'node:child_process';
import { readFile, rm } from 'node:fs/promises';

const SNIFFER = `
import signal, socket, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024 * 1024)
s.bind((sys.argv[1], 0))
s.settimeout(0.2)
stopping = []
signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
out = open(sys.argv[2], 'wb')
print('capturing', flush=True)
while not stopping:
    try:
        out.write(s.recv(262144))
    except socket.timeout:
        pass
out.close()
`;

/** A capture running on one interface; `stop` ends it and returns every frame's bytes, back to back. */
export interface UnderlayCapture {
  stop(): Promise<Buffer>;
}

/** Starts capturing on `iface` into `file` (removed by `stop`); resolves once the socket is bound. */
export async function startCapture(iface: string, file: string): Promise<UnderlayCapture> {
  if (!/^[A-Za-z0-9_.-]{1,15}$/.test(iface)) throw new Error(`${iface} is not an interface name`);
  const child = spawn('python3', ['-c', SNIFFER, iface, file], { stdio: ['ignore', 'pipe', 'pipe'] });
  let errors = '';
  child.stderr.on('data', (chunk: Buffer) => (errors += chunk.toString()));
  const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));
  await new Promise<void>((resolve, reject) => {
    child.stdout.once('data', () => resolve());
    void exited.then((code) => reject(new Error(`The capture on ${iface} ended (${code}): ${errors}`)));
  });
  return {
    async stop() {
      child.kill('SIGTERM');
      await exited;
      const bytes = await readFile(file);
      await rm(file, { force: true });
      return bytes;
    },
  };
}
