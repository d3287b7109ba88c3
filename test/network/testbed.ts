// A multi-host test bed on one machine for the network driver tests: host namespaces cabled to an
// underlay bridge, every name under a per-run prefix so parallel runs cannot collide, and a
// teardown that removes everything by that prefix, also after a failed test.
import { randomBytes } from 'node:crypto';
import { ip, ipJson } from '../../src/network/ip-command.ts';
import { listNamespaces } from '../../src/network/namespaces.ts';
import { ensureNetworkOnHost, setPeers } from '../../src/network/overlay.ts';
import { attachHostToUnderlay, cleanupByPrefix, ensureUnderlayBridge, type CleanupReport } from '../../src/network/underlay.ts';

/** One simulated host. */
export interface TestHost {
  ns: string;
  underlayIp: string;
}

/** The hosts of a test bed and its teardown. */
export interface Testbed {
  prefix: string;
  underlayBridge: string;
  hosts: TestHost[];
  /** Removes everything with the prefix; resolves with what it removed. */
  teardown(): Promise<CleanupReport>;
}

/** A fresh per-run name prefix: `nt` + 4 hex characters + `-` (7 characters). */
export function runPrefix(): string {
  return `nt${randomBytes(2).toString('hex')}-`;
}

/** Builds `count` host namespaces (`<prefix>h1`...) on one underlay bridge (`<prefix>ul`), addresses 172.31.0.11/24 upwards. */
export async function buildTestbed(count: number, prefix = runPrefix()): Promise<Testbed> {
  const underlayBridge = `${prefix}ul`;
  const testbed: Testbed = {
    prefix,
    underlayBridge,
    hosts: [],
    teardown: () => cleanupByPrefix(prefix),
  };
  try {
    await ensureUnderlayBridge(underlayBridge);
    for (let i = 1; i <= count; i++) {
      const host = { ns: `${prefix}h${i}`, underlayIp: `172.31.0.${10 + i}` };
      await attachHostToUnderlay({ bridge: underlayBridge, hostNs: host.ns, address: `${host.underlayIp}/24` });
      testbed.hosts.push(host);
    }
  } catch (error) {
    await testbed.teardown();
    throw error;
  }
  return testbed;
}

/** Names of namespaces and root-namespace links that still carry the prefix. */
export async function leftovers(prefix: string): Promise<string[]> {
  const namespaces = await listNamespaces(prefix);
  const links = (await ipJson<{ ifname: string }[]>(['link', 'show'])).map((link) => link.ifname).filter((name) => name.startsWith(prefix));
  return [...namespaces, ...links];
}

/** The MAC of a device in a namespace. */
export async function macOf(ns: string, device: string): Promise<string> {
  const [link] = await ipJson<{ address: string }[]>(['link', 'show', 'dev', device], { netns: ns });
  return link.address;
}

/** Flushes the neighbour (ARP) table of a namespace. */
export async function flushNeighbours(ns: string): Promise<void> {
  await ip(['neigh', 'flush', 'all'], { netns: ns });
}

/** Puts each `[networkKey, vni]` network on every host of `bed`, every host a flood peer of the others. */
export async function plumbNetworks(bed: Testbed, networks: ReadonlyArray<readonly [string, number]>): Promise<void> {
  const ips = bed.hosts.map((host) => host.underlayIp);
  for (const [networkKey, vni] of networks) {
    for (const host of bed.hosts) {
      await ensureNetworkOnHost({ hostNs: host.ns, networkKey, vni, localUnderlayIp: host.underlayIp });
      await setPeers({ hostNs: host.ns, networkKey, peerUnderlayIps: ips });
    }
  }
}
