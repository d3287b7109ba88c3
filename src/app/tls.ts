/**
 * HTTPS for the API: a certificate the user gives, or one from a CA that Nubis makes for itself
 * in `<data>/tls/`. The CA is made once and kept, so a client that trusts its `ca.pem` keeps
 * trusting the control plane across restarts and across server certificates issued for new names.
 *
 * Host names reach `openssl` only through a config file we write, and only after a strict
 * DNS-name/IPv4/IPv6 check: a name is data for a certificate, never an option or a line of config.
 */
import { X509Certificate, createPrivateKey, generateKeyPairSync, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { chmod, mkdir, readFile, readdir, rename, rm, writeFile } from 'node:fs/promises';
import { isIPv4, isIPv6 } from 'node:net';
import { dirname, join, resolve } from 'node:path';
import { NubisError } from '../core/errors.ts';
import { processAlive } from '../core/process-alive.ts';
import { runCommand } from '../core/run-command.ts';

/** Where a certificate, its key and (for the Nubis CA) the CA certificate are. */
export interface TlsFiles {
  certPath: string;
  keyPath: string;
  /** The CA that signed `certPath`; clients trust this file. Set for the Nubis CA only. */
  caPath?: string;
}

/** How the API is served over HTTPS: the user's certificate, or one from the Nubis CA. */
export type ApiTlsOptions = { certPath: string; keyPath: string } | { selfSigned: true; names?: string[] };

/** Options of {@link ensureNubisCa}. */
export interface EnsureCaOptions {
  /** Runs `openssl`; a test passes a fake. Default: core/run-command.ts's `runCommand`. */
  runCommand?: typeof runCommand;
}

/** Names every server certificate carries, so `https://127.0.0.1` and `https://localhost` work. */
const ALWAYS_NAMES = ['127.0.0.1', '::1', 'localhost'];
const CA_DAYS = 3650;
// The CA/Browser Forum's former limit for server certificates; Apple's clients still refuse longer.
const SERVER_DAYS = 825;
/** A server certificate this close to its end is issued again at the next start. */
const RENEW_BEFORE_MS = 30 * 24 * 3600 * 1000;
const OPENSSL_TIMEOUT_MS = 30_000;

// RFC 1123 host names: labels of letters, digits and inner hyphens, at most 63 characters each,
// 253 in all. No wildcard, underscore, trailing dot or leading hyphen (which openssl would read
// as an option). `$` without the m flag matches only at the very end, so no newline gets past.
const DNS_NAME = /^(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$/i;

/**
 * Checks that every name is a DNS name, an IPv4 address or an IPv6 address (no zone, no brackets)
 * and returns them lower-cased; anything else is `TLS_INVALID_NAME` (400) naming the value. Run
 * before anything is written or started, so `nubis up` refuses a bad `--tls-name` at once.
 */
export function checkTlsNames(names: readonly string[]): string[] {
  return names.map((name) => {
    const text = String(name);
    // A name of digits and dots only must be an address: 999.1.1.1 is no host name either.
    const valid = /^[0-9.]+$/.test(text) ? isIPv4(text) : /^[0-9a-f:.]+$/i.test(text) && text.includes(':') ? isIPv6(text) : DNS_NAME.test(text);
    if (!valid)
      throw new NubisError('TLS_INVALID_NAME', `${JSON.stringify(text)} is not a host name or IP address; use a DNS name (api.example.net) or an address`, {
        details: { name: text },
      });
    return text.toLowerCase();
  });
}

/**
 * Makes sure `<dataDir>/tls/` holds the Nubis CA (`ca.key`, `ca.pem`: EC P-256, 10 years) and a
 * server key and certificate signed by it (`server.key`, `server.pem`: 825 days, serverAuth) whose
 * subjectAltName covers every name in `hostNames` plus 127.0.0.1, ::1 and localhost. The CA is
 * made once, in a temporary folder renamed into place, so a crash leaves either a whole CA or
 * none. The server certificate is issued again (by the same CA) when a name is missing from it,
 * when it nears its end, or when its key does not match it. Names are checked first
 * (`TLS_INVALID_NAME`); keys are mode 0600, the folder 0700.
 */
export async function ensureNubisCa(dataDir: string, hostNames: string[], options: EnsureCaOptions = {}): Promise<TlsFiles> {
  const names = [...new Set([...checkTlsNames(hostNames), ...ALWAYS_NAMES])];
  const run = options.runCommand ?? runCommand;
  // Absolute, so no path we hand openssl can start with '-'.
  const dir = join(resolve(dataDir), 'tls');
  await removeAbandonedFolders(dir);
  if (!existsSync(dir)) await createCaFolder(dir, names, run);
  await chmod(dir, 0o700);
  const files: TlsFiles = { certPath: join(dir, 'server.pem'), keyPath: join(dir, 'server.key'), caPath: join(dir, 'ca.pem') };
  const ca = await readCa(dir);
  if (!(await serverCertFits(files, ca, names))) await issueServerCert(dir, dir, names, run);
  return files;
}

/**
 * Reads a certificate and key the user gave and checks that they can serve: both readable
 * (`TLS_FILE_UNREADABLE`), PEM that parses (`TLS_CERT_INVALID`, `TLS_KEY_INVALID`), the key is the
 * certificate's (`TLS_KEY_MISMATCH`) and the certificate is valid now (`TLS_CERT_EXPIRED`,
 * `TLS_CERT_NOT_YET_VALID`). The certificate file may hold a chain (leaf first): all of it is
 * served, so clients that know only the root still verify.
 */
export async function loadUserTls(certPath: string, keyPath: string): Promise<{ cert: Buffer; key: Buffer }> {
  const cert = await readTlsFile(certPath, 'certificate');
  const key = await readTlsFile(keyPath, 'key');
  let x509: X509Certificate;
  try {
    x509 = new X509Certificate(cert);
  } catch (error) {
    throw new NubisError('TLS_CERT_INVALID', `${certPath} is not a PEM certificate`, { cause: error, details: { path: certPath } });
  }
  let privateKey: ReturnType<typeof createPrivateKey>;
  try {
    privateKey = createPrivateKey(key);
  } catch (error) {
    throw new NubisError('TLS_KEY_INVALID', `${keyPath} is not an unencrypted PEM private key`, { cause: error, details: { path: keyPath } });
  }
  if (!x509.checkPrivateKey(privateKey))
    throw new NubisError('TLS_KEY_MISMATCH', `The key ${keyPath} does not belong to the certificate ${certPath}`, { details: { certPath, keyPath } });
  const now = Date.now();
  if (Date.parse(x509.validTo) <= now)
    throw new NubisError('TLS_CERT_EXPIRED', `The certificate ${certPath} expired on ${x509.validTo}`, { details: { path: certPath, validTo: x509.validTo } });
  if (Date.parse(x509.validFrom) > now)
    throw new NubisError('TLS_CERT_NOT_YET_VALID', `The certificate ${certPath} is valid only from ${x509.validFrom}`, {
      details: { path: certPath, validFrom: x509.validFrom },
    });
  return { cert, key };
}

/**
 * What the control plane serves HTTPS with: the user's files, or the Nubis CA's server
 * certificate for the given names plus `listenHost` when it is one address (not 0.0.0.0 or ::).
 * `caPath` is set for the Nubis CA: the control plane writes it into the API info for the CLI.
 */
export async function prepareApiTls(
  dataDir: string,
  tls: ApiTlsOptions,
  listenHost?: string,
): Promise<{ https: { cert: Buffer; key: Buffer }; caPath?: string }> {
  if (!('selfSigned' in tls)) return { https: await loadUserTls(tls.certPath, tls.keyPath) };
  const listenName = listenHost && !['0.0.0.0', '::'].includes(listenHost) ? [listenHost] : [];
  const files = await ensureNubisCa(dataDir, [...(tls.names ?? []), ...listenName]);
  return { https: { cert: await readFile(files.certPath), key: await readFile(files.keyPath) }, caPath: files.caPath };
}

async function readTlsFile(path: string, what: string): Promise<Buffer> {
  try {
    return await readFile(path);
  } catch (error) {
    throw new NubisError('TLS_FILE_UNREADABLE', `Cannot read the ${what} file ${path}: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`, {
      cause: error,
      details: { path },
    });
  }
}

/** Builds the CA and a first server certificate in a folder of its own, then renames it to `dir`. */
async function createCaFolder(dir: string, names: string[], run: typeof runCommand): Promise<void> {
  const temporary = `${dir}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
  await mkdir(dirname(dir), { recursive: true, mode: 0o700 });
  await mkdir(temporary, { mode: 0o700 });
  try {
    const config = join(temporary, 'ca.cnf');
    await writeFile(config, caConfig());
    await writePrivateKey(join(temporary, 'ca.key'));
    const key = join(temporary, 'ca.key');
    await openssl(run, [
      'req',
      '-new',
      '-x509',
      '-config',
      config,
      '-extensions',
      'nubis_ca',
      '-key',
      key,
      '-sha256',
      '-days',
      String(CA_DAYS),
      '-out',
      join(temporary, 'ca.pem'),
    ]);
    await rm(config);
    await issueServerCert(temporary, temporary, names, run);
    await rename(temporary, dir);
  } catch (error) {
    await rm(temporary, { recursive: true, force: true });
    // Another process made the CA first: use theirs, so both serve with one CA.
    if ((error as NodeJS.ErrnoException).code === 'ENOTEMPTY' || (error as NodeJS.ErrnoException).code === 'EEXIST') return;
    throw error;
  }
}

/** Temporary folders (`<dir>.tmp-<pid>-...`) of a process that died while making the CA or a certificate. */
async function removeAbandonedFolders(dir: string): Promise<void> {
  const parent = dirname(dir);
  if (!existsSync(parent)) return;
  const prefix = `${dir.slice(parent.length + 1)}.tmp-`;
  for (const entry of await readdir(parent)) {
    const pid = entry.startsWith(prefix) ? Number.parseInt(entry.slice(prefix.length), 10) : Number.NaN;
    if (Number.isInteger(pid) && !processAlive(pid)) await rm(join(parent, entry), { recursive: true, force: true });
  }
}

async function readCa(dir: string): Promise<X509Certificate> {
  try {
    const ca = new X509Certificate(await readFile(join(dir, 'ca.pem')));
    if (!ca.checkPrivateKey(createPrivateKey(await readFile(join(dir, 'ca.key'))))) throw new Error('ca.key is not the key of ca.pem');
    return ca;
  } catch (error) {
    // Making a new CA here would silently break every client that trusts the old one.
    throw new NubisError(
      'TLS_CA_DAMAGED',
      `The Nubis CA in ${dir} is damaged (${(error as Error).message}); remove that folder to make a new CA, and trust its new ca.pem`,
      {
        cause: error,
      },
    );
  }
}

/** True when the server certificate was signed by `ca`, matches its key, lasts, and covers `names`. */
async function serverCertFits(files: TlsFiles, ca: X509Certificate, names: string[]): Promise<boolean> {
  try {
    const cert = new X509Certificate(await readFile(files.certPath));
    if (!cert.checkIssued(ca) || !cert.verify(ca.publicKey)) return false;
    if (!cert.checkPrivateKey(createPrivateKey(await readFile(files.keyPath)))) return false;
    if (Date.parse(cert.validTo) - Date.now() < RENEW_BEFORE_MS) return false;
    return names.every((name) =>
      isIPv4(name) || isIPv6(name) ? cert.checkIP(name) !== undefined : cert.checkHost(name, { subject: 'never', wildcards: false }) !== undefined,
    );
  } catch {
    // Missing or unreadable: issue a new one.
    return false;
  }
}

/**
 * Issues `server.key` + `server.pem` into `outDir` with the CA of `caDir`. Each is written under a
 * temporary name and renamed, key first: a crash between the renames leaves a key that does not
 * match the certificate, which the next start notices and repairs.
 */
async function issueServerCert(caDir: string, outDir: string, names: string[], run: typeof runCommand): Promise<void> {
  await issueLeaf(run, {
    caDir,
    outDir,
    base: 'server',
    config: leafConfig({ commonName: 'Nubis API', names, purposes: ['serverAuth'], keyUsage: 'digitalSignature', section: 'nubis_server' }),
    extensions: 'nubis_server',
    days: SERVER_DAYS,
  });
}

/** A leaf certificate to issue: its openssl config (with a `[req]` and an extensions section). */
interface LeafRequest {
  caDir: string;
  outDir: string;
  /** Files `<base>.key` and `<base>.pem` in `outDir`. */
  base: string;
  config: string;
  extensions: string;
  days: number;
}

/** Issues `<base>.key` + `<base>.pem` (see issueServerCert), renamed into place key first. */
async function issueLeaf(run: typeof runCommand, leaf: LeafRequest): Promise<void> {
  const suffix = `.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
  const temp = (name: string): string => join(leaf.outDir, `${leaf.base}${name}${suffix}`);
  try {
    await writeFile(temp('.cnf'), leaf.config);
    await writePrivateKey(temp('.key'));
    await openssl(run, ['req', '-new', '-config', temp('.cnf'), '-key', temp('.key'), '-out', temp('.csr')]);
    // A random positive serial of up to 127 bits: RFC 5280 4.1.2.2 wants it unique per CA, and
    // a counter file (openssl's -CAcreateserial) cannot be kept consistent across crashes.
    const serial = randomBytes(16);
    serial[0] &= 0x7f;
    await openssl(run, [
      ...['x509', '-req', '-in', temp('.csr'), '-CA', join(leaf.caDir, 'ca.pem'), '-CAkey', join(leaf.caDir, 'ca.key')],
      ...['-set_serial', `0x${serial.toString('hex')}`, '-sha256', '-days', String(leaf.days)],
      ...['-extfile', temp('.cnf'), '-extensions', leaf.extensions, '-out', temp('.pem')],
    ]);
    await chmod(temp('.pem'), 0o644);
    await rename(temp('.key'), join(leaf.outDir, `${leaf.base}.key`));
    await rename(temp('.pem'), join(leaf.outDir, `${leaf.base}.pem`));
  } finally {
    for (const name of ['.cnf', '.csr', '.key', '.pem']) await rm(temp(name), { force: true });
  }
}

/** What a certificate of the Nubis CA is for (see {@link issueNubisCertificate}). */
export interface CertificateRequest {
  /** The subject's common name, a name {@link checkTlsNames} accepts: `vm-1879048193.host-1`. */
  commonName: string;
  /** TLS server, TLS client, or both (a migration's QEMU is one or the other). */
  purposes: Array<'server' | 'client'>;
  /** Names and addresses the certificate is valid for (subjectAltName); the common name is always one. */
  names?: string[];
  days: number;
}

/** A certificate, its private key and the CA certificate that verifies it, PEM-encoded. */
export interface IssuedCertificate {
  certPem: string;
  keyPem: string;
  caPem: string;
}

/**
 * Issues a certificate of the Nubis CA (made first when there is none, as {@link ensureNubisCa}
 * makes it) and returns it with its key, keeping neither: the caller writes them where their
 * user reads them (a VM's QEMU, the storage node). Names are checked first (`TLS_INVALID_NAME`)
 * and reach openssl only in a config file. Key usage takes digitalSignature and keyEncipherment:
 * QEMU before 10.0.7 refuses a certificate without the second (crypto/tlscredsx509.c).
 */
export async function issueNubisCertificate(dataDir: string, request: CertificateRequest, options: EnsureCaOptions = {}): Promise<IssuedCertificate> {
  const [commonName] = checkTlsNames([request.commonName]);
  const names = [...new Set([commonName!, ...checkTlsNames(request.names ?? [])])];
  const purposes = [...new Set(request.purposes)];
  if (purposes.length === 0 || purposes.some((purpose) => purpose !== 'server' && purpose !== 'client'))
    throw new NubisError('VALIDATION_FAILED', `A certificate is for "server", "client" or both, not ${JSON.stringify(request.purposes)}`);
  if (!Number.isInteger(request.days) || request.days < 1 || request.days > SERVER_DAYS)
    throw new NubisError('VALIDATION_FAILED', `A certificate lasts 1 to ${SERVER_DAYS} days, not ${request.days}`);
  const { caPath } = await ensureNubisCa(dataDir, [], options);
  const caDir = dirname(caPath!);
  await removeAbandonedFolders(join(caDir, 'issue'));
  const outDir = join(caDir, `issue.tmp-${process.pid}-${randomBytes(4).toString('hex')}`);
  await mkdir(outDir, { mode: 0o700 });
  try {
    const config = leafConfig({
      commonName: commonName!,
      names,
      purposes: purposes.map((purpose) => (purpose === 'server' ? 'serverAuth' : 'clientAuth')),
      keyUsage: 'digitalSignature, keyEncipherment',
      section: 'nubis_leaf',
    });
    await issueLeaf(options.runCommand ?? runCommand, { caDir, outDir, base: 'leaf', config, extensions: 'nubis_leaf', days: request.days });
    return {
      certPem: await readFile(join(outDir, 'leaf.pem'), 'utf8'),
      keyPem: await readFile(join(outDir, 'leaf.key'), 'utf8'),
      caPem: await readFile(caPath!, 'utf8'),
    };
  } finally {
    await rm(outDir, { recursive: true, force: true });
  }
}

/**
 * A new EC P-256 key in PKCS#8 PEM. Node's crypto makes it rather than `openssl genpkey`, so the
 * file is created with mode 0600 by us: the key is never readable by others, not even for a moment.
 */
async function writePrivateKey(path: string): Promise<void> {
  const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  await writeFile(path, privateKey.export({ type: 'pkcs8', format: 'pem' }), { mode: 0o600, flag: 'wx' });
}

/** Runs openssl on files we created (our configs say `prompt = no`: it never waits for a terminal). */
async function openssl(run: typeof runCommand, args: string[]): Promise<void> {
  await run('openssl', args, { timeoutMs: OPENSSL_TIMEOUT_MS });
}

/**
 * Our own config: openssl reads nothing of the system's openssl.cnf, whose defaults (extensions
 * of `req -x509`) differ between distributions. A random id in the CA's name tells two Nubis CAs
 * apart in a trust store.
 */
function caConfig(): string {
  return [
    '[req]',
    'distinguished_name = dn',
    'prompt = no',
    '[dn]',
    `CN = Nubis CA ${randomBytes(4).toString('hex')}`,
    'O = Nubis',
    '[nubis_ca]',
    'basicConstraints = critical, CA:TRUE, pathlen:0',
    'keyUsage = critical, keyCertSign, cRLSign',
    'subjectKeyIdentifier = hash',
    '',
  ].join('\n');
}

/**
 * A leaf certificate's request and its extensions (in section `section`); names were checked by
 * checkTlsNames. The subject is the CN alone: QEMU's authz-simple matches a client by its whole DN
 * (migration-tls.ts), and clients match a server by its subjectAltName only (RFC 6125).
 */
function leafConfig(leaf: { commonName: string; names: string[]; purposes: string[]; keyUsage: string; section: string }): string {
  const ips = leaf.names.filter((name) => isIPv4(name) || isIPv6(name));
  const dns = leaf.names.filter((name) => !ips.includes(name));
  return [
    '[req]',
    'distinguished_name = dn',
    'prompt = no',
    '[dn]',
    `CN = ${leaf.commonName}`,
    `[${leaf.section}]`,
    'basicConstraints = critical, CA:FALSE',
    `keyUsage = critical, ${leaf.keyUsage}`,
    `extendedKeyUsage = ${leaf.purposes.join(', ')}`,
    'subjectKeyIdentifier = hash',
    'authorityKeyIdentifier = keyid',
    'subjectAltName = @alt_names',
    '[alt_names]',
    ...dns.map((name, index) => `DNS.${index + 1} = ${name}`),
    ...ips.map((name, index) => `IP.${index + 1} = ${name}`),
    '',
  ].join('\n');
}

/**
 * The storage node's TLS folder for its NBD TCP listener, `<data>/tls/storage/` (mode 0700), in
 * QEMU's file names: `server-cert.pem` + `server-key.pem` (a new key and certificate of the Nubis
 * CA for `addresses`, the names hosts connect to) and `ca-cert.pem`, the CA that clients'
 * certificates must come from (`nubis daemon storage --nbd-tls-dir`). Issued again at every call:
 * the node reads them once, at its start.
 */
export async function prepareStorageNodeTls(dataDir: string, addresses: string[], options: EnsureCaOptions = {}): Promise<string> {
  const issued = await issueNubisCertificate(dataDir, { commonName: 'nubis-storage', purposes: ['server'], names: addresses, days: SERVER_DAYS }, options);
  const dir = join(resolve(dataDir), 'tls', 'storage');
  await mkdir(dir, { recursive: true, mode: 0o700 });
  await chmod(dir, 0o700);
  for (const [name, text, mode] of [
    ['ca-cert.pem', issued.caPem, 0o644],
    ['server-cert.pem', issued.certPem, 0o644],
    ['server-key.pem', issued.keyPem, 0o600],
  ] as const) {
    const temporary = join(dir, `${name}.tmp-${process.pid}`);
    await writeFile(temporary, text, { mode });
    await rename(temporary, join(dir, name));
  }
  return dir;
}
