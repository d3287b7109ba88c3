/**
 * `nubis login`, `logout`, `whoami`, and the nouns of access control: `user`, `role`, `access`
 * (who holds which role where) and `token`.
 */
import type { Static } from '@sinclair/typebox';
import type { Command } from 'commander';
import { deviceLogin } from '../../access/oidc-device-login.ts';
import { NubisError } from '../../core/errors.ts';
import type { Binding, IssuedToken, PermissionInfo, Role, Token, TotpEnrolment, User, WhoAmI } from '../../wire/access-schemas.ts';
import { ApiClient, resolveApiTarget } from '../api-client.ts';
import { client, collect, globals } from '../common.ts';
import { readCredentials, removeCredentials, writeCredentials } from '../credentials.ts';
import { printJson, printTable } from '../output.ts';
import { readSecret } from '../read-secret.ts';

/** `30d`, `12h`, `45m`, `3600s` or a number of seconds. */
function parseDuration(text: string): number {
  const match = /^(\d+)([smhd]?)$/.exec(text);
  if (!match) throw new NubisError('VALIDATION_FAILED', `--expires ${text} is not a duration: write e.g. 30d, 12h, 45m`);
  return Number(match[1]) * { '': 1, s: 1, m: 60, h: 3600, d: 86400 }[match[2] as '' | 's' | 'm' | 'h' | 'd'];
}

/** Registers login, logout, whoami, user, role, access and token on the program. */
export function registerAccessCommands(program: Command): void {
  registerSessionCommands(program);
  registerUserCommands(program);
  registerGrantCommands(program, registerRoleCommands(program));
  registerTokenCommands(program);
}

function registerSessionCommands(program: Command): void {
  program
    .command('login')
    .description('Sign in and keep a session token in your config folder (mode 0600); --oidc signs in through the OpenID Connect provider')
    .option('--user <name>', 'local user name')
    .option('--password-stdin', 'read the password from stdin (else it is asked for)')
    .option('--totp <code>', 'the 6-digit code of your authenticator app, when you enrolled one')
    .option('--oidc-issuer <url>', 'sign in through this OpenID Connect provider (device flow: open the link it prints)')
    .option('--oidc-client-id <id>', 'the client id Nubis is registered with at the provider', 'nubis-cli')
    .action(async (options: { user?: string; passwordStdin?: boolean; totp?: string; oidcIssuer?: string; oidcClientId: string }, command: Command) => {
      const { url, ca, json } = { ...globals(command), ...resolveApiTargetForLogin(command) };
      const anonymous = new ApiClient({ url, token: '', ...(ca ? { ca } : {}) });
      let issued: Static<typeof IssuedToken>;
      if (options.oidcIssuer) {
        const { idToken } = await deviceLogin({
          issuer: options.oidcIssuer,
          clientId: options.oidcClientId,
          onPrompt: (prompt) => console.error(`Open ${prompt.verificationUriComplete ?? prompt.verificationUri} and enter the code ${prompt.userCode}`),
        });
        issued = await anonymous.request('POST', '/v1/auth/oidc', { idToken });
      } else {
        if (!options.user) throw new NubisError('VALIDATION_FAILED', 'Give --user NAME (or --oidc-issuer URL)');
        const password = await readSecret(`Password for ${options.user}: `, options.passwordStdin === true);
        issued = await anonymous.request('POST', '/v1/auth/login', { user: options.user, password, ...(options.totp ? { totp: options.totp } : {}) });
      }
      const path = await writeCredentials({
        url,
        token: issued.secret,
        user: issued.token.user,
        ...(ca ? { ca } : {}),
        ...(issued.token.expiresAt ? { expiresAt: issued.token.expiresAt } : {}),
      });
      if (json) return printJson({ user: issued.token.user, expiresAt: issued.token.expiresAt, credentials: path });
      console.log(`Signed in as ${issued.token.user} until ${issued.token.expiresAt}; token kept in ${path}`);
    });
  program
    .command('logout')
    .description('Revoke the session of nubis login and forget it')
    .action(async (_options: unknown, command: Command) => {
      const stored = readCredentials();
      if (!stored) throw new NubisError('CLI_NOT_CONFIGURED', 'Not signed in (no credentials from nubis login)');
      await new ApiClient({ url: stored.url, token: stored.token, ...(stored.ca ? { ca: stored.ca } : {}) })
        .request('POST', '/v1/auth/logout')
        .catch((error: NubisError) => {
          // A session that expired or was revoked already is as good as ended.
          if (!['AUTH_TOKEN_EXPIRED', 'AUTH_TOKEN_REVOKED', 'AUTH_INVALID_TOKEN'].includes(error.code)) throw error;
        });
      await removeCredentials();
      if (globals(command).json) return printJson({ user: stored.user, loggedOut: true });
      console.log(`${stored.user}: signed out`);
    });
  program
    .command('whoami')
    .description('Who the CLI acts as, with which roles and limits')
    .action(async (_options: unknown, command: Command) => {
      const me = await client(command).request<Static<typeof WhoAmI>>('GET', '/v1/auth/whoami');
      if (globals(command).json) return printJson(me);
      console.log(`${me.user} (token ${me.token}, ${me.tokenKind}${me.expiresAt ? `, until ${me.expiresAt}` : ''})`);
      if (me.limitedToProject) console.log(`  limited to project ${me.limitedToProject}`);
      if (me.limitedToRole) console.log(`  limited to role ${me.limitedToRole}`);
      printTable(
        ['ROLE', 'ON', 'VIA'],
        me.roles.map((r) => [r.role, r.project ? `project ${r.project}` : 'platform', r.via]),
      );
    });
}

/** The API a login goes to: --url, NUBIS_URL, or the local control plane (no token needed yet). */
function resolveApiTargetForLogin(command: Command): { url: string; ca?: string } {
  const options = globals(command);
  try {
    const target = resolveApiTarget(options.data, { ...options, token: options.token ?? 'login' });
    return { url: target.url, ...(target.ca ? { ca: target.ca } : {}) };
  } catch (error) {
    throw new NubisError('CLI_NOT_CONFIGURED', `Where is Nubis? Give --url https://HOST:PORT (${(error as Error).message})`);
  }
}

function registerUserCommands(program: Command): void {
  const user = program.command('user').description('Users (platform admins manage them)');
  user
    .command('list')
    .description('List users')
    .action(async (_options: unknown, command: Command) => {
      const users = await client(command).request<Array<Static<typeof User>>>('GET', '/v1/users');
      if (globals(command).json) return printJson(users);
      printTable(
        ['NAME', 'SOURCE', 'TOTP', 'CREATED'],
        users.map((u) => [u.name, u.source, u.totp ? 'yes' : 'no', u.createdAt]),
      );
    });
  user
    .command('create <name>')
    .description('Create a local user (with --password-stdin it can sign in with a password)')
    .option('--password-stdin', 'read the password from stdin')
    .action(async (name: string, options: { passwordStdin?: boolean }, command: Command) => {
      const password = options.passwordStdin ? await readSecret('', true) : undefined;
      const created = await client(command).request<Static<typeof User>>('POST', '/v1/users', { name, ...(password ? { password } : {}) });
      if (globals(command).json) return printJson(created);
      console.log(`${name}: created${password ? '' : ' (no password: it signs in with tokens only until nubis user passwd)'}`);
    });
  user
    .command('delete <name>')
    .description('Delete a user, its role bindings and tokens')
    .action(async (name: string, _options: unknown, command: Command) => {
      await client(command).request('DELETE', `/v1/users/${encodeURIComponent(name)}`);
      if (globals(command).json) return printJson({ deleted: name });
      console.log(`${name}: deleted`);
    });
  user
    .command('passwd <name>')
    .description("Set a password (your own asks for the current one); the user's sessions end")
    .option('--password-stdin', 'read the new password (and, for your own, the current one on the line before) from stdin')
    .action(async (name: string, options: { passwordStdin?: boolean }, command: Command) => {
      const api = client(command);
      const me = await api.request<Static<typeof WhoAmI>>('GET', '/v1/auth/whoami');
      // Your own password is changed with the current one (a first one, e.g. the first admin's, without).
      const currentPassword = me.user === name && me.hasPassword ? await readSecret('Current password: ', options.passwordStdin === true) : undefined;
      const password = await readSecret('New password: ', options.passwordStdin === true);
      await api.request('PUT', `/v1/users/${encodeURIComponent(name)}/password`, { password, ...(currentPassword ? { currentPassword } : {}) });
      if (globals(command).json) return printJson({ user: name, passwordSet: true });
      console.log(`${name}: password set`);
    });
  const totp = user.command('totp').description('A second factor for your own sign-in');
  totp
    .command('enable')
    .description('Start: prints the secret and an otpauth:// URI for an authenticator app')
    .action(async (_options: unknown, command: Command) => {
      const enrolment = await client(command).request<Static<typeof TotpEnrolment>>('POST', '/v1/auth/totp');
      if (globals(command).json) return printJson(enrolment);
      console.log(`Secret: ${enrolment.secret}\nURI:    ${enrolment.uri}\nAdd it to your authenticator app, then: nubis user totp confirm CODE`);
    });
  totp
    .command('confirm <code>')
    .description('Turn the second factor on with the current code of the app')
    .action(async (code: string, _options: unknown, command: Command) => {
      await client(command).request('POST', '/v1/auth/totp/confirm', { code });
      if (globals(command).json) return printJson({ totp: true });
      console.log('Second factor on: nubis login asks for --totp from now on');
    });
}

function registerRoleCommands(program: Command): Command {
  const role = program.command('role').description('Roles: named sets of permissions, granted on a project or the platform');
  role
    .command('list')
    .description('Built-in and custom roles')
    .action(async (_options: unknown, command: Command) => {
      const roles = await client(command).request<Array<Static<typeof Role>>>('GET', '/v1/roles');
      if (globals(command).json) return printJson(roles);
      printTable(
        ['ROLE', 'BUILT IN', 'PERMISSIONS', 'DESCRIPTION'],
        roles.map((r) => [
          r.name,
          r.builtin ? 'yes' : 'no',
          r.permissions.length > 6 ? `${r.permissions.length} permissions` : r.permissions.join(','),
          r.description,
        ]),
      );
    });
  role
    .command('permissions')
    .description('Every permission, where it applies and what it allows')
    .action(async (_options: unknown, command: Command) => {
      const permissions = await client(command).request<Array<Static<typeof PermissionInfo>>>('GET', '/v1/permissions');
      if (globals(command).json) return printJson(permissions);
      printTable(
        ['PERMISSION', 'SCOPE', 'ALLOWS'],
        permissions.map((p) => [p.name, p.scope, p.description]),
      );
    });
  role
    .command('create <name>')
    .description('Create a custom role, e.g. nubis role create vm-restarter --permission vm.read --permission vm.power')
    .requiredOption('--permission <name>', 'a permission (repeat)', collect, [])
    .option('--description <text>', 'what the role is for')
    .action(async (name: string, options: { permission: string[]; description?: string }, command: Command) => {
      const created = await client(command).request<Static<typeof Role>>('POST', '/v1/roles', {
        name,
        permissions: options.permission,
        ...(options.description ? { description: options.description } : {}),
      });
      if (globals(command).json) return printJson(created);
      console.log(`${name}: created with ${created.permissions.join(', ')}`);
    });
  role
    .command('delete <name>')
    .description('Delete a custom role nobody holds')
    .action(async (name: string, _options: unknown, command: Command) => {
      await client(command).request('DELETE', `/v1/roles/${encodeURIComponent(name)}`);
      if (globals(command).json) return printJson({ deleted: name });
      console.log(`${name}: deleted`);
    });
  return role;
}

/** `role grant`, `role revoke` and `access list`. */
function registerGrantCommands(program: Command, role: Command): void {
  for (const action of ['grant', 'revoke'] as const) {
    role
      .command(`${action} <subject> <role>`)
      .description(
        `${action === 'grant' ? 'Grant' : 'Revoke'} a role: SUBJECT is a user name or group:NAME (an OpenID Connect group); without --project, on the whole platform`,
      )
      .option('--project <name>', 'the project (default: the whole platform)')
      .action(async (subject: string, roleName: string, options: { project?: string }, command: Command) => {
        const who: Record<string, string> = subject.startsWith('group:') ? { group: subject.slice(6) } : { user: subject };
        const request: Record<string, string> = { ...who, role: roleName, ...(options.project ? { project: options.project } : {}) };
        const api = client(command);
        if (action === 'grant') await api.request('POST', '/v1/access/grants', request);
        else await api.request('DELETE', `/v1/access/grants?${new URLSearchParams(request)}`);
        if (globals(command).json) return printJson({ [action === 'grant' ? 'granted' : 'revoked']: request });
        console.log(
          `${subject}: ${roleName} ${action === 'grant' ? 'granted' : 'revoked'} on ${options.project ? `project ${options.project}` : 'the platform'}`,
        );
      });
  }
  program
    .command('access')
    .description('Who holds which role where')
    .command('list')
    .description('Role bindings: of a project, of a user, or all you may see')
    .option('--project <name>', 'of this project')
    .option('--user <name>', 'of this user')
    .action(async (options: { project?: string; user?: string }, command: Command) => {
      const query = new URLSearchParams({ ...(options.project ? { project: options.project } : {}), ...(options.user ? { user: options.user } : {}) });
      const bindings = await client(command).request<Array<Static<typeof Binding>>>('GET', `/v1/access${query.size > 0 ? `?${query}` : ''}`);
      if (globals(command).json) return printJson(bindings);
      printTable(
        ['SUBJECT', 'ROLE', 'ON', 'SINCE'],
        bindings.map((b) => [b.subject, b.role, b.project ? `project ${b.project}` : 'platform', b.createdAt]),
      );
    });
}

function registerTokenCommands(program: Command): void {
  const token = program.command('token').description('Your API tokens: named, narrower than you, shown once');
  token
    .command('create <name>')
    .description('Make a token, e.g. nubis token create ci --project web --role reader --expires 30d')
    .option('--project <name>', 'acts only in this project')
    .option('--role <role>', "holds only this role's permissions (never more than yours)")
    .option('--expires <duration>', 'lifetime, e.g. 30d, 12h (default: until revoked)')
    .action(async (name: string, options: { project?: string; role?: string; expires?: string }, command: Command) => {
      const issued = await client(command).request<Static<typeof IssuedToken>>('POST', '/v1/tokens', {
        name,
        ...(options.project ? { project: options.project } : {}),
        ...(options.role ? { role: options.role } : {}),
        ...(options.expires ? { expiresInSeconds: parseDuration(options.expires) } : {}),
      });
      if (globals(command).json) return printJson(issued);
      console.log(`${name}: ${issued.secret}\nShown once: keep it now (only its hash is stored).`);
    });
  token
    .command('list')
    .description("Your tokens and sessions (everyone's with --all)")
    .option('--all', "every user's (needs token.manage)")
    .action(async (options: { all?: boolean }, command: Command) => {
      const tokens = await client(command).request<Array<Static<typeof Token>>>('GET', `/v1/tokens${options.all ? '?all=true' : ''}`);
      if (globals(command).json) return printJson(tokens);
      printTable(
        ['NAME', 'USER', 'KIND', 'PROJECT', 'ROLE', 'EXPIRES', 'REVOKED', 'LAST USED'],
        tokens.map((t) => [t.name, t.user, t.kind, t.project, t.role, t.expiresAt, t.revokedAt, t.lastUsedAt]),
      );
    });
  token
    .command('revoke <name>')
    .description('Revoke a token (by name or id); it is refused from the next request on')
    .option('--user <name>', "another user's token (needs token.manage)")
    .action(async (name: string, options: { user?: string }, command: Command) => {
      await client(command).request('DELETE', `/v1/tokens/${encodeURIComponent(name)}${options.user ? `?user=${encodeURIComponent(options.user)}` : ''}`);
      if (globals(command).json) return printJson({ revoked: name });
      console.log(`${name}: revoked`);
    });
}
