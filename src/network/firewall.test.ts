import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { portFirewallNames, ruleToIptables } from './firewall.ts';

describe('ruleToIptables', () => {
  it('turns rules into iptables matches', () => {
    assert.equal(ruleToIptables({ protocol: 'tcp', portMin: 80, sourceCidr: '0.0.0.0/0' }), '-s 0.0.0.0/0 -p tcp --dport 80');
    assert.equal(ruleToIptables({ protocol: 'udp', portMin: 1000, portMax: 2000, sourceCidr: '10.0.0.7/24' }), '-s 10.0.0.0/24 -p udp --dport 1000:2000');
    assert.equal(ruleToIptables({ protocol: 'tcp', sourceCidr: '10.0.0.0/8' }), '-s 10.0.0.0/8 -p tcp');
    assert.equal(ruleToIptables({ protocol: 'icmp', sourceCidr: '10.0.0.1/32' }), '-s 10.0.0.1/32 -p icmp');
    assert.equal(ruleToIptables({ protocol: 'any', sourceCidr: '10.0.0.0/24' }), '-s 10.0.0.0/24');
  });

  it('refuses invalid port ranges, ports on icmp, unknown protocols and bad sources', () => {
    for (const rule of [
      { protocol: 'tcp', portMin: 0, sourceCidr: '0.0.0.0/0' },
      { protocol: 'tcp', portMin: 10, portMax: 9, sourceCidr: '0.0.0.0/0' },
      { protocol: 'udp', portMin: 70000, sourceCidr: '0.0.0.0/0' },
      { protocol: 'icmp', portMin: 1, sourceCidr: '0.0.0.0/0' },
      { protocol: 'sctp', sourceCidr: '0.0.0.0/0' },
    ]) {
      assert.throws(() => ruleToIptables(rule as never), { code: 'NET_INVALID_RULE' }, JSON.stringify(rule));
    }
    assert.throws(() => ruleToIptables({ protocol: 'any', sourceCidr: 'anywhere' }), { code: 'NET_INVALID_ADDRESS' });
  });
});

describe('portFirewallNames', () => {
  it('fits iptables chain names (28 characters) and is stable per port', () => {
    const names = portFirewallNames('ntap0123456789a');
    assert.ok(names.ingressChain.length <= 28);
    assert.deepEqual(portFirewallNames('ntap0123456789a'), names);
    assert.notDeepEqual(portFirewallNames('ntap0123456789b'), names);
  });
});
