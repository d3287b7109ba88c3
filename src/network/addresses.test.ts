import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { cidrContains, ipv4ToNumber, normalizeMac, numberToIpv4, parseIpv4Cidr } from './addresses.ts';

describe('IPv4 helpers', () => {
  it('parses an interface address into network and netmask', () => {
    assert.deepEqual(parseIpv4Cidr('10.0.0.5/24'), { address: '10.0.0.5', prefixLength: 24, network: '10.0.0.0', netmask: '255.255.255.0' });
    assert.deepEqual(parseIpv4Cidr('172.31.7.200/20'), { address: '172.31.7.200', prefixLength: 20, network: '172.31.0.0', netmask: '255.255.240.0' });
    assert.equal(parseIpv4Cidr('0.0.0.0/0').netmask, '0.0.0.0');
    assert.equal(parseIpv4Cidr('10.1.2.3/32').network, '10.1.2.3');
  });

  it('refuses malformed addresses', () => {
    for (const bad of ['10.0.0.5', '10.0.0.256/24', '10.0.0/24', '10.0.0.5/33', '010.0.0.5/24', 'x/24']) {
      assert.throws(() => parseIpv4Cidr(bad), { code: 'NET_INVALID_ADDRESS' }, bad);
    }
    assert.equal(ipv4ToNumber('1.2.3'), undefined);
  });

  it('round-trips numbers and checks membership', () => {
    assert.equal(numberToIpv4(ipv4ToNumber('255.254.1.0')!), '255.254.1.0');
    assert.ok(cidrContains('10.0.0.0/24', '10.0.0.250'));
    assert.ok(!cidrContains('10.0.0.0/24', '10.0.1.1'));
    assert.ok(cidrContains('0.0.0.0/0', '8.8.8.8'));
  });

  it('normalises MAC addresses', () => {
    assert.equal(normalizeMac('52-54-00-AB-cd-01'), '52:54:00:ab:cd:01');
    assert.throws(() => normalizeMac('52:54:00:ab:cd'), { code: 'NET_INVALID_MAC' });
  });
});
