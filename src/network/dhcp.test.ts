import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { renderDhcpHosts, renderDnsmasqConf } from './dhcp.ts';

const files = { hostsPath: '/s/h', leasePath: '/s/l', pidPath: '/s/p', logPath: '/s/log' };

describe('dnsmasq configuration', () => {
  it('serves fixed leases only, without DNS, with the gateway and MTU', () => {
    const lines = renderDnsmasqConf({ subnet: '10.0.0.0/24', gateway: '10.0.0.1', leaseTimeSeconds: 600, mtu: 1450, ...files }).split('\n');
    for (const line of [
      'port=0',
      'dhcp-range=10.0.0.0,static,255.255.255.0,600s',
      'dhcp-hostsfile=/s/h',
      'pid-file=/s/p',
      'dhcp-leasefile=/s/l',
      'dhcp-option=option:router,10.0.0.1',
      'dhcp-option=option:dns-server',
      'dhcp-option=option:mtu,1450',
    ]) {
      assert.ok(lines.includes(line), line);
    }
  });

  it('offers no router when there is no gateway', () => {
    const lines = renderDnsmasqConf({ subnet: '10.0.0.0/24', leaseTimeSeconds: 600, mtu: 1450, ...files }).split('\n');
    assert.ok(lines.includes('dhcp-option=option:router'));
  });
});

describe('dhcp-hostsfile', () => {
  it('writes one MAC,IP[,NAME] line per lease', () => {
    assert.equal(
      renderDhcpHosts(
        [
          { mac: '02:00:00:00:01:05', ip: '10.0.0.5', name: 'vm5' },
          { mac: '02-00-00-00-01-06', ip: '10.0.0.6' },
        ],
        '10.0.0.0/24',
      ),
      '02:00:00:00:01:05,10.0.0.5,vm5\n02:00:00:00:01:06,10.0.0.6\n',
    );
    assert.equal(renderDhcpHosts([], '10.0.0.0/24'), '');
  });

  it('refuses addresses outside the subnet, duplicates and bad names', () => {
    assert.throws(() => renderDhcpHosts([{ mac: '02:00:00:00:01:05', ip: '10.0.1.5' }], '10.0.0.0/24'), { code: 'NET_INVALID_ADDRESS' });
    assert.throws(
      () =>
        renderDhcpHosts(
          [
            { mac: '02:00:00:00:01:05', ip: '10.0.0.5' },
            { mac: '02:00:00:00:01:05', ip: '10.0.0.6' },
          ],
          '10.0.0.0/24',
        ),
      { code: 'NET_DUPLICATE_LEASE' },
    );
    assert.throws(() => renderDhcpHosts([{ mac: '02:00:00:00:01:05', ip: '10.0.0.5', name: 'a,b' }], '10.0.0.0/24'), { code: 'NET_INVALID_NAME' });
  });
});
