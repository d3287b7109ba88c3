import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { assertInterfaceName, bridgeNameFor, shortName, tapNameFor, vxlanNameFor } from './names.ts';

describe('shortName', () => {
  it('is stable, at most 15 characters, and starts with the stem', () => {
    const name = shortName('nbr-', 'network-0001');
    assert.equal(name, shortName('nbr-', 'network-0001'));
    assert.equal(name.length, 15);
    assert.ok(name.startsWith('nbr-'));
    assert.notEqual(name, shortName('nbr-', 'network-0002'));
  });

  it('cuts a long stem to 9 characters so 6 hash characters remain', () => {
    const name = shortName('nubis-underlay-bridge', 'host-1');
    assert.equal(name.length, 15);
    assert.ok(name.startsWith('nubis-und'));
    assert.match(name.slice(9), /^[0-9a-f]{6}$/);
  });

  it('gives every network its own bridge and VXLAN names, and every NIC its own tap', () => {
    assert.notEqual(bridgeNameFor('a'), bridgeNameFor('b'));
    assert.notEqual(bridgeNameFor('a'), vxlanNameFor('a'));
    for (const name of [bridgeNameFor('a'), vxlanNameFor('a'), tapNameFor('nic-1')]) assertInterfaceName(name);
  });
});

describe('assertInterfaceName', () => {
  it('accepts Linux names and refuses what the kernel refuses', () => {
    assertInterfaceName('ul0');
    assertInterfaceName('a'.repeat(15));
    for (const bad of ['', 'a'.repeat(16), 'a/b', 'a:b', 'a b', '.', '..']) {
      assert.throws(() => assertInterfaceName(bad), { code: 'NET_INVALID_NAME' }, bad);
    }
  });
});
