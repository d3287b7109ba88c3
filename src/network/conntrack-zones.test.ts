import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { conntrackZoneScript } from './conntrack-zones.ts';

describe('conntrack zone script', () => {
  it('maps the bridge to its zone before conntrack, replacing the zone it had', () => {
    const script = conntrackZoneScript('nbr-0123456789a', 7, 5);
    assert.match(script, /add chain ip nubis_ct_zones prerouting \{ type filter hook prerouting priority raw; policy accept; \}/);
    assert.match(script, /add rule ip nubis_ct_zones prerouting ct zone set iifname map @zones/);
    assert.ok(
      script.indexOf('delete element ip nubis_ct_zones zones { "nbr-0123456789a" }') <
        script.indexOf('add element ip nubis_ct_zones zones { "nbr-0123456789a" : 7 }'),
    );
    assert.doesNotMatch(conntrackZoneScript('nbr-0123456789a', 7), /delete element/);
  });

  it('refuses every value that does not have its strict format', () => {
    for (const zone of [0, -1, 65_536, 1.5, Number.NaN]) {
      assert.throws(() => conntrackZoneScript('nbr-0123456789a', zone), { code: 'NET_INVALID_CT_ZONE' }, String(zone));
    }
    assert.throws(() => conntrackZoneScript('nbr-0123456789a', 7, 0), { code: 'NET_INVALID_CT_ZONE' });
    for (const name of ['', 'a"b', 'br0 }', 'nbr-0123456789abc', '-br', 'br;x', 'br\n0']) {
      assert.throws(() => conntrackZoneScript(name, 7), { code: 'NET_INVALID_NAME' }, JSON.stringify(name));
    }
  });
});
