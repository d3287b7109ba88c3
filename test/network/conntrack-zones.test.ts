// Real-kernel tests of conntrack zones: two networks with the same subnet on one host, a VM
// (a probe namespace) at 10.0.0.5 on each behind a closed security group, a client at 10.0.0.20 on
// each. The host tracks bridged traffic of both; only a zone per network keeps a flow of one from
// opening the other's firewall.
import assert from 'node:assert/strict';
import type { ChildProcessWithoutNullStreams } from 'node:child_process';
import { after, before, describe, it } from 'node:test';
import { CONNTRACK_ZONE_TABLE, readConntrackZones, removeConntrackZone, setConntrackZone } from '../../src/network/conntrack-zones.ts';
import { applyPortFirewall } from '../../src/network/firewall.ts';
import { runCommand } from '../../src/network/ip-command.ts';
import { bridgeNameFor } from '../../src/network/names.ts';
import { ensureNetworkOnHost } from '../../src/network/overlay.ts';
import { openProbe, type Probe } from '../../src/network/probe.ts';
import { buildTestbed, leftovers, type Testbed } from './testbed.ts';

const NETWORKS = ['net-a', 'net-b'] as const;
type Net = (typeof NETWORKS)[number];

describe('conntrack zone per network', { timeout: 120_000 }, () => {
  let bed: Testbed;
  let hostNs: string;
  const vm = {} as Record<Net, Probe>;
  const client = {} as Record<Net, Probe>;
  const listeners: ChildProcessWithoutNullStreams[] = [];

  /**
   * A UDP socket on `port` in the probe that prints what it receives; with `sendTo` it first
   * sends one datagram from that port, which makes the conntrack entry a reply can match.
   */
  const listen = (probe: Probe, port: number, sendTo?: { ip: string; port: number }): { received: () => string } => {
    const send = sendTo ? `s.send('hello', ${sendTo.port}, '${sendTo.ip}');` : '';
    const child = probe.spawn([
      process.execPath,
      '-e',
      `const s = require('node:dgram').createSocket('udp4'); s.on('message', (m) => process.stdout.write(m + '\\n')); s.bind(${port}, () => { ${send} });`,
    ]);
    listeners.push(child);
    let text = '';
    child.stdout.on('data', (chunk: Buffer) => (text += chunk.toString()));
    return { received: () => text };
  };
  /** Sends one datagram from the probe, from `fromPort`. */
  const sendFrom = async (probe: Probe, fromPort: number, to: { ip: string; port: number }, text: string): Promise<void> => {
    const script = `const s = require('node:dgram').createSocket('udp4'); s.bind(${fromPort}, () => s.send('${text}', ${to.port}, '${to.ip}', () => s.close()));`;
    const result = await probe.run([process.execPath, '-e', script], { timeoutMs: 10_000 });
    assert.equal(result.exitCode, 0, result.stderr);
  };
  const settle = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

  before(async () => {
    bed = await buildTestbed(1);
    hostNs = bed.hosts[0].ns;
    for (const [index, network] of NETWORKS.entries()) {
      await ensureNetworkOnHost({ hostNs, networkKey: network, vni: 100 + index, localUnderlayIp: bed.hosts[0].underlayIp });
      const mac = `02:00:00:00:0${index}:05`;
      vm[network] = await openProbe({ hostNs, networkKey: network, address: '10.0.0.5/24', mac });
      client[network] = await openProbe({ hostNs, networkKey: network, address: '10.0.0.20/24', mac: `02:00:00:00:0${index}:20` });
      // A closed security group: nothing new gets in, replies to the VM's own flows do.
      await applyPortFirewall({ hostNs, tapName: vm[network].hostLinkName, mac, ip: '10.0.0.5', ingressRules: [], allowIngressFrom: [] });
    }
  });

  after(async () => {
    for (const child of listeners) child.kill('SIGKILL');
    for (const probe of [...Object.values(vm), ...Object.values(client)]) await probe.close();
    if (bed) {
      await bed.teardown();
      assert.deepEqual(await leftovers(bed.prefix), []);
    }
  });

  it('without zones, a flow of one network lets a packet of the other through a closed port (why zones exist)', async () => {
    const victim = listen(vm['net-b'], 5000);
    listen(vm['net-a'], 5000, { ip: '10.0.0.20', port: 53 });
    await settle(500);
    await sendFrom(client['net-b'], 53, { ip: '10.0.0.5', port: 5000 }, 'intruder');
    await settle(1000);
    assert.equal(victim.received(), 'intruder\n', 'the shared conntrack took it for a reply to net-a');
  });

  it('with a zone per network, the other network stays closed and each network still gets its own replies', async () => {
    await setConntrackZone({ hostNs, networkKey: 'net-a', zone: 101 });
    await setConntrackZone({ hostNs, networkKey: 'net-b', zone: 102 });
    await setConntrackZone({ hostNs, networkKey: 'net-b', zone: 102 });
    assert.deepEqual(
      await readConntrackZones({ hostNs }),
      new Map([
        [bridgeNameFor('net-a'), 101],
        [bridgeNameFor('net-b'), 102],
      ]),
    );
    const rules = (await runCommand('nft', ['list', 'table', 'ip', CONNTRACK_ZONE_TABLE], { netns: hostNs })).stdout;
    assert.match(rules, /priority raw/);
    assert.match(rules, /ct zone set iifname map @zones/);
    const victim = listen(vm['net-b'], 5001);
    const own = listen(vm['net-a'], 5001, { ip: '10.0.0.20', port: 53 });
    await settle(500);
    await sendFrom(client['net-b'], 53, { ip: '10.0.0.5', port: 5001 }, 'intruder');
    await sendFrom(client['net-a'], 53, { ip: '10.0.0.5', port: 5001 }, 'reply');
    await settle(1000);
    assert.equal(victim.received(), '', 'net-b was never asked: its firewall drops it');
    assert.equal(own.received(), 'reply\n', "net-a's reply reaches its VM");
    const tracked = (await runCommand('cat', ['/proc/net/nf_conntrack'], { netns: hostNs })).stdout;
    assert.match(tracked, /udp .*sport=5001 dport=53 .*zone=101/, "net-a's flow is tracked in its zone");
  });

  it('moves a network to another zone, takes zones away, and the table with the last one', async () => {
    await setConntrackZone({ hostNs, networkKey: 'net-b', zone: 103 });
    assert.equal((await readConntrackZones({ hostNs })).get(bridgeNameFor('net-b')), 103);
    await assert.rejects(setConntrackZone({ hostNs, networkKey: 'net-b', zone: 0 }), { code: 'NET_INVALID_CT_ZONE' });
    await removeConntrackZone({ hostNs, networkKey: 'net-a' });
    assert.deepEqual([...(await readConntrackZones({ hostNs })).keys()], [bridgeNameFor('net-b')]);
    await removeConntrackZone({ hostNs, networkKey: 'net-b' });
    await removeConntrackZone({ hostNs, networkKey: 'net-b' });
    const tables = (await runCommand('nft', ['list', 'tables'], { netns: hostNs })).stdout;
    assert.doesNotMatch(tables, new RegExp(CONNTRACK_ZONE_TABLE));
  });
});
