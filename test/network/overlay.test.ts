// Real-kernel tests of the bridge + VXLAN overlay: two host namespaces on an underlay bridge, two
// tenant networks with the SAME subnet (VNI 100 and 101) on both, and probe namespaces playing VMs.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { ipJson } from '../../src/network/ip-command.ts';
import { bridgeNameFor, vxlanNameFor } from '../../src/network/names.ts';
import { createTap, deleteTap, ensureNetworkOnHost, getPeers, inspectNetworkOnHost, removeNetworkFromHost, setPeers } from '../../src/network/overlay.ts';
import { openProbe, runProbe, startProbe, type Probe } from '../../src/network/probe.ts';
import { buildTestbed, plumbNetworks, flushNeighbours, leftovers, macOf, type Testbed } from './testbed.ts';

const NET_A = 'net-a';
const NET_B = 'net-b';

/** busybox arping: exit 0 and "reply from IP [MAC]" lines when someone answers. */
async function arping(probe: Probe, target: string): Promise<{ answered: boolean; macs: string[] }> {
  const result = await probe.run(['busybox', 'arping', '-c', '2', '-w', '2', '-I', 'eth0', target], { timeoutMs: 10_000 });
  const macs = [...result.stdout.matchAll(/reply from [0-9.]+ \[([0-9a-f:]+)\]/gi)].map((match) => match[1].toLowerCase());
  return { answered: result.exitCode === 0 && macs.length > 0, macs: [...new Set(macs)] };
}

async function ping(probe: Probe, target: string, count = 2): Promise<boolean> {
  const result = await probe.run(['busybox', 'ping', '-c', String(count), '-W', '1', target], { timeoutMs: 15_000 });
  return result.exitCode === 0;
}

describe('bridge + VXLAN overlay across two hosts', { timeout: 120_000 }, () => {
  let bed: Testbed;
  const probes: Probe[] = [];
  const open = async (...args: Parameters<typeof openProbe>) => {
    const probe = await openProbe(...args);
    probes.push(probe);
    return probe;
  };

  before(async () => {
    bed = await buildTestbed(2);
    await plumbNetworks(bed, [
      [NET_A, 100],
      [NET_B, 101],
    ]);
  });

  after(async () => {
    for (const probe of probes) await probe.close().catch(() => {});
    if (bed) {
      await bed.teardown();
      assert.deepEqual(await leftovers(bed.prefix), []);
    }
  });

  it('makes a bridge and a VXLAN port with UDP 4789, the VNI and an MTU 50 below the underlay', async () => {
    const [h1] = bed.hosts;
    const state = await inspectNetworkOnHost({ hostNs: h1.ns, networkKey: NET_A });
    assert.ok(state);
    assert.equal(state.vni, 100);
    assert.equal(state.mtu, 1450);
    assert.equal(state.localUnderlayIp, h1.underlayIp);
    assert.deepEqual(state.peers, [bed.hosts[1].underlayIp]);
    const [vxlan] = await ipJson<{ mtu: number; master: string; linkinfo: { info_data: { port: number; id: number } } }[]>(
      ['-d', 'link', 'show', 'dev', vxlanNameFor(NET_A)],
      { netns: h1.ns },
    );
    assert.equal(vxlan.linkinfo.info_data.port, 4789);
    assert.equal(vxlan.master, bridgeNameFor(NET_A));
    // The host has no address on the tenant segment.
    const addresses = await ipJson<{ addr_info: unknown[] }[]>(['addr', 'show', 'dev', bridgeNameFor(NET_A)], { netns: h1.ns });
    assert.deepEqual(addresses[0].addr_info, []);
  });

  it('is idempotent: ensuring and setting the same peers again changes nothing', async () => {
    const [h1, h2] = bed.hosts;
    const devices = await ensureNetworkOnHost({ hostNs: h1.ns, networkKey: NET_A, vni: 100, localUnderlayIp: h1.underlayIp });
    assert.deepEqual(devices, { bridge: bridgeNameFor(NET_A), vxlan: vxlanNameFor(NET_A), vni: 100, mtu: 1450 });
    const change = await setPeers({ hostNs: h1.ns, networkKey: NET_A, peerUnderlayIps: [h1.underlayIp, h2.underlayIp, h2.underlayIp] });
    assert.deepEqual(change, { added: [], removed: [] });
    assert.deepEqual(await getPeers({ hostNs: h1.ns, networkKey: NET_A }), [h2.underlayIp]);
  });

  it('carries ping across hosts within one network, with full-size frames', async () => {
    const [h1, h2] = bed.hosts;
    const a1 = await open({ hostNs: h1.ns, networkKey: NET_A, address: '10.0.0.10/24' });
    await open({ hostNs: h2.ns, networkKey: NET_A, address: '10.0.0.20/24' });
    assert.ok(await ping(a1, '10.0.0.20'), 'ping over the overlay failed');
    // 1422 bytes of payload + 8 ICMP + 20 IP = 1450, the overlay MTU: no fragment needed on either side.
    const big = await a1.run(['busybox', 'ping', '-c', '2', '-W', '1', '-s', '1422', '10.0.0.20'], { timeoutMs: 15_000 });
    assert.equal(big.exitCode, 0, big.stdout + big.stderr);
  });

  it('runs a one-off probe command and removes the probe afterwards', async () => {
    const [h1] = bed.hosts;
    const result = await runProbe({
      hostNs: h1.ns,
      networkKey: NET_A,
      address: '10.0.0.99/24',
      command: ['busybox', 'ping', '-c', '1', '-W', '1', '10.0.0.20'],
      timeoutMs: 10_000,
    });
    assert.equal(result.exitCode, 0, result.stdout + result.stderr);
    const state = await inspectNetworkOnHost({ hostNs: h1.ns, networkKey: NET_A });
    assert.deepEqual(
      state!.ports.filter((port) => !probes.some((probe) => probe.hostLinkName === port)),
      [],
    );
    assert.deepEqual(
      (await leftovers(bed.prefix)).filter((name) => name.includes('-pb-')).filter((name) => !probes.some((probe) => probe.namespace === name)),
      [],
    );
  });

  it('keeps networks apart, even with overlapping subnets, on other hosts and on the same host', async () => {
    const [h1, h2] = bed.hosts;
    const a1 = probes[0];
    const aPeerMac = await macOf(probes[1].namespace, 'eth0');
    // Network B has its own 10.0.0.20 (a twin of A's) and addresses A does not have.
    const bTwin = await open({ hostNs: h2.ns, networkKey: NET_B, address: '10.0.0.20/24' });
    const bOther = await open({ hostNs: h2.ns, networkKey: NET_B, address: '10.0.0.30/24' });
    const bSameHost = await open({ hostNs: h1.ns, networkKey: NET_B, address: '10.0.0.31/24' });
    const bTwinMac = await macOf(bTwin.namespace, 'eth0');

    // Control: network B itself works across hosts.
    assert.ok(await ping(bSameHost, '10.0.0.30'), 'network B does not work across hosts');

    await flushNeighbours(a1.namespace);
    assert.equal(await ping(a1, '10.0.0.30'), false, 'A reached an address that only exists on B');
    assert.deepEqual(await arping(a1, '10.0.0.30'), { answered: false, macs: [] });
    assert.deepEqual(await arping(a1, '10.0.0.31'), { answered: false, macs: [] });
    // The twin address answers only from network A's own probe.
    const twin = await arping(a1, '10.0.0.20');
    assert.ok(twin.answered);
    assert.deepEqual(twin.macs, [aPeerMac]);
    assert.notEqual(aPeerMac, bTwinMac);
    await bTwin.close();
    await bOther.close();
  });

  it('stops flooding to a host that setPeers removed, and resumes when it is added back', async () => {
    const [h1, h2] = bed.hosts;
    const [a1, a2] = probes;
    await flushNeighbours(a1.namespace);
    await flushNeighbours(a2.namespace);
    assert.ok((await arping(a1, '10.0.0.20')).answered);
    assert.ok(await neighbourKnown(a2, '10.0.0.10'), 'host 2 did not see the ARP request before the change');

    const change = await setPeers({ hostNs: h1.ns, networkKey: NET_A, peerUnderlayIps: [h1.underlayIp] });
    assert.deepEqual(change, { added: [], removed: [h2.underlayIp] });
    await flushNeighbours(a1.namespace);
    await flushNeighbours(a2.namespace);
    assert.deepEqual(await arping(a1, '10.0.0.20'), { answered: false, macs: [] });
    assert.equal(await neighbourKnown(a2, '10.0.0.10'), false, 'host 2 still received broadcast ARP from host 1');
    assert.equal(await ping(a1, '10.0.0.20'), false);

    await setPeers({ hostNs: h1.ns, networkKey: NET_A, peerUnderlayIps: [h2.underlayIp] });
    // The failed pings left a FAILED neighbour entry; start clean, and allow a loaded machine a
    // few seconds for the first ARP exchange over the restored flood entry.
    await flushNeighbours(a1.namespace);
    assert.ok(await ping(a1, '10.0.0.20', 5), 'ping did not come back after the peer was added again');
  });

  it('keeps a probe pinging in the background and stops it cleanly', async () => {
    const h2 = bed.hosts[1];
    const running = await startProbe({ hostNs: h2.ns, networkKey: NET_A, address: '10.0.0.40/24', command: ['busybox', 'ping', '-i', '0.2', '10.0.0.10'] });
    await new Promise((resolve) => setTimeout(resolve, 1500));
    const result = await running.stop();
    const replies = result.stdout.match(/bytes from 10\.0\.0\.10/g) ?? [];
    assert.ok(replies.length >= 3, `expected replies, got: ${result.stdout}`);
    assert.deepEqual(
      (await leftovers(bed.prefix)).filter((name) => name === running.probe.namespace),
      [],
    );
  });

  it('makes a persistent tap on the network bridge, idempotently, and deletes it', async () => {
    const [h1] = bed.hosts;
    const tap = await createTap({ hostNs: h1.ns, networkKey: NET_A, tapName: 'ntap-test0' });
    assert.deepEqual(tap, { tapName: 'ntap-test0', bridge: bridgeNameFor(NET_A), mtu: 1450 });
    assert.deepEqual(await createTap({ hostNs: h1.ns, networkKey: NET_A, tapName: 'ntap-test0' }), tap);
    const [link] = await ipJson<{ master: string; mtu: number; linkinfo: { info_kind: string; info_data: { type: string; pi: boolean } } }[]>(
      ['-d', 'link', 'show', 'dev', 'ntap-test0'],
      { netns: h1.ns },
    );
    assert.equal(link.master, bridgeNameFor(NET_A));
    assert.equal(link.linkinfo.info_kind, 'tun');
    assert.equal(link.linkinfo.info_data.type, 'tap');
    assert.equal(await deleteTap({ hostNs: h1.ns, tapName: 'ntap-test0' }), true);
    assert.equal(await deleteTap({ hostNs: h1.ns, tapName: 'ntap-test0' }), false);
    await assert.rejects(createTap({ hostNs: h1.ns, networkKey: 'no-such-net', tapName: 'ntap-test1' }), { code: 'NET_NETWORK_NOT_FOUND' });
  });

  it('undoes the bridge when the VXLAN device cannot be made (VNI already taken on the host)', async () => {
    const [h1] = bed.hosts;
    await assert.rejects(ensureNetworkOnHost({ hostNs: h1.ns, networkKey: 'net-clash', vni: 100, localUnderlayIp: h1.underlayIp }), {
      code: 'NET_COMMAND_FAILED',
    });
    const names = (await ipJson<{ ifname: string }[]>(['link', 'show'], { netns: h1.ns })).map((link) => link.ifname);
    assert.ok(!names.includes(bridgeNameFor('net-clash')), 'the bridge of the failed network was left behind');
    await assert.rejects(ensureNetworkOnHost({ hostNs: h1.ns, networkKey: 'net-big', vni: 102, localUnderlayIp: h1.underlayIp, mtu: 1500 }), {
      code: 'NET_INVALID_MTU',
    });
  });

  it('removes a network from a host, leaving the other network working', async () => {
    const h2 = bed.hosts[1];
    assert.deepEqual(await removeNetworkFromHost({ hostNs: h2.ns, networkKey: NET_B }), [vxlanNameFor(NET_B), bridgeNameFor(NET_B)]);
    assert.deepEqual(await removeNetworkFromHost({ hostNs: h2.ns, networkKey: NET_B }), []);
    assert.equal(await inspectNetworkOnHost({ hostNs: h2.ns, networkKey: NET_B }), undefined);
    assert.ok(await ping(probes[0], '10.0.0.20'));
  });
});

async function neighbourKnown(probe: Probe, address: string): Promise<boolean> {
  const entries = await ipJson<{ dst: string; lladdr?: string }[]>(['neigh', 'show', 'to', address], { netns: probe.namespace });
  return entries.some((entry) => entry.dst === address && entry.lladdr !== undefined);
}
