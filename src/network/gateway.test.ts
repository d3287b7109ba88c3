// Unit tests of the gateway's pure parts: names, link subnets, forward checks, nft scripts and
// the reading of `nft -j` output. The real-kernel tests are in test/network/gateway.test.ts.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { gatewayLinkNamesFor, gatewayMacFor, linkAddresses, pickLinkSubnet, routerNamespaceFor } from './gateway-layout.ts';
import { nftSets, renderHostTable, renderRouterTable } from './gateway-nft.ts';
import { normalizePortForwards } from './port-forwards.ts';
import { MAX_INTERFACE_NAME_LENGTH } from './names.ts';

describe('gateway names', () => {
  it('puts the router namespace under the host prefix and keeps it stable', () => {
    const name = routerNamespaceFor('nt1a2b-h1', 'net-a');
    assert.match(name, /^nt1a2b-h1-gw-[0-9a-f]{8}$/);
    assert.equal(routerNamespaceFor('nt1a2b-h1', 'net-a'), name);
    assert.notEqual(routerNamespaceFor('nt1a2b-h1', 'net-b'), name);
  });

  it('derives short, distinct leg names and a locally administered unicast MAC', () => {
    const { innerHostLink, outerHostLink } = gatewayLinkNamesFor('net-a');
    assert.ok(innerHostLink.startsWith('ngi-') && outerHostLink.startsWith('ngo-'));
    assert.equal(innerHostLink.length, MAX_INTERFACE_NAME_LENGTH);
    assert.equal(outerHostLink.length, MAX_INTERFACE_NAME_LENGTH);
    const mac = gatewayMacFor('net-a');
    assert.match(mac, /^02(:[0-9a-f]{2}){5}$/);
    assert.equal(gatewayMacFor('net-a'), mac);
    assert.notEqual(gatewayMacFor('net-b'), mac);
  });
});

describe('link subnets', () => {
  it('picks a /30 of 169.254.0.0/16 from the key and steps past taken ones', () => {
    const first = pickLinkSubnet('net-a', []);
    assert.match(first, /^169\.254\.\d+\.\d+\/30$/);
    assert.equal(pickLinkSubnet('net-a', []), first);
    const second = pickLinkSubnet('net-a', [first]);
    assert.notEqual(second, first);
    assert.ok(![first, second].includes(pickLinkSubnet('net-a', [first, second])));
  });

  it('never picks 169.254.169.0/24, where clouds keep their metadata service', () => {
    for (let i = 0; i < 2000; i++) assert.doesNotMatch(pickLinkSubnet(`key-${i}`, []), /^169\.254\.169\./);
  });

  it('gives the host .1 and the router .2, and accepts only a /30', () => {
    assert.deepEqual(linkAddresses('169.254.7.4/30'), { linkSubnet: '169.254.7.4/30', hostLinkIp: '169.254.7.5', routerOuterIp: '169.254.7.6' });
    assert.deepEqual(linkAddresses('169.254.7.6/30').linkSubnet, '169.254.7.4/30');
    assert.throws(() => linkAddresses('169.254.7.0/29'), { code: 'NET_INVALID_ADDRESS' });
  });
});

describe('normalizePortForwards', () => {
  const forward = { protocol: 'tcp' as const, hostPort: 8080, vmIp: '10.0.0.5', vmPort: 80 };

  it('fills in the listen address and keeps a forward own address', () => {
    assert.deepEqual(normalizePortForwards([forward, { ...forward, hostPort: 8081, listenAddress: '172.31.0.12' }], '10.0.0.0/24', '172.31.0.11'), [
      { ...forward, listenAddress: '172.31.0.11' },
      { ...forward, hostPort: 8081, listenAddress: '172.31.0.12' },
    ]);
  });

  it('refuses bad ports, protocols, addresses and repeated host ports', () => {
    const check = (bad: object) =>
      assert.throws(() => normalizePortForwards([{ ...forward, ...bad }], '10.0.0.0/24', '172.31.0.11'), { code: 'NET_INVALID_PORT_FORWARD' });
    check({ hostPort: 0 });
    check({ vmPort: 65536 });
    check({ hostPort: 80.5 });
    check({ protocol: 'icmp' });
    check({ vmIp: '10.0.1.5' });
    check({ vmIp: 'vm' });
    assert.throws(() => normalizePortForwards([forward], '10.0.0.0/24'), { code: 'NET_INVALID_PORT_FORWARD' }, 'no listen address at all');
    check({ listenAddress: '172.31.0' });
    assert.throws(() => normalizePortForwards([forward, { ...forward, vmPort: 81 }], '10.0.0.0/24', '172.31.0.11'), {
      code: 'NET_INVALID_PORT_FORWARD',
    });
    // The same port number over another protocol is another forward.
    assert.equal(normalizePortForwards([forward, { ...forward, protocol: 'udp' }], '10.0.0.0/24', '172.31.0.11').length, 2);
  });
});

describe('nft scripts', () => {
  it('masquerades only the tenant subnet out of the outer leg and lets in only replies and forwards', () => {
    const script = renderRouterTable('10.0.0.0/24');
    assert.match(script, /postrouting oifname "gw-out" ip saddr 10\.0\.0\.0\/24 masquerade/);
    assert.match(script, /prerouting iifname "gw-out" dnat ip to meta l4proto \. th dport map @forwards/);
    assert.match(script, /forward iifname "gw-out" ct status dnat accept\nadd rule ip nubis_router forward iifname "gw-out" drop/);
    // Reapplying keeps the forwards: the map is added, never flushed.
    assert.doesNotMatch(script, /flush (map|set)/);
  });

  it('gives the host table its shape without touching its elements', () => {
    const script = renderHostTable();
    assert.match(script, /add map ip nubis_gateway forwards \{ type inet_proto \. inet_service : ipv4_addr \. inet_service; \}/);
    assert.match(script, /output ip daddr \. meta l4proto \. th dport @listeners dnat/);
    assert.match(script, /postrouting ip saddr \. oifname @masquerade_sources masquerade/);
    assert.doesNotMatch(script, /flush (map|set)|element/);
  });
});

describe('nftSets', () => {
  it('reads concatenated set and map elements from nft -j output', () => {
    const json = JSON.stringify({
      nftables: [
        { metainfo: { version: '1.0.6' } },
        { map: { family: 'ip', name: 'forwards', table: 't', elem: [[{ concat: ['tcp', 8080] }, { concat: ['169.254.1.2', 8080] }]] } },
        { set: { family: 'ip', name: 'listeners', table: 't', elem: [{ concat: ['172.31.0.11', 'udp', 53] }] } },
        { set: { family: 'ip', name: 'empty', table: 't' } },
        { chain: { family: 'ip', name: 'prerouting', table: 't' } },
      ],
    });
    const sets = nftSets(json);
    assert.deepEqual(sets.get('forwards'), [
      [
        ['tcp', 8080],
        ['169.254.1.2', 8080],
      ],
    ]);
    assert.deepEqual(sets.get('listeners'), [['172.31.0.11', 'udp', 53]]);
    assert.deepEqual(sets.get('empty'), []);
    assert.equal(sets.has('prerouting'), false);
  });
});
