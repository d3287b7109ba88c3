import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { checkNicBandwidth, inShapingArgs, outLimitTable, outPolicingScript } from './nic-bandwidth.ts';

describe('NIC bandwidth', () => {
  it('shapes towards the guest with a token bucket holding 10 ms at the rate (at least 32 KiB)', () => {
    assert.deepEqual(inShapingArgs('nt0', 100), ['qdisc', 'replace', 'dev', 'nt0', 'root', 'tbf', 'rate', '100mbit', 'burst', '125000', 'latency', '50ms']);
    assert.equal(inShapingArgs('nt0', 1)[9], String(32 * 1024));
  });

  it('polices what the guest sends in a table of its tap, in bytes a second', () => {
    const script = outPolicingScript('nt0', 8);
    assert.match(script, new RegExp(`add table bridge ${outLimitTable('nt0')}`));
    assert.match(script, /iifname "nt0" limit rate over 1000000 bytes\/second drop/);
    assert.notEqual(outLimitTable('nt0'), outLimitTable('nt1'));
  });

  it('refuses a rate that is no whole number of Mbit/s in range, or a limit it does not know, naming the NIC', () => {
    assert.throws(() => checkNicBandwidth({ inMbit: 0 }, 'net0'), /net0: inMbit must be a whole number of Mbit\/s from 1/);
    assert.throws(() => checkNicBandwidth({ outMbit: 2.5 }, 'net0'), /outMbit must be a whole number/);
    assert.throws(() => checkNicBandwidth({ speed: 5 } as never, 'net0'), /no limit named speed/);
  });
});
