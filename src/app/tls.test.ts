import assert from 'node:assert/strict';
import { X509Certificate, createPrivateKey } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { request } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import Fastify from 'fastify';
import { isNubisError } from '../core/errors.ts';
import { runCommand } from '../core/run-command.ts';
import { type TlsFiles, checkTlsNames, ensureNubisCa, issueNubisCertificate, loadUserTls } from './tls.ts';

const DAY_MS = 24 * 3600 * 1000;

/** GET over HTTPS, trusting `ca` only when given; resolves with the body or rejects with the TLS error. */
function httpsGet(url: string, ca?: Buffer): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = request(url, { ca, agent: false }, (response) => {
      let body = '';
      response.setEncoding('utf8').on('data', (chunk: string) => (body += chunk));
      response.on('end', () => resolve(body));
    });
    req.once('error', reject).end();
  });
}

/** Runs openssl in `dir` for test fixtures. */
async function openssl(dir: string, args: string[]): Promise<void> {
  await runCommand(
    'openssl',
    args.map((arg) => (arg.startsWith('@') ? join(dir, arg.slice(1)) : arg)),
    { timeoutMs: 30_000 },
  );
}

describe('the Nubis CA', () => {
  // One folder per run, removed also when a test fails.
  const dir = mkdtempSync(join(tmpdir(), `nubis-tls-test-${process.pid}-`));
  const dataDir = join(dir, 'data');
  let files: TlsFiles;
  before(async () => {
    files = await ensureNubisCa(dataDir, ['api.example.net', '192.0.2.7', '2001:db8::7']);
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('keeps its keys to the owner and its files in a folder closed to others', () => {
    assert.equal(files.caPath, join(dataDir, 'tls', 'ca.pem'));
    assert.equal(statSync(join(dataDir, 'tls')).mode & 0o777, 0o700);
    for (const key of ['ca.key', 'server.key']) assert.equal(statSync(join(dataDir, 'tls', key)).mode & 0o777, 0o600, key);
    for (const path of [files.certPath, files.caPath!]) assert.ok(existsSync(path), path);
  });

  it('issues a server certificate that verifies against the CA and names every host', () => {
    const ca = new X509Certificate(readFileSync(files.caPath!));
    const cert = new X509Certificate(readFileSync(files.certPath));
    assert.equal(ca.ca, true);
    assert.equal(cert.ca, false);
    assert.ok(cert.checkIssued(ca) && cert.verify(ca.publicKey), 'signed by the Nubis CA');
    assert.ok(cert.checkPrivateKey(createPrivateKey(readFileSync(files.keyPath))), "the server key is the certificate's");
    for (const name of ['api.example.net', 'localhost']) assert.equal(cert.checkHost(name, { subject: 'never' }), name);
    for (const ip of ['192.0.2.7', '2001:db8::7', '127.0.0.1', '::1']) assert.ok(cert.checkIP(ip), ip);
    assert.equal(cert.checkHost('other.example.net', { subject: 'never' }), undefined);
    // serverAuth, 825 days; the CA for ten years.
    assert.deepEqual(cert.keyUsage, ['1.3.6.1.5.5.7.3.1']);
    assert.ok(Math.abs(Date.parse(cert.validTo) - Date.now() - 825 * DAY_MS) < 2 * DAY_MS);
    assert.ok(Date.parse(ca.validTo) - Date.now() > 3649 * DAY_MS);
  });

  it('keeps the CA and the certificate while the names fit, and reissues from the same CA for a new name', async () => {
    const caBefore = readFileSync(files.caPath!, 'utf8');
    const certBefore = readFileSync(files.certPath, 'utf8');
    await ensureNubisCa(dataDir, ['API.example.net']);
    assert.equal(readFileSync(files.certPath, 'utf8'), certBefore, 'names already covered: nothing issued');
    await ensureNubisCa(dataDir, ['nubis.internal']);
    const cert = new X509Certificate(readFileSync(files.certPath));
    assert.notEqual(cert.toString(), certBefore);
    assert.equal(readFileSync(files.caPath!, 'utf8'), caBefore, 'the CA stays: clients keep trusting it');
    assert.ok(cert.verify(new X509Certificate(caBefore).publicKey));
    assert.equal(cert.checkHost('nubis.internal', { subject: 'never' }), 'nubis.internal');
  });

  it('repairs a server key that does not match its certificate (a crash between the renames)', async () => {
    writeFileSync(files.keyPath, readFileSync(join(dataDir, 'tls', 'ca.key')), { mode: 0o600 });
    await ensureNubisCa(dataDir, []);
    assert.ok(await loadUserTls(files.certPath, files.keyPath));
  });

  it('refuses a hostile or malformed name before any command runs', async () => {
    const hostile = ['a;rm -rf /', '-subj', 'localhost\nIP.9 = 10.0.0.1', '', 'a..b', '*.example.net', '999.1.1.1', 'fe80::1%eth0', '$(id)', 'a_b.example'];
    const fresh = join(dir, 'hostile');
    for (const name of hostile) {
      const commands: string[][] = [];
      const recordingRun = (async (command: string, args: readonly string[]) => {
        commands.push([command, ...args]);
        return { stdout: '', stderr: '' };
      }) as typeof runCommand;
      await assert.rejects(ensureNubisCa(fresh, ['ok.example', name], { runCommand: recordingRun }), (error) => isNubisError(error, 'TLS_INVALID_NAME'));
      assert.deepEqual(commands, [], `no command ran for ${JSON.stringify(name)}`);
      assert.equal(existsSync(fresh), false, 'nothing written');
    }
    assert.deepEqual(checkTlsNames(['Host-1.Example', '10.0.0.1', '::1']), ['host-1.example', '10.0.0.1', '::1']);
  });

  it('issues client and server certificates of the same CA, keeping no copy, for names it checks first', async () => {
    const ca = new X509Certificate(readFileSync(files.caPath!));
    const client = await issueNubisCertificate(dataDir, { commonName: 'vm-1879048193.host-1', purposes: ['client'], days: 1 });
    const cert = new X509Certificate(client.certPem);
    assert.ok(cert.checkIssued(ca) && cert.verify(ca.publicKey), 'signed by the Nubis CA');
    assert.equal(client.caPem, readFileSync(files.caPath!, 'utf8'));
    assert.ok(cert.checkPrivateKey(createPrivateKey(client.keyPem)));
    assert.match(cert.subject, /CN=vm-1879048193\.host-1/);
    assert.deepEqual(cert.keyUsage, ['1.3.6.1.5.5.7.3.2'], 'clientAuth only');
    assert.ok(Math.abs(Date.parse(cert.validTo) - Date.now() - DAY_MS) < DAY_MS / 2);
    const both = new X509Certificate(
      (await issueNubisCertificate(dataDir, { commonName: 'host-2', purposes: ['server', 'client'], names: ['172.31.0.3'], days: 2 })).certPem,
    );
    assert.deepEqual(both.keyUsage?.sort(), ['1.3.6.1.5.5.7.3.1', '1.3.6.1.5.5.7.3.2']);
    assert.ok(both.checkIP('172.31.0.3') && both.checkHost('host-2', { subject: 'never' }));
    assert.deepEqual(
      readdirSync(join(dataDir, 'tls')).filter((name) => name.includes('tmp')),
      [],
      'no key left behind in the CA folder',
    );
    const commands: string[][] = [];
    const recordingRun = (async (command: string, args: readonly string[]) => {
      commands.push([command, ...args]);
      return { stdout: '', stderr: '' };
    }) as typeof runCommand;
    for (const request of [
      { commonName: 'vm-1\nCN = root', purposes: ['client' as const], days: 1 },
      { commonName: 'ok', names: ['-subj'], purposes: ['client' as const], days: 1 },
    ])
      await assert.rejects(issueNubisCertificate(dataDir, request, { runCommand: recordingRun }), (error) => isNubisError(error, 'TLS_INVALID_NAME'));
    await assert.rejects(issueNubisCertificate(dataDir, { commonName: 'ok', purposes: ['client'], days: 9000 }, { runCommand: recordingRun }), (error) =>
      isNubisError(error, 'VALIDATION_FAILED'),
    );
    assert.deepEqual(commands, [], 'no command ran');
  });

  it('serves HTTPS that a client trusting the CA accepts and a client without it refuses', async (t) => {
    const app = Fastify({ https: { cert: readFileSync(files.certPath), key: readFileSync(files.keyPath) } });
    app.get('/hello', async () => ({ hello: 'over tls' }));
    t.after(() => app.close());
    const url = await app.listen({ host: '127.0.0.1', port: 0 });
    assert.match(url, /^https:\/\/127\.0\.0\.1:\d+$/);
    assert.deepEqual(JSON.parse(await httpsGet(`${url}/hello`, readFileSync(files.caPath!))), { hello: 'over tls' });
    await assert.rejects(httpsGet(`${url}/hello`), (error: NodeJS.ErrnoException) =>
      ['UNABLE_TO_VERIFY_LEAF_SIGNATURE', 'SELF_SIGNED_CERT_IN_CHAIN'].includes(error.code ?? ''),
    );
  });
});

describe('a certificate the user gives', () => {
  const dir = mkdtempSync(join(tmpdir(), `nubis-tls-user-${process.pid}-`));
  after(() => rmSync(dir, { recursive: true, force: true }));
  const newKeyAndRequest = (name: string) =>
    openssl(dir, [
      'req',
      '-new',
      '-newkey',
      'ec',
      '-pkeyopt',
      'ec_paramgen_curve:P-256',
      '-nodes',
      '-subj',
      `/CN=${name}`,
      '-keyout',
      `@${name}.key`,
      '-out',
      `@${name}.csr`,
    ]);
  before(async () => {
    await openssl(dir, [
      'req',
      '-x509',
      '-newkey',
      'ec',
      '-pkeyopt',
      'ec_paramgen_curve:P-256',
      '-nodes',
      '-subj',
      '/CN=test CA',
      '-days',
      '2',
      '-keyout',
      '@ca.key',
      '-out',
      '@ca.pem',
    ]);
    for (const name of ['good', 'other', 'old']) await newKeyAndRequest(name);
    await openssl(dir, ['x509', '-req', '-in', '@good.csr', '-CA', '@ca.pem', '-CAkey', '@ca.key', '-set_serial', '1', '-days', '2', '-out', '@good.pem']);
    // OpenSSL 3.0's x509 and req take no start or end date (-not_before/-not_after came in 3.4),
    // and -days must be positive; `openssl ca` has always taken -startdate/-enddate.
    writeFileSync(join(dir, 'index.txt'), '');
    writeFileSync(join(dir, 'serial'), '02\n');
    writeFileSync(
      join(dir, 'ca.cnf'),
      [
        '[ca]',
        'default_ca = old',
        '[old]',
        'database = index.txt',
        `new_certs_dir = ${dir}`,
        'default_md = sha256',
        'policy = any',
        'serial = serial',
        '[any]',
        'commonName = supplied',
        '',
      ].join('\n'),
    );
    await runCommand(
      'sh',
      [
        '-c',
        `cd "$1" && openssl ca -batch -config ca.cnf -cert ca.pem -keyfile ca.key -in old.csr -out old.pem -startdate 20200101000000Z -enddate 20200102000000Z -notext`,
        'sh',
        dir,
      ],
      { timeoutMs: 30_000 },
    );
  });

  it('loads a certificate with its own key', async () => {
    const { cert, key } = await loadUserTls(join(dir, 'good.pem'), join(dir, 'good.key'));
    assert.deepEqual(cert, readFileSync(join(dir, 'good.pem')));
    assert.deepEqual(key, readFileSync(join(dir, 'good.key')));
  });

  it('refuses a key of another certificate', async () => {
    await assert.rejects(loadUserTls(join(dir, 'good.pem'), join(dir, 'other.key')), (error) => isNubisError(error, 'TLS_KEY_MISMATCH'));
  });

  it('refuses an expired certificate', async () => {
    await assert.rejects(
      loadUserTls(join(dir, 'old.pem'), join(dir, 'old.key')),
      (error) => isNubisError(error, 'TLS_CERT_EXPIRED') && /2020/.test(error.message),
    );
  });

  it('names a file it cannot read, and a file that is no certificate', async () => {
    await assert.rejects(
      loadUserTls(join(dir, 'missing.pem'), join(dir, 'good.key')),
      (error) => isNubisError(error, 'TLS_FILE_UNREADABLE') && error.message.includes('missing.pem'),
    );
    await assert.rejects(loadUserTls(join(dir, 'good.key'), join(dir, 'good.key')), (error) => isNubisError(error, 'TLS_CERT_INVALID'));
    await assert.rejects(loadUserTls(join(dir, 'good.pem'), join(dir, 'good.pem')), (error) => isNubisError(error, 'TLS_KEY_INVALID'));
  });
});
