/**
 * The HTTPS options of `nubis up` and `nubis daemon control-plane`, defined once: the flags, their
 * check, and how `up` hands them to the control-plane process it starts.
 */
import { resolve } from 'node:path';
import type { Command } from 'commander';
import { type ApiTlsOptions, checkTlsNames, loadUserTls } from '../app/tls.ts';
import { NubisError } from '../core/errors.ts';
import { collect } from './common.ts';

/** The HTTPS flags as commander parses them. */
export interface TlsFlags {
  tlsCert?: string;
  tlsKey?: string;
  tlsSelfSigned?: boolean;
  tlsName?: string[];
}

/** Adds `--tls-cert`, `--tls-key`, `--tls-self-signed` and `--tls-name` to `command`. */
export function addTlsOptions(command: Command): Command {
  return command
    .option('--tls-cert <file>', 'serve the API over HTTPS with this certificate (PEM, leaf first; with --tls-key)')
    .option('--tls-key <file>', 'the private key of --tls-cert (PEM, unencrypted)')
    .option('--tls-self-signed', 'serve the API over HTTPS with a certificate from a CA Nubis makes in <data>/tls')
    .option('--tls-name <name>', 'a DNS name or IP address clients use, added to the --tls-self-signed certificate (repeatable)', collect, []);
}

/**
 * The HTTPS choice of the flags, checked before anything starts: exactly one mode, a key with a
 * certificate, names only with `--tls-self-signed`, every name valid, and the user's files
 * readable, matching and in date (app/tls.ts). Paths become absolute: the control plane runs as
 * a process of its own. Undefined when no flag asks for HTTPS.
 */
export async function tlsOptionsOf(flags: TlsFlags): Promise<ApiTlsOptions | undefined> {
  const names = flags.tlsName ?? [];
  if (flags.tlsSelfSigned) {
    if (flags.tlsCert || flags.tlsKey) throw new NubisError('VALIDATION_FAILED', 'Give either --tls-self-signed or --tls-cert with --tls-key, not both');
    return { selfSigned: true, names: checkTlsNames(names) };
  }
  if (names.length > 0) throw new NubisError('VALIDATION_FAILED', '--tls-name names the hosts of the --tls-self-signed certificate: add --tls-self-signed');
  if (!flags.tlsCert && !flags.tlsKey) return undefined;
  if (!flags.tlsCert || !flags.tlsKey) throw new NubisError('VALIDATION_FAILED', '--tls-cert and --tls-key go together: give both');
  const certPath = resolve(flags.tlsCert);
  const keyPath = resolve(flags.tlsKey);
  await loadUserTls(certPath, keyPath);
  return { certPath, keyPath };
}

/** The flags that give `nubis daemon control-plane` the same HTTPS choice. */
export function tlsDaemonArgs(tls: ApiTlsOptions | undefined): string[] {
  if (!tls) return [];
  if ('selfSigned' in tls) return ['--tls-self-signed', ...(tls.names ?? []).flatMap((name) => ['--tls-name', name])];
  return ['--tls-cert', tls.certPath, '--tls-key', tls.keyPath];
}
