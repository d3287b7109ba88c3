// NBD over TLS with real peers. A throwaway CA (openssl) signs a server and a client certificate;
// our server requires TLS (proto.md FORCEDTLS) with client certificates; qemu-io, qemu-img and
// nbdinfo connect with them and read and write through TLS. Plaintext clients get
// NBD_REP_ERR_TLS_REQD and change nothing; broken handshakes end only their own connection.
import assert from 'node:assert/strict';
import { execFile, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { copyFile, mkdir, mkdtemp, readFile, rm, truncate, writeFile } from 'node:fs/promises';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import { FileExport } from '../../src/storage/nbd/file-export.ts';
import * as C from '../../src/storage/nbd/nbd-constants.ts';
import { mapCatalog } from '../../src/storage/nbd/nbd-export.ts';
import { NbdServer, type NbdServerEvent } from '../../src/storage/nbd/nbd-server.ts';

const run = promisify(execFile);
const MiB = 1024 * 1024;
const SIZE = 16 * MiB;
const opensslMissing = spawnSync('openssl', ['version']).error ? 'openssl is not installed' : false;

/** A CA, and certificates it signs, in the file layout QEMU's tls-creds-x509 and libnbd read. */
async function makeCertificates(dir: string): Promise<{ serverDir: string; clientDir: string; noCertDir: string; rogueDir: string }> {
  const openssl = (...args: string[]) => run('openssl', args, { cwd: dir });
  const ca = async (name: string) => {
    await openssl(
      'req',
      '-x509',
      '-newkey',
      'rsa:2048',
      '-nodes',
      '-days',
      '1',
      '-subj',
      `/CN=${name}`,
      '-keyout',
      `${name}-key.pem`,
      '-out',
      `${name}-cert.pem`,
      '-addext',
      'basicConstraints=critical,CA:TRUE',
      '-addext',
      'keyUsage=critical,keyCertSign,cRLSign',
    );
  };
  // QEMU checks the key usage and purpose of every certificate it loads.
  const issue = async (name: string, caName: string, purpose: 'serverAuth' | 'clientAuth') => {
    const extensions = [
      'basicConstraints=CA:FALSE',
      'keyUsage=digitalSignature,keyEncipherment',
      `extendedKeyUsage=${purpose}`,
      ...(purpose === 'serverAuth' ? ['subjectAltName=DNS:localhost,IP:127.0.0.1'] : []),
    ];
    await writeFile(join(dir, `${name}.ext`), `${extensions.join('\n')}\n`);
    await openssl('req', '-newkey', 'rsa:2048', '-nodes', '-subj', `/CN=${name}`, '-keyout', `${name}-key.pem`, '-out', `${name}.csr`);
    await openssl(
      'x509',
      '-req',
      '-in',
      `${name}.csr`,
      '-CA',
      `${caName}-cert.pem`,
      '-CAkey',
      `${caName}-key.pem`,
      '-CAcreateserial',
      '-days',
      '1',
      '-extfile',
      `${name}.ext`,
      '-out',
      `${name}-cert.pem`,
    );
  };
  await ca('nubis-test-ca');
  await ca('rogue-ca');
  await issue('nubis-test-server', 'nubis-test-ca', 'serverAuth');
  await issue('nubis-test-client', 'nubis-test-ca', 'clientAuth');
  await issue('rogue-client', 'rogue-ca', 'clientAuth');

  const layout = async (sub: string, files: Record<string, string>) => {
    const target = join(dir, sub);
    await mkdir(target);
    for (const [as, from] of Object.entries(files)) await copyFile(join(dir, from), join(target, as));
    return target;
  };
  const dirs = {
    serverDir: await layout('server', {
      'ca-cert.pem': 'nubis-test-ca-cert.pem',
      'server-cert.pem': 'nubis-test-server-cert.pem',
      'server-key.pem': 'nubis-test-server-key.pem',
    }),
    clientDir: await layout('client', {
      'ca-cert.pem': 'nubis-test-ca-cert.pem',
      'client-cert.pem': 'nubis-test-client-cert.pem',
      'client-key.pem': 'nubis-test-client-key.pem',
    }),
    noCertDir: await layout('client-no-cert', { 'ca-cert.pem': 'nubis-test-ca-cert.pem' }),
    rogueDir: await layout('client-rogue', { 'client-cert.pem': 'rogue-client-cert.pem', 'client-key.pem': 'rogue-client-key.pem' }),
  };
  // The rogue client trusts both CAs: QEMU checks its own certificate against them before it
  // connects, and must get as far as our server to be refused there.
  const bothCas = Buffer.concat([await readFile(join(dir, 'nubis-test-ca-cert.pem')), await readFile(join(dir, 'rogue-ca-cert.pem'))]);
  await writeFile(join(dirs.rogueDir, 'ca-cert.pem'), bothCas);
  return dirs;
}

/** A hand-driven client for the handshake: option requests and replies, nothing more. */
class RawHandshake {
  readonly socket: Socket;
  readonly closed: Promise<void>;
  #buffer = Buffer.alloc(0);
  #wake?: () => void;

  private constructor(socket: Socket) {
    this.socket = socket;
    socket.on('data', (chunk: Buffer) => {
      this.#buffer = Buffer.concat([this.#buffer, chunk]);
      this.#wake?.();
    });
    socket.on('error', () => undefined);
    this.closed = new Promise((resolve) => socket.once('close', () => resolve()));
    void this.closed.then(() => this.#wake?.());
  }

  static async open(port: number): Promise<RawHandshake> {
    const socket = connect(port, '127.0.0.1');
    await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject));
    const client = new RawHandshake(socket);
    const greeting = await client.read(18);
    assert.equal(greeting.readBigUInt64BE(8), C.NBD_IHAVEOPT);
    const flags = Buffer.alloc(4);
    flags.writeUInt32BE(C.NBD_FLAG_C_FIXED_NEWSTYLE | C.NBD_FLAG_C_NO_ZEROES);
    socket.write(flags);
    return client;
  }

  async read(n: number): Promise<Buffer> {
    while (this.#buffer.length < n) {
      if (this.socket.destroyed) throw new Error('Connection closed');
      await new Promise<void>((resolve) => (this.#wake = resolve));
    }
    const out = this.#buffer.subarray(0, n);
    this.#buffer = this.#buffer.subarray(n);
    return out;
  }

  sendOption(option: number, data: Buffer = Buffer.alloc(0)): void {
    const header = Buffer.alloc(16);
    header.writeBigUInt64BE(C.NBD_IHAVEOPT, 0);
    header.writeUInt32BE(option, 8);
    header.writeUInt32BE(data.length, 12);
    this.socket.write(Buffer.concat([header, data]));
  }

  async option(option: number, data?: Buffer): Promise<{ type: number; message: string }> {
    this.sendOption(option, data);
    const header = await this.read(20);
    assert.equal(header.readUInt32BE(8), option);
    const payload = await this.read(header.readUInt32BE(16));
    return { type: header.readUInt32BE(12), message: payload.toString('utf8') };
  }
}

function goData(name: string): Buffer {
  const data = Buffer.alloc(4 + name.length + 2);
  data.writeUInt32BE(name.length, 0);
  data.write(name, 4);
  return data;
}

async function closesWithin(client: RawHandshake, ms: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([client.closed, new Promise((_, reject) => (timer = setTimeout(() => reject(new Error(`Connection still open after ${ms} ms`)), ms)))]);
  clearTimeout(timer);
}

describe('NBD server requiring TLS', { skip: opensslMissing }, () => {
  let dir: string;
  let certs: Awaited<ReturnType<typeof makeCertificates>>;
  let disk: FileExport;
  let imagePath: string;
  let server: NbdServer;
  let port: number;
  let socketPath: string;
  const events: NbdServerEvent[] = [];

  const tlsObject = (credsDir: string) => `tls-creds-x509,id=tls0,dir=${credsDir},endpoint=client`;
  const tlsImage = () => `driver=nbd,host=127.0.0.1,port=${port},export=disk,tls-creds=tls0`;
  const imageDigest = async () =>
    createHash('sha256')
      .update(await readFile(imagePath))
      .digest('hex');

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'nubis-nbd-tls-'));
    certs = await makeCertificates(dir);
    imagePath = join(dir, 'disk.raw');
    await writeFile(imagePath, '');
    await truncate(imagePath, SIZE);
    disk = await FileExport.open(imagePath);
    server = new NbdServer({
      catalog: mapCatalog(new Map([['disk', disk]]), 'disk'),
      tls: {
        cert: await readFile(join(certs.serverDir, 'server-cert.pem')),
        key: await readFile(join(certs.serverDir, 'server-key.pem')),
        ca: await readFile(join(certs.serverDir, 'ca-cert.pem')),
      },
      onEvent: (event) => events.push(event),
    });
    port = ((await server.listen({ host: '127.0.0.1', port: 0 })) as { port: number }).port;
    socketPath = join(dir, 'plain.sock');
    await server.listen({ path: socketPath, tls: false });
  });

  after(async () => {
    await server?.close(1000);
    await disk?.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('qemu-io writes and reads back through TLS with a client certificate', async () => {
    const { stdout } = await run('qemu-io', [
      '--object',
      tlsObject(certs.clientDir),
      '--image-opts',
      tlsImage(),
      '-c',
      'write -P 0x5a 0 1M',
      '-c',
      'read -P 0x5a 0 1M',
      '-c',
      'write -P 0xc3 8M 64k',
      '-c',
      'read -P 0xc3 8M 64k',
    ]);
    assert.doesNotMatch(stdout, /Pattern verification failed/);
    const image = await readFile(imagePath);
    assert.ok(image.subarray(0, MiB).equals(Buffer.alloc(MiB, 0x5a)), 'the bytes written over TLS are on disk');
    assert.ok(image.subarray(8 * MiB, 8 * MiB + 64 * 1024).equals(Buffer.alloc(64 * 1024, 0xc3)));
    const established = events.filter((e) => e.type === 'tls-established');
    assert.ok(established.some((e) => e.type === 'tls-established' && e.clientCertificateSubject === 'nubis-test-client'));
    assert.ok(events.some((e) => e.type === 'export-selected' && e.tls));
  });

  it('qemu-img and nbdinfo (nbds://) see the export through TLS', async () => {
    const { stdout: info } = await run('qemu-img', ['info', '--output=json', '--object', tlsObject(certs.clientDir), '--image-opts', tlsImage()]);
    assert.equal(JSON.parse(info)['virtual-size'], SIZE);
    const { stdout: nbdinfo } = await run('nbdinfo', ['--json', `nbds://127.0.0.1:${port}/disk?tls-certificates=${certs.clientDir}`]);
    const parsed = JSON.parse(nbdinfo);
    assert.equal(parsed.exports[0]['export-size'], SIZE);
    assert.equal(parsed.TLS, true);
  });

  it('refuses plaintext clients with NBD_REP_ERR_TLS_REQD, and they change nothing', async () => {
    const before_ = await imageDigest();
    const client = await RawHandshake.open(port);
    for (const option of [C.NBD_OPT_LIST, C.NBD_OPT_STRUCTURED_REPLY, C.NBD_OPT_INFO, C.NBD_OPT_GO]) {
      const data = option === C.NBD_OPT_INFO || option === C.NBD_OPT_GO ? goData('disk') : undefined;
      const reply = await client.option(option, data);
      assert.equal(reply.type, C.NBD_REP_ERR_TLS_REQD, `option ${option} before TLS`);
      assert.match(reply.message, /requires TLS/);
    }
    // NBD_OPT_EXPORT_NAME cannot be refused with an error: the server ends the session.
    client.sendOption(C.NBD_OPT_EXPORT_NAME, Buffer.from('disk'));
    await closesWithin(client, 5000);

    await assert.rejects(run('qemu-io', ['-f', 'raw', `nbd://127.0.0.1:${port}/disk`, '-c', 'write -P 0x11 0 1M']), /TLS/);
    await assert.rejects(run('nbdinfo', [`nbd://127.0.0.1:${port}/disk`]));
    assert.equal(await imageDigest(), before_, 'no byte changed');
  });

  it('refuses TLS clients without a certificate from the CA, and keeps serving', async () => {
    const before_ = await imageDigest();
    const count = (type: NbdServerEvent['type']) => events.filter((e) => e.type === type).length;
    for (const credsDir of [certs.noCertDir, certs.rogueDir]) {
      const connected = count('connected');
      const established = count('tls-established');
      // qemu-io names the TLS alert, or (when the server's refusal wins the race against its own
      // handshake write) only sees the connection reset; the counts below prove the refusal.
      await assert.rejects(
        run('qemu-io', ['--object', tlsObject(credsDir), '--image-opts', tlsImage(), '-c', 'write -P 0x22 0 1M']),
        /TLS|Connection reset by peer|Broken pipe/,
      );
      assert.equal(count('connected'), connected + 1, 'the client reached the server');
      assert.equal(count('tls-established'), established, 'and the server refused its handshake');
    }
    assert.equal(await imageDigest(), before_, 'no byte changed');
    await run('qemu-io', ['--object', tlsObject(certs.clientDir), '--image-opts', tlsImage(), '-c', 'read -P 0x5a 0 1M']);
  });

  it('ends only the connection on broken TLS handshakes and plaintext after STARTTLS', async () => {
    // Garbage instead of a ClientHello.
    const garbage = await RawHandshake.open(port);
    assert.equal((await garbage.option(C.NBD_OPT_STARTTLS)).type, C.NBD_REP_ACK);
    garbage.socket.write('GET / HTTP/1.1\r\nHost: nbd\r\n\r\n');
    await closesWithin(garbage, 5000);

    // Plaintext options sent right behind STARTTLS, before the reply: never processed.
    const injected = await RawHandshake.open(port);
    const go = goData('disk');
    const header = (option: number, length: number) => {
      const b = Buffer.alloc(16);
      b.writeBigUInt64BE(C.NBD_IHAVEOPT, 0);
      b.writeUInt32BE(option, 8);
      b.writeUInt32BE(length, 12);
      return b;
    };
    injected.socket.write(Buffer.concat([header(C.NBD_OPT_STARTTLS, 0), header(C.NBD_OPT_GO, go.length), go]));
    await closesWithin(injected, 5000);

    // STARTTLS with data is invalid; the connection stays usable.
    const withData = await RawHandshake.open(port);
    assert.equal((await withData.option(C.NBD_OPT_STARTTLS, Buffer.from('x'))).type, C.NBD_REP_ERR_INVALID);
    assert.equal((await withData.option(C.NBD_OPT_ABORT)).type, C.NBD_REP_ACK);
    withData.socket.destroy();

    // A client that hangs up in the middle of the handshake.
    const quitter = await RawHandshake.open(port);
    assert.equal((await quitter.option(C.NBD_OPT_STARTTLS)).type, C.NBD_REP_ACK);
    quitter.socket.write(Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00, 0x01]));
    quitter.socket.destroy();

    // The server still serves TLS clients, and every broken connection is gone.
    await run('qemu-io', ['--object', tlsObject(certs.clientDir), '--image-opts', tlsImage(), '-c', 'read -P 0xc3 8M 64k']);
    for (let i = 0; i < 50 && server.connectionCount > 0; i++) await new Promise((resolve) => setTimeout(resolve, 100));
    assert.equal(server.connectionCount, 0);
  });

  it('serves a listener that opted out of TLS in plaintext', async () => {
    await run('qemu-io', ['-f', 'raw', `nbd+unix:///disk?socket=${socketPath}`, '-c', 'read -P 0x5a 0 1M']);
  });
});

describe('NBD server without TLS', () => {
  it('answers NBD_OPT_STARTTLS with NBD_REP_ERR_POLICY and goes on in plaintext', async () => {
    const server = new NbdServer({ catalog: mapCatalog(new Map()) });
    try {
      const { port } = (await server.listen({ host: '127.0.0.1', port: 0 })) as { port: number };
      const client = await RawHandshake.open(port);
      assert.equal((await client.option(C.NBD_OPT_STARTTLS)).type, C.NBD_REP_ERR_POLICY);
      assert.equal((await client.option(C.NBD_OPT_LIST)).type, C.NBD_REP_ACK);
      client.socket.destroy();
      await assert.rejects(server.listen({ host: '127.0.0.1', port: 0, tls: true }), { code: 'NBD_TLS_CONFIG' });
    } finally {
      await server.close(1000);
    }
  });
});
