import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { checkAddress, firstFreeAddress, formatIpv4, parseIpv4, parseSubnet, subnetsOverlap } from './ipam.ts';

describe('IPAM', () => {
  it('parses and normalises subnets, refusing malformed ones with the reason', () => {
    assert.equal(parseSubnet('10.0.0.0/24').cidr, '10.0.0.0/24');
    assert.throws(() => parseSubnet('10.0.0.5/24'), /host bits set; the subnet is 10\.0\.0\.0\/24/);
    assert.throws(() => parseSubnet('10.0.0/24'), /not an IPv4 subnet/);
    assert.throws(() => parseSubnet('300.0.0.0/24'), /not an IPv4 subnet/);
    assert.throws(() => parseSubnet('10.0.0.0/31'), /prefix \/31/);
    assert.throws(() => parseSubnet('10.0.0.0/99'), /not an IPv4 subnet/);
  });

  it('detects overlapping subnets', () => {
    assert.equal(subnetsOverlap(parseSubnet('10.0.0.0/16'), parseSubnet('10.0.5.0/24')), true);
    assert.equal(subnetsOverlap(parseSubnet('10.0.0.0/24'), parseSubnet('10.0.1.0/24')), false);
  });

  it('checks requested addresses and hands out the lowest free one', () => {
    const subnet = parseSubnet('192.168.7.0/29');
    assert.equal(formatIpv4(checkAddress(subnet, '192.168.7.3')), '192.168.7.3');
    assert.throws(() => checkAddress(subnet, '192.168.7.0'), /network or broadcast/);
    assert.throws(() => checkAddress(subnet, '192.168.7.7'), /network or broadcast/);
    assert.throws(() => checkAddress(subnet, '192.168.8.1'), /not a usable address/);
    assert.throws(() => checkAddress(subnet, 'nope'), /not an IPv4 address/);
    const taken = new Set([parseIpv4('192.168.7.1')!, parseIpv4('192.168.7.2')!]);
    assert.equal(formatIpv4(firstFreeAddress(subnet, taken)), '192.168.7.3');
    for (let i = 3; i <= 6; i++) taken.add(parseIpv4(`192.168.7.${i}`)!);
    assert.throws(() => firstFreeAddress(subnet, taken), { code: 'NET_SUBNET_FULL' });
  });
});
