// Runs iproute2 and the other host tools the network driver needs, optionally inside a named
// network namespace. Protocol-level code: it imports nothing from the application except the
// shared error type, so it can be lifted into its own package as it is.
import { spawn } from 'node:child_process';
import { NubisError } from '../core/errors.ts';

/** Default deadline for one host command: `ip` answers in milliseconds, so 10 s means it hangs. */
export const DEFAULT_COMMAND_TIMEOUT_MS = 10_000;

/** What a finished command printed and how it ended. */
export interface CommandResult {
  exitCode: number;
  stdout: string;
  stderr: string;
}

/** Options shared by every host command. */
export interface CommandOptions {
  /** Run inside this named network namespace (`ip netns exec NS ...`); the root namespace when absent. */
  netns?: string;
  /** Cancels the command: the process is killed and the call rejects with `NET_COMMAND_ABORTED`. */
  signal?: AbortSignal;
  /** Kills the command after this long and rejects with `NET_COMMAND_TIMEOUT`. Default 10 s. */
  timeoutMs?: number;
  /** Written to the command's standard input, which is then closed. */
  input?: string;
  /** When true a non-zero exit is returned, not thrown. Default false. */
  allowFailure?: boolean;
}

/**
 * Runs `command args...` (inside `options.netns` when given) and collects its output. A non-zero
 * exit rejects with `NET_COMMAND_FAILED` whose message names the command and carries its stderr,
 * unless `allowFailure` is set; a timeout or abort kills the process (SIGKILL) and rejects with
 * `NET_COMMAND_TIMEOUT` or `NET_COMMAND_ABORTED`.
 */
export function runCommand(command: string, args: readonly string[], options: CommandOptions = {}): Promise<CommandResult> {
  const timeoutMs = options.timeoutMs ?? DEFAULT_COMMAND_TIMEOUT_MS;
  // `ip netns exec` execs the command in place, so killing the pid kills the command itself.
  const argv = options.netns === undefined ? [command, ...args] : ['ip', 'netns', 'exec', options.netns, command, ...args];
  const shown = argv.join(' ');
  return new Promise<CommandResult>((resolve, reject) => {
    if (options.signal?.aborted) {
      reject(new NubisError('NET_COMMAND_ABORTED', `Command was aborted before it started: ${shown}`, { cause: options.signal.reason }));
      return;
    }
    const child = spawn(argv[0], argv.slice(1), { stdio: ['pipe', 'pipe', 'pipe'] });
    const stdout: Buffer[] = [];
    const stderr: Buffer[] = [];
    let ended: 'timeout' | 'abort' | undefined;
    const stop = (why: 'timeout' | 'abort') => {
      if (ended !== undefined) return;
      ended = why;
      child.kill('SIGKILL');
    };
    const timer = setTimeout(() => stop('timeout'), timeoutMs);
    const onAbort = () => stop('abort');
    options.signal?.addEventListener('abort', onAbort, { once: true });
    child.stdout.on('data', (chunk: Buffer) => stdout.push(chunk));
    child.stderr.on('data', (chunk: Buffer) => stderr.push(chunk));
    // A command that exits without reading its input must not crash us with EPIPE.
    child.stdin.on('error', () => {});
    child.stdin.end(options.input ?? '');
    const finish = () => {
      clearTimeout(timer);
      options.signal?.removeEventListener('abort', onAbort);
    };
    child.on('error', (error) => {
      finish();
      reject(new NubisError('NET_COMMAND_FAILED', `Cannot run ${shown}: ${error.message}`, { cause: error, details: { command: argv } }));
    });
    child.on('close', (code, killedBy) => {
      finish();
      const result: CommandResult = {
        exitCode: code ?? 128,
        stdout: Buffer.concat(stdout).toString('utf8'),
        stderr: Buffer.concat(stderr).toString('utf8'),
      };
      if (ended === 'timeout') {
        reject(new NubisError('NET_COMMAND_TIMEOUT', `Command did not finish within ${timeoutMs} ms: ${shown}`, { details: { command: argv, ...result } }));
      } else if (ended === 'abort') {
        reject(
          new NubisError('NET_COMMAND_ABORTED', `Command was aborted: ${shown}`, { cause: options.signal?.reason, details: { command: argv, ...result } }),
        );
      } else if (result.exitCode !== 0 && !options.allowFailure) {
        const why = result.stderr.trim() || (killedBy ? `killed by ${killedBy}` : `exit code ${result.exitCode}`);
        reject(new NubisError('NET_COMMAND_FAILED', `${shown} failed: ${why}`, { details: { command: argv, ...result } }));
      } else {
        resolve(result);
      }
    });
  });
}

/**
 * Runs `ip ARGS...`, inside `options.netns` with `ip -n NS` (cheaper than `ip netns exec`, which
 * remounts /sys). Resolves with stdout; failures reject as in {@link runCommand}.
 */
export async function ip(args: readonly string[], options: CommandOptions = {}): Promise<string> {
  const { netns, ...rest } = options;
  const prefix = netns === undefined ? [] : ['-n', netns];
  return (await runCommand('ip', [...prefix, ...args], rest)).stdout;
}

/** Runs `ip -j ARGS...` and parses its JSON; an empty answer (e.g. no namespaces) is `[]`. */
export async function ipJson<T = unknown>(args: readonly string[], options: CommandOptions = {}): Promise<T> {
  return parseJsonOutput<T>(await ip(['-j', ...args], options), `ip -j ${args.join(' ')}`);
}

/** Runs `bridge ARGS...` (FDB and port settings), inside `options.netns` with `bridge -n NS`. */
export async function bridge(args: readonly string[], options: CommandOptions = {}): Promise<string> {
  const { netns, ...rest } = options;
  const prefix = netns === undefined ? [] : ['-n', netns];
  return (await runCommand('bridge', [...prefix, ...args], rest)).stdout;
}

/** Runs `bridge -j ARGS...` and parses its JSON. */
export async function bridgeJson<T = unknown>(args: readonly string[], options: CommandOptions = {}): Promise<T> {
  return parseJsonOutput<T>(await bridge(['-j', ...args], options), `bridge -j ${args.join(' ')}`);
}

/** Parses the JSON a tool printed; nothing printed means an empty list. */
export function parseJsonOutput<T>(text: string, what: string): T {
  if (text.trim() === '') return [] as T;
  try {
    return JSON.parse(text) as T;
  } catch (error) {
    throw new NubisError('NET_COMMAND_FAILED', `${what} printed output that is not JSON: ${text.slice(0, 200)}`, { cause: error });
  }
}

/** One link as `ip -j -d link show` describes it (only the fields Nubis reads). */
export interface LinkInfo {
  ifname: string;
  ifindex: number;
  mtu: number;
  address?: string;
  operstate?: string;
  flags?: string[];
  master?: string;
  linkinfo?: { info_kind?: string; info_data?: Record<string, unknown>; info_slave_kind?: string };
}

/** The link named `name` (in `netns` when given), or undefined when there is none. */
export async function findLink(name: string, options: CommandOptions = {}): Promise<LinkInfo | undefined> {
  const links = await listLinks(options);
  return links.find((link) => link.ifname === name);
}

/** Every link in the namespace with details (`ip -j -d link show`). */
export async function listLinks(options: CommandOptions = {}): Promise<LinkInfo[]> {
  // Listing all and filtering avoids parsing "Device does not exist" from stderr.
  return ipJson<LinkInfo[]>(['-d', 'link', 'show'], options);
}

/** Writes a sysctl inside `netns` (or the root namespace), e.g. `net.ipv6.conf.all.disable_ipv6`. */
export async function setSysctl(key: string, value: string, options: CommandOptions = {}): Promise<void> {
  await runCommand('sysctl', ['-q', '-w', `${key}=${value}`], options);
}

/**
 * Leaves exactly `address` (e.g. `10.0.0.2/24`) as the IPv4 address of `device`, or no IPv4
 * address at all when it is undefined: other addresses are deleted, a missing one added.
 */
export async function setExactAddress(device: string, address: string | undefined, options: CommandOptions = {}): Promise<void> {
  const entries = await ipJson<{ addr_info?: { family: string; local: string; prefixlen: number }[] }[]>(['addr', 'show', 'dev', device], options);
  const present = (entries[0]?.addr_info ?? []).filter((info) => info.family === 'inet').map((info) => `${info.local}/${info.prefixlen}`);
  for (const other of present) {
    if (other !== address) await ip(['addr', 'delete', other, 'dev', device], options);
  }
  if (address !== undefined && !present.includes(address)) await ip(['addr', 'add', address, 'dev', device], options);
}
