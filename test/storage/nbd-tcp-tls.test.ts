// The storage node's NBD listener on TCP, as `nubis up` sets it up: TLS only, with certificates of
// the Nubis CA (src/app/tls.ts), and each client telling by its certificate which VM it is
// (`vm-<uid>.<host>`). A real QEMU (qemu-io, running as the VM's uid, with the exact -object and
// -blockdev strings the VM's QEMU gets) reads and writes its volume through it; it cannot open
// another VM's volume; a client without a certificate, with a plaintext handshake, with a
// certificate of another CA or naming no VM the node serves is refused; a fence and a release cut
// it as they cut the VM's unix socket.
import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import { chmod, chown, mkdir, mkdtemp, readFile, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { issueNubisCertificate, prepareStorageNodeTls } from '../../src/app/tls.ts';
import { diskBlockdev, storageTlsObject } from '../../src/compute/qemu/command-line.ts';
import type { DiskSpec } from '../../src/compute/vm-spec.ts';
import { VM_UID_FIRST } from '../../src/compute/vm-user.ts';
import { dataPaths } from '../../src/core/paths.ts';
import { startStorageNode, storageNodeFolders } from '../../src/storage/storage-node.ts';
import { vmStorageClientName } from '../../src/storage/vm-socket-checks.ts';
import { runAs } from '../helpers/run-as.ts';

const MiB = 1024 * 1024;
const UID_A = VM_UID_FIRST + 0x0011_0000;
const UID_B = UID_A + 1;
// qemu-io names the TLS alert, or (when the server's refusal wins the race against its own
// handshake write) only sees the connection go.
const REFUSED_HANDSHAKE = /TLS|Connection reset by peer|Broken pipe/;

describe('storage node: NBD over TCP with TLS and per-VM certificates', { skip: process.getuid?.() !== 0 && 'needs root (QEMU runs as VM uids)' }, () => {
  let dir = '';
  let dataDir = '';
  let node: Awaited<ReturnType<typeof startStorageNode>>;
  let port = 0;

  /** A VM's credentials folder as the agent writes it: its uid's alone, the key 0600. */
  async function credentials(name: string, uid: number, files: Record<string, string>): Promise<string> {
    const folder = join(dir, `creds-${name}`);
    await mkdir(folder, { mode: 0o700 });
    for (const [file, text] of Object.entries(files)) {
      await writeFile(join(folder, file), text, { mode: 0o600 });
      await chown(join(folder, file), uid, uid);
    }
    await chown(folder, uid, uid);
    return folder;
  }

  async function vmCredentials(name: string, host: string, uid: number, forUid = uid): Promise<string> {
    const issued = await issueNubisCertificate(dataDir, { commonName: vmStorageClientName(host, uid), purposes: ['client'], days: 1 });
    return credentials(name, forUid, { 'ca-cert.pem': issued.caPem, 'client-cert.pem': issued.certPem, 'client-key.pem': issued.keyPem });
  }

  /** qemu-io as `uid` with the VM's QEMU's own -object and -blockdev for `exportName` over TCP. */
  function qemuIo(uid: number, credsDir: string, exportName: string, command: string, objectSuffix = ''): Promise<{ code: number | null; output: string }> {
    const disk: DiskSpec = { id: 'disk0', kind: 'nbd', socketPath: '/nowhere', exportName, tcp: { host: '127.0.0.1', port } };
    return runAs(uid, 'qemu-io', ['--object', `${storageTlsObject(credsDir)}${objectSuffix}`, '--image-opts', diskBlockdev(disk), '-c', command]);
  }

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'nubis-nbdtcp-'));
    await chmod(dir, 0o711);
    dataDir = join(dir, 'data');
    await mkdir(dataDir, { mode: 0o711 });
    const tlsDir = await prepareStorageNodeTls(dataDir, ['127.0.0.1']);
    node = await startStorageNode({
      ...storageNodeFolders(dataPaths(dataDir)),
      nbdTcp: { host: '127.0.0.1', port: 0 },
      nbdTls: {
        cert: await readFile(join(tlsDir, 'server-cert.pem')),
        key: await readFile(join(tlsDir, 'server-key.pem')),
        ca: await readFile(join(tlsDir, 'ca-cert.pem')),
      },
    });
    port = node.service.addresses.tcp!.port;
    const device = join(dir, 'member.img');
    await writeFile(device, '');
    await truncate(device, 64 * MiB);
    await node.service.createPool({ name: 'p1', layout: 'raid0', devices: [device] });
    for (const volume of ['a', 'b']) await node.service.createVolume('p1', volume, '8M');
    await node.hosts.serveVm('host-1', UID_A, ['p1/a']);
    await node.hosts.serveVm('host-1', UID_B, ['p1/b']);
  });
  after(async () => {
    await node?.stop();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('sets up the TLS folder from the Nubis CA and reports the listener', async () => {
    const tlsDir = join(dataDir, 'tls', 'storage');
    const server = new X509Certificate(await readFile(join(tlsDir, 'server-cert.pem')));
    const ca = new X509Certificate(await readFile(join(dataDir, 'tls', 'ca.pem')));
    assert.ok(server.checkIssued(ca) && server.verify(ca.publicKey), 'signed by the Nubis CA');
    assert.ok(server.checkIP('127.0.0.1'), 'valid for the address hosts connect to');
    assert.match(server.keyUsage?.join(',') ?? '', /1\.3\.6\.1\.5\.5\.7\.3\.1/, 'serverAuth');
    assert.equal((await import('node:fs')).statSync(join(tlsDir, 'server-key.pem')).mode & 0o777, 0o600);
    const info = (await node.app.inject({ method: 'GET', url: '/storage/info' })).json() as { nbdTcp?: unknown };
    assert.deepEqual(info.nbdTcp, { host: '127.0.0.1', port, tls: true, clientCertificates: true });
  });

  it("a VM's QEMU reads and writes its own volume over NBD+TLS with its certificate, and never another VM's", async () => {
    const credsA = await vmCredentials('a', 'host-1', UID_A);
    const wrote = await qemuIo(UID_A, credsA, 'p1/a', 'write -P 0xa7 0 64k');
    assert.equal(wrote.code, 0, wrote.output);
    const read = await qemuIo(UID_A, credsA, 'p1/a', 'read -P 0xa7 0 64k');
    assert.equal(read.code, 0, read.output);
    assert.doesNotMatch(read.output, /Pattern verification failed/);
    const other = await qemuIo(UID_A, credsA, 'p1/b', 'read 0 4k');
    assert.notEqual(other.code, 0);
    assert.match(other.output, /not available on this socket: it serves the disks of VM uid \d+ on host host-1 only/);
  });

  it('refuses a client without a certificate, in plaintext, of another CA, or naming a VM it does not serve', async () => {
    const issued = await issueNubisCertificate(dataDir, { commonName: vmStorageClientName('host-1', UID_A), purposes: ['client'], days: 1 });
    const noCert = await credentials('nocert', UID_A, { 'ca-cert.pem': issued.caPem });
    const bare = await qemuIo(UID_A, noCert, 'p1/a', 'write -P 0x55 0 4k');
    assert.notEqual(bare.code, 0, 'no client certificate');
    assert.match(bare.output, REFUSED_HANDSHAKE);
    const plain = await runAs(UID_A, 'qemu-io', ['-f', 'raw', `nbd://127.0.0.1:${port}/p1/a`, '-c', 'read 0 4k']);
    assert.notEqual(plain.code, 0);
    assert.match(plain.output, /TLS/, 'plaintext is told TLS is required');
    // A certificate of a second CA (another data folder's), with a name the node would admit.
    const rogueData = join(dir, 'rogue');
    const rogue = await issueNubisCertificate(rogueData, { commonName: vmStorageClientName('host-1', UID_A), purposes: ['client'], days: 1 });
    const rogueDir = await credentials('rogue', UID_A, { 'ca-cert.pem': issued.caPem, 'client-cert.pem': rogue.certPem, 'client-key.pem': rogue.keyPem });
    // QEMU would refuse to load a certificate its own CA file does not verify: it is told not to check.
    const other = await qemuIo(UID_A, rogueDir, 'p1/a', 'write -P 0x55 0 4k', ',sanity-check=off');
    assert.notEqual(other.code, 0, 'another CA');
    assert.match(other.output, REFUSED_HANDSHAKE);
    const unknown = await vmCredentials('unknown', 'host-9', UID_A);
    const stranger = await qemuIo(UID_A, unknown, 'p1/a', 'write -P 0x55 0 4k');
    assert.notEqual(stranger.code, 0, 'a VM the node does not serve');
    assert.match(stranger.output, /certificate "vm-\d+\.host-9" is refused: this storage node serves no VM of uid \d+ on host host-9/);
    const intact = await qemuIo(UID_A, join(dir, 'creds-a'), 'p1/a', 'read -P 0xa7 0 64k');
    assert.equal(intact.code, 0, `no refused client changed a byte: ${intact.output}`);
    assert.doesNotMatch(intact.output, /Pattern verification failed/);
  });

  it("a fence of the VM's host and a release of the VM cut its TCP access like its socket's", async () => {
    const credsA = join(dir, 'creds-a');
    await node.hosts.fence('host-1');
    const fenced = await qemuIo(UID_A, credsA, 'p1/a', 'read 0 4k');
    assert.notEqual(fenced.code, 0);
    assert.match(fenced.output, /fenced/);
    await node.hosts.unfence('host-1');
    assert.equal((await qemuIo(UID_A, credsA, 'p1/a', 'read -P 0xa7 0 4k')).code, 0, 'unfenced: served again');
    await node.hosts.releaseVm('host-1', UID_A);
    const released = await qemuIo(UID_A, credsA, 'p1/a', 'read 0 4k');
    assert.notEqual(released.code, 0, 'released: no longer served');
    assert.match(released.output, /serves no VM of uid \d+ on host host-1/);
  });
});
