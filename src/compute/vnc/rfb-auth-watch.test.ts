import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { type RfbAuthOutcome, RfbAuthWatch } from './rfb-auth-watch.ts';

const u32 = (value: number) => {
  const buffer = Buffer.alloc(4);
  buffer.writeUInt32BE(value);
  return buffer;
};

function watch(): { watch: RfbAuthWatch; outcomes: RfbAuthOutcome[] } {
  const outcomes: RfbAuthOutcome[] = [];
  return { watch: new RfbAuthWatch((outcome) => outcomes.push(outcome)), outcomes };
}

describe('RfbAuthWatch', () => {
  it('ends a 3.8 VNC authentication at the SecurityResult, byte by byte, and only once', () => {
    const { watch: w, outcomes } = watch();
    const server = Buffer.concat([Buffer.from('RFB 003.008\n'), Buffer.from([1, 2]), Buffer.alloc(16, 7), u32(0), Buffer.from('server init')]);
    const client = Buffer.concat([Buffer.from('RFB 003.008\n'), Buffer.from([2]), Buffer.alloc(16, 9)]);
    for (let i = 0; i < 12; i += 1) w.fromServer(server.subarray(i, i + 1));
    w.fromClient(client.subarray(0, 13));
    for (let i = 12; i < 12 + 2 + 16 + 3; i += 1) w.fromServer(server.subarray(i, i + 1));
    assert.deepEqual(outcomes, [], 'not over before the last byte of the SecurityResult');
    w.fromServer(server.subarray(12 + 2 + 16 + 3));
    w.fromClient(client.subarray(13));
    assert.deepEqual(outcomes, ['ok']);
    assert.equal(w.outcome, 'ok');
  });

  it('tells a refused password, a 3.3 exchange, another security type and an empty type list', () => {
    const failed = watch();
    failed.watch.fromClient(Buffer.from('RFB 003.008\n\x02'));
    failed.watch.fromServer(Buffer.concat([Buffer.from('RFB 003.008\n'), Buffer.from([1, 2]), Buffer.alloc(16), u32(1)]));
    assert.deepEqual(failed.outcomes, ['failed']);

    const old = watch();
    old.watch.fromServer(Buffer.from('RFB 003.008\n'));
    old.watch.fromClient(Buffer.from('RFB 003.003\n'));
    old.watch.fromServer(Buffer.concat([u32(2), Buffer.alloc(16)]));
    assert.deepEqual(old.outcomes, []);
    old.watch.fromServer(u32(0));
    assert.deepEqual(old.outcomes, ['ok']);

    const none = watch();
    none.watch.fromServer(Buffer.from('RFB 003.008\n\x02\x01\x02'));
    none.watch.fromClient(Buffer.from('RFB 003.008\n\x01'));
    assert.deepEqual(none.outcomes, ['other']);

    const empty = watch();
    empty.watch.fromServer(Buffer.concat([Buffer.from('RFB 003.008\n\x00'), u32(3), Buffer.from('no!')]));
    empty.watch.fromClient(Buffer.from('RFB 003.008\n'));
    assert.deepEqual(empty.outcomes, ['failed']);

    const garbage = watch();
    garbage.watch.fromServer(Buffer.from('RFB 003.008\n'));
    garbage.watch.fromClient(Buffer.from('GET / HTTP/1.1\r\n'));
    assert.deepEqual(garbage.outcomes, ['failed']);
  });
});
