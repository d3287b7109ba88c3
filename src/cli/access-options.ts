/**
 * The access options of `nubis up` and `nubis daemon control-plane`, defined once: OpenID Connect
 * sign-in and where the audit log publishes its signed heads (outside the data folder: only a
 * head kept elsewhere catches a truncated or replaced log).
 */
import { isAbsolute, relative, resolve } from 'node:path';
import type { Command } from 'commander';
import type { OidcConfig } from '../access/oidc.ts';
import { NubisError } from '../core/errors.ts';

export interface AccessFlags {
  oidcIssuer?: string;
  oidcClientId?: string;
  oidcGroupsClaim?: string;
  oidcUsernameClaim?: string;
  auditPublishFile?: string;
  auditPublishCommand?: string;
}

export interface AccessOptions {
  oidc?: OidcConfig;
  auditPublishFile?: string;
  auditPublishCommand?: string;
}

/** Adds the OpenID Connect and audit publishing flags to `command`. */
export function addAccessOptions(command: Command): Command {
  return command
    .option('--oidc-issuer <url>', 'accept sign-in with ID tokens of this OpenID Connect provider (https, or http on loopback)')
    .option('--oidc-client-id <id>', 'the client id Nubis has at the provider (the audience of its ID tokens)', 'nubis-cli')
    .option('--oidc-groups-claim <claim>', 'the ID token claim with the groups (mapped to roles by nubis role grant group:NAME)', 'groups')
    .option('--oidc-username-claim <claim>', 'the ID token claim that becomes the user name', 'preferred_username')
    .option('--audit-publish-file <file>', 'write each signed audit head to this file, outside the data folder (e.g. a mount of another machine)')
    .option('--audit-publish-command <command>', 'pipe each signed audit head (JSON) to this shell command, e.g. one that sends it to a witness');
}

/** The access choice of the flags, checked before anything starts. */
export function accessOptionsOf(flags: AccessFlags, dataDir: string): AccessOptions {
  const options: AccessOptions = {};
  if (flags.oidcIssuer) {
    options.oidc = {
      issuer: flags.oidcIssuer,
      clientId: flags.oidcClientId ?? 'nubis-cli',
      groupsClaim: flags.oidcGroupsClaim ?? 'groups',
      usernameClaim: flags.oidcUsernameClaim ?? 'preferred_username',
    };
  }
  if (flags.auditPublishFile) {
    const file = resolve(flags.auditPublishFile);
    const inside = relative(resolve(dataDir), file);
    if (!inside.startsWith('..') && !isAbsolute(inside))
      throw new NubisError(
        'VALIDATION_FAILED',
        `--audit-publish-file ${file} is inside the data folder; a head kept there is lost with the log it should catch: give a path elsewhere`,
      );
    options.auditPublishFile = file;
  }
  if (flags.auditPublishCommand) options.auditPublishCommand = flags.auditPublishCommand;
  return options;
}

/** The flags that give `nubis daemon control-plane` the same choice. */
export function accessDaemonArgs(options: AccessOptions): string[] {
  return [
    ...(options.oidc
      ? [
          '--oidc-issuer',
          options.oidc.issuer,
          '--oidc-client-id',
          options.oidc.clientId,
          '--oidc-groups-claim',
          options.oidc.groupsClaim ?? 'groups',
          '--oidc-username-claim',
          options.oidc.usernameClaim ?? 'preferred_username',
        ]
      : []),
    ...(options.auditPublishFile ? ['--audit-publish-file', options.auditPublishFile] : []),
    ...(options.auditPublishCommand ? ['--audit-publish-command', options.auditPublishCommand] : []),
  ];
}
