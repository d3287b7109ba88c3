// A DHCP server per tenant network: Debian's dnsmasq (dnsmasq-base) in its own small namespace,
// joined by a veth to the network's bridge on one host, like OpenStack's qdhcp namespace. It hands
// out fixed leases only (MAC -> IP from IPAM), no DNS. dnsmasq daemonizes and writes a pid file, so
// it outlives an agent restart and the next agent finds and adopts it.
import { createHash } from 'node:crypto';
import { chmod, readFile, readdir, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { NubisError } from '../core/errors.ts';
import { assertIpv4, cidrContains, normalizeMac, parseIpv4Cidr } from './addresses.ts';
import { findLink, ip, runCommand, setExactAddress, setSysctl, type CommandOptions } from './ip-command.ts';
import { dhcpLinkNameFor } from './names.ts';
import { createNamespace, deleteNamespace, isRunning, processCommandLine } from './namespaces.ts';
import { plugNamespace, type NetworkOnHostKey } from './overlay.ts';
import { Revert } from '../core/revert.ts';
import { deleteLinkIfPresent } from './underlay.ts';

/** The dnsmasq binary of Debian's dnsmasq-base package. */
export const DNSMASQ_BINARY = '/usr/sbin/dnsmasq';

/** The server's interface name inside its namespace. */
export const DHCP_INTERFACE = 'eth0';

/** One fixed lease. */
export interface DhcpHost {
  mac: string;
  ip: string;
  /** Host name handed to the client; letters, digits and '-' only. */
  name?: string;
}

/** Where a network's DHCP server lives and where it keeps its files. */
export interface DhcpLocation extends NetworkOnHostKey {
  /**
   * Folder for the server's files (config, hosts, leases, pid, log); it must exist and is made
   * mode 0755, and its parents must be searchable by the `dnsmasq` user: dnsmasq drops root after
   * start-up and re-reads the hosts file as that user.
   */
  stateDir: string;
  /** The server's namespace; default `<hostNs>-dhcp-<hash of networkKey>`, so host prefixes cover it. */
  dhcpNs?: string;
}

/** What {@link ensureDhcp} needs. */
export interface DhcpOptions extends DhcpLocation {
  /** The network's subnet, e.g. `10.0.0.0/24`. */
  subnet: string;
  /** The server's own address in the subnet, e.g. `10.0.0.2` (prefix length from `subnet`). */
  serverIp: string;
  /** Router option handed to clients; none when omitted (dnsmasq would otherwise offer itself). */
  gateway?: string;
  /** The fixed leases. Unknown MACs get nothing. */
  hosts: readonly DhcpHost[];
  /** Lease time; default 3600 s. */
  leaseTimeSeconds?: number;
  /** Interface MTU option (26) handed to clients; default the network bridge's MTU, so guests fit the overlay. */
  mtu?: number;
}

/** A running DHCP server. */
export interface DhcpServer {
  namespace: string;
  pid: number;
  /** The veth end on the network's bridge in the host namespace. */
  hostLinkName: string;
  confPath: string;
  hostsPath: string;
  leasePath: string;
  pidPath: string;
  logPath: string;
}

/** The files of a DHCP server in its state folder. */
export function dhcpPaths(stateDir: string): Pick<DhcpServer, 'confPath' | 'hostsPath' | 'leasePath' | 'pidPath' | 'logPath'> {
  return {
    confPath: join(stateDir, 'dnsmasq.conf'),
    hostsPath: join(stateDir, 'dhcp-hosts'),
    leasePath: join(stateDir, 'dhcp-leases'),
    pidPath: join(stateDir, 'dnsmasq.pid'),
    logPath: join(stateDir, 'dnsmasq.log'),
  };
}

/** The default DHCP namespace of a network on a host. */
export function dhcpNamespaceFor(hostNs: string, networkKey: string): string {
  return `${hostNs}-dhcp-${createHash('sha256').update(networkKey).digest('hex').slice(0, 8)}`;
}

/**
 * Makes sure the network's DHCP server runs on the host with this configuration: namespace,
 * veth to the bridge, the server address, config and hosts files, and a dnsmasq process.
 * Idempotent: a running server with the same configuration only re-reads its hosts (SIGHUP);
 * one with another configuration is restarted. On failure everything this call made is undone.
 */
export async function ensureDhcp(options: DhcpOptions): Promise<DhcpServer> {
  const subnet = parseIpv4Cidr(options.subnet, 'subnet');
  assertIpv4(options.serverIp, 'DHCP server address');
  if (!cidrContains(options.subnet, options.serverIp)) {
    throw new NubisError('NET_INVALID_ADDRESS', `DHCP server address ${options.serverIp} is outside subnet ${options.subnet}`, {
      details: { serverIp: options.serverIp, subnet: options.subnet },
    });
  }
  if (options.gateway !== undefined) assertIpv4(options.gateway, 'gateway');
  const hostsText = renderDhcpHosts(options.hosts, options.subnet);
  const namespace = options.dhcpNs ?? dhcpNamespaceFor(options.hostNs, options.networkKey);
  const hostLinkName = dhcpLinkNameFor(options.networkKey);
  const paths = dhcpPaths(options.stateDir);
  const call = { signal: options.signal, timeoutMs: options.timeoutMs };
  const inHost: CommandOptions = { ...call, netns: options.hostNs };
  const inDhcp: CommandOptions = { ...call, netns: namespace };

  return Revert.run(async (revert) => {
    if (await createNamespace(namespace, call)) {
      revert.add(`delete namespace ${namespace}`, () => deleteNamespace(namespace, { ...call, killProcesses: true }));
      // The networks are IPv4; without this the server would also chatter IPv6 on the segment.
      await setSysctl('net.ipv6.conf.all.disable_ipv6', '1', inDhcp);
      await setSysctl('net.ipv6.conf.default.disable_ipv6', '1', inDhcp);
    }
    const hostEnd = await findLink(hostLinkName, inHost);
    const serverEnd = await findLink(DHCP_INTERFACE, inDhcp);
    if (!hostEnd || !serverEnd) {
      await deleteLinkIfPresent(hostLinkName, inHost);
      await deleteLinkIfPresent(DHCP_INTERFACE, inDhcp);
      await plugNamespace({ ...options, hostLinkName, peerNs: namespace, peerName: DHCP_INTERFACE });
      revert.add(`delete veth ${hostLinkName}`, () => deleteLinkIfPresent(hostLinkName, inHost));
    } else {
      await ip(['link', 'set', hostLinkName, 'up'], inHost);
      await ip(['link', 'set', DHCP_INTERFACE, 'up'], inDhcp);
    }
    const serverAddress = `${options.serverIp}/${subnet.prefixLength}`;
    await setExactAddress(DHCP_INTERFACE, serverAddress, inDhcp);
    const mtu = options.mtu ?? (await findLink(DHCP_INTERFACE, inDhcp))!.mtu;

    const conf = renderDnsmasqConf({
      subnet: options.subnet,
      gateway: options.gateway,
      leaseTimeSeconds: options.leaseTimeSeconds ?? 3600,
      mtu,
      ...paths,
    });
    await chmod(options.stateDir, 0o755);
    const running = await runningDnsmasq(paths.pidPath, paths.confPath);
    const previousConf = await readFile(paths.confPath, 'utf8').catch(() => undefined);
    await writeAtomically(paths.hostsPath, hostsText);
    if (running !== undefined && previousConf === conf) {
      process.kill(running, 'SIGHUP');
      return { namespace, pid: running, hostLinkName, ...paths };
    }
    if (running !== undefined) await stopProcess(running);
    await writeAtomically(paths.confPath, conf);
    const pid = await startDnsmasq(namespace, paths, call);
    revert.add(`stop dnsmasq ${pid}`, () => stopProcess(pid));
    return { namespace, pid, hostLinkName, ...paths };
  });
}

/**
 * Replaces the fixed leases of a running server: rewrites its hosts file atomically and sends
 * SIGHUP, on which dnsmasq re-reads it (dnsmasq(8), --dhcp-hostsfile). Throws `NET_DHCP_NOT_RUNNING`
 * when no server of this folder runs.
 */
export async function updateDhcpHosts(options: { stateDir: string; subnet: string; hosts: readonly DhcpHost[] }): Promise<void> {
  const paths = dhcpPaths(options.stateDir);
  const text = renderDhcpHosts(options.hosts, options.subnet);
  const pid = await runningDnsmasq(paths.pidPath, paths.confPath);
  if (pid === undefined) {
    throw new NubisError('NET_DHCP_NOT_RUNNING', `No DHCP server runs from ${options.stateDir}`, { details: { stateDir: options.stateDir } });
  }
  await writeAtomically(paths.hostsPath, text);
  process.kill(pid, 'SIGHUP');
}

/**
 * Stops the network's DHCP server on the host and removes its namespace, its veth and its files
 * in `stateDir` (the folder itself stays). Nothing running is not an error.
 */
export async function stopDhcp(options: DhcpLocation): Promise<void> {
  const paths = dhcpPaths(options.stateDir);
  const namespace = options.dhcpNs ?? dhcpNamespaceFor(options.hostNs, options.networkKey);
  const call = { signal: options.signal, timeoutMs: options.timeoutMs };
  const pid = await runningDnsmasq(paths.pidPath, paths.confPath);
  if (pid !== undefined) await stopProcess(pid);
  await deleteNamespace(namespace, { ...call, killProcesses: true });
  await deleteLinkIfPresent(dhcpLinkNameFor(options.networkKey), { ...call, netns: options.hostNs });
  for (const path of Object.values(paths)) await rm(path, { force: true });
}

/**
 * Stops every dnsmasq whose configuration file lies under `pathPrefix` (say, the DHCP folders of
 * one test bed's hosts), found by its command line in /proc wherever it runs: `nubis down` must
 * leave none behind, also when its namespace, its pid file or its agent is gone. Resolves with
 * the pids it stopped.
 */
export async function stopDhcpServersUnder(pathPrefix: string): Promise<number[]> {
  // An absolute path of two segments at least, so a slip cannot match every dnsmasq on the machine.
  if (!/^\/[^/\0]+\/[^\0]+$/.test(pathPrefix)) {
    throw new NubisError('NET_INVALID_NAME', `DHCP folder prefix ${JSON.stringify(pathPrefix)} is too broad: give an absolute path below a folder`);
  }
  const stopped: number[] = [];
  for (const entry of await readdir('/proc')) {
    const pid = Number(entry);
    if (!Number.isInteger(pid) || pid <= 0) continue;
    const commandLine = await processCommandLine(pid);
    if (commandLine?.[0] !== DNSMASQ_BINARY || !commandLine.some((arg) => arg.startsWith(`--conf-file=${pathPrefix}`))) continue;
    await stopProcess(pid);
    stopped.push(pid);
  }
  return stopped;
}

/** The pid of the dnsmasq serving `confPath` according to `pidPath`, or undefined when none runs. */
export async function runningDnsmasq(pidPath: string, confPath: string): Promise<number | undefined> {
  const text = await readFile(pidPath, 'utf8').catch(() => '');
  const pid = Number.parseInt(text.trim(), 10);
  if (!Number.isInteger(pid) || pid <= 0 || !isRunning(pid)) return undefined;
  // A stale pid file may name a process that reused the pid: check it is our dnsmasq.
  const commandLine = await processCommandLine(pid);
  return commandLine?.includes(`--conf-file=${confPath}`) ? pid : undefined;
}

/** The dnsmasq configuration of a static-only, DNS-less DHCP server. Pure. */
export function renderDnsmasqConf(settings: {
  subnet: string;
  gateway?: string;
  leaseTimeSeconds: number;
  mtu: number;
  hostsPath: string;
  leasePath: string;
  pidPath: string;
  logPath: string;
}): string {
  const subnet = parseIpv4Cidr(settings.subnet, 'subnet');
  return [
    '# Written by Nubis; rewritten on every change.',
    // No DNS at all: DHCP only.
    'port=0',
    `interface=${DHCP_INTERFACE}`,
    'bind-interfaces',
    'no-resolv',
    'no-hosts',
    // We are the only server on this segment: answer clients whose lease we do not know of yet.
    'dhcp-authoritative',
    // "static": only hosts listed in dhcp-hostsfile get an address.
    `dhcp-range=${subnet.network},static,${subnet.netmask},${settings.leaseTimeSeconds}s`,
    `dhcp-hostsfile=${settings.hostsPath}`,
    `dhcp-leasefile=${settings.leasePath}`,
    `pid-file=${settings.pidPath}`,
    `log-facility=${settings.logPath}`,
    'log-dhcp',
    // Empty options suppress dnsmasq's default of offering itself as router and DNS server.
    settings.gateway === undefined ? 'dhcp-option=option:router' : `dhcp-option=option:router,${settings.gateway}`,
    'dhcp-option=option:dns-server',
    // Debian's account for dnsmasq; root is dropped once the sockets, pid and lease files are open.
    'user=dnsmasq',
    'group=nogroup',
    `dhcp-option=option:mtu,${settings.mtu}`,
    '',
  ].join('\n');
}

/**
 * The dhcp-hostsfile text for the leases: one `MAC,IP[,NAME]` line each. Throws on a malformed
 * MAC or name, an address outside `subnet`, or a MAC or address listed twice. Pure.
 */
export function renderDhcpHosts(hosts: readonly DhcpHost[], subnet: string): string {
  const macs = new Set<string>();
  const ips = new Set<string>();
  const lines: string[] = [];
  for (const host of hosts) {
    const mac = normalizeMac(host.mac);
    assertIpv4(host.ip, 'lease address');
    if (!cidrContains(subnet, host.ip)) {
      throw new NubisError('NET_INVALID_ADDRESS', `Lease address ${host.ip} is outside subnet ${subnet}`, { details: { ip: host.ip, subnet } });
    }
    if (host.name !== undefined && !/^[A-Za-z0-9]([A-Za-z0-9-]{0,62})$/.test(host.name)) {
      throw new NubisError('NET_INVALID_NAME', `Host name ${JSON.stringify(host.name)} is not valid: use letters, digits and '-'`, {
        details: { name: host.name },
      });
    }
    if (macs.has(mac) || ips.has(host.ip)) {
      throw new NubisError('NET_DUPLICATE_LEASE', `MAC ${mac} or address ${host.ip} is listed twice`, { details: { mac, ip: host.ip } });
    }
    macs.add(mac);
    ips.add(host.ip);
    lines.push(host.name === undefined ? `${mac},${host.ip}` : `${mac},${host.ip},${host.name}`);
  }
  return lines.join('\n') + (lines.length > 0 ? '\n' : '');
}

/** Starts dnsmasq in the namespace and resolves with the daemon's pid once it serves. */
async function startDnsmasq(namespace: string, paths: ReturnType<typeof dhcpPaths>, call: { signal?: AbortSignal; timeoutMs?: number }): Promise<number> {
  await rm(paths.pidPath, { force: true });
  // dnsmasq forks and its parent exits only after the daemon has bound its sockets and written
  // the pid file, reporting start-up errors through its exit code and stderr.
  await runCommand(DNSMASQ_BINARY, [`--conf-file=${paths.confPath}`], { ...call, netns: namespace });
  const pid = await runningDnsmasq(paths.pidPath, paths.confPath);
  if (pid === undefined) {
    const log = await readFile(paths.logPath, 'utf8').catch(() => '');
    throw new NubisError('NET_DHCP_START_FAILED', `dnsmasq in ${namespace} did not stay up`, { details: { namespace, log: log.slice(-2000) } });
  }
  return pid;
}

/** SIGTERM, then SIGKILL after 3 s; resolves when the process is gone. */
async function stopProcess(pid: number): Promise<void> {
  const send = (signal: NodeJS.Signals) => {
    try {
      process.kill(pid, signal);
    } catch {
      // Already gone.
    }
  };
  send('SIGTERM');
  const deadline = Date.now() + 3000;
  while (isRunning(pid) && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 25));
  if (isRunning(pid)) send('SIGKILL');
  while (isRunning(pid)) await new Promise((resolve) => setTimeout(resolve, 25));
}

/** Readers (dnsmasq on SIGHUP) see the old or the new file, never half of one. */
async function writeAtomically(path: string, text: string): Promise<void> {
  const temporary = `${path}.${process.pid}.tmp`;
  await writeFile(temporary, text, { mode: 0o644 });
  // dnsmasq re-reads it as its own user; the mode above is cut by the agent's umask.
  await chmod(temporary, 0o644);
  await rename(temporary, path);
}
