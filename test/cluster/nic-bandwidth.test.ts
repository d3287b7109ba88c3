/**
 * NIC bandwidth limits on real VMs: two guests on one virtual network, each serving a 12 MB file
 * from its web server; one downloads the other's, timed inside the guest from /proc/uptime.
 * `--nic-in` shapes what reaches a guest (a token bucket on its tap), `--nic-out` polices what it
 * sends (an nftables limit on the bridge), changed while they run, and lifted again.
 *
 * Tolerances: shaping holds a TCP download close to the rate (within 15%: slow start and the
 * bucket's burst); policing drops what exceeds it, so TCP backs off and gets somewhat less than
 * the rate, never more (checked: at most 10% above, at least half).
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { Vm } from '../../src/wire/schemas.ts';
import { NubisInstance, runOnConsole } from '../helpers/nubis-instance.ts';

/** 12 MB: 12 s at 8 Mbit/s, so that the second a policer lets through at once (nft's bucket) weighs little. */
const FILE_BYTES = 12_288_000;

describe('NIC bandwidth limits', { skip: process.getuid?.() !== 0 ? 'needs root for network namespaces' : false }, () => {
  const nubis = new NubisInstance('nic-bandwidth');
  const ips: Record<string, string> = {};

  before(async () => {
    await nubis.up(['--netns']);
    await nubis.cliJson(['network', 'create', 'bw', '--subnet', '10.93.0.0/24']);
    for (const name of ['bwa', 'bwb']) {
      const vm = await nubis.cliJson<Vm>(['vm', 'create', name, '--image', 'tiny', '--memory', '128', '--network', 'bw']);
      ips[name] = vm.nics[0].ip;
      await runOnConsole(nubis, name, `dd if=/dev/zero of=/www/big bs=1000 count=${FILE_BYTES / 1000} 2>/dev/null; ls -l /www/big`);
    }
  });
  after(() => nubis.destroy());

  /** Mbit/s of `from`'s file downloaded by `to`, timed in `to`. */
  async function download(to: string, from: string): Promise<number> {
    const output = await runOnConsole(
      nubis,
      to,
      `a=$(cut -d' ' -f1 /proc/uptime); wget -q -O /dev/null http://${ips[from]}/big && b=$(cut -d' ' -f1 /proc/uptime) && echo "took $a $b"`,
      { timeoutMs: 120_000 },
    );
    const match = /took ([\d.]+) ([\d.]+)/.exec(output);
    assert.ok(match, `${to} downloaded ${from}'s file: ${output}`);
    return (FILE_BYTES * 8) / 1e6 / (Number(match[2]) - Number(match[1]));
  }

  const set = async (...args: string[]) => {
    const done = await nubis.cli(['vm', 'set', ...args]);
    assert.equal(done.code, 0, done.stderr);
    return done.stdout;
  };

  it('shapes what reaches a guest to --nic-in, set while it runs', async () => {
    const unlimited = await download('bwa', 'bwb');
    console.log(`# without limits: ${unlimited.toFixed(1)} Mbit/s`);
    assert.ok(unlimited > 20, `the guests move more than a limit of 8 Mbit/s would allow: ${unlimited.toFixed(1)}`);
    assert.match(await set('bwa', '--nic-in', 'net0=8'), /NIC bandwidth net0: in 8 Mbit\/s/);
    const shaped = await download('bwa', 'bwb');
    console.log(`# --nic-in net0=8: ${shaped.toFixed(2)} Mbit/s`);
    assert.ok(Math.abs(shaped - 8) <= 8 * 0.15, `asked 8 Mbit/s towards bwa, measured ${shaped.toFixed(2)}`);
  });

  it('polices what a guest sends to --nic-out, and lifts both with none', async () => {
    await set('bwa', '--nic-in', 'net0=none', '--nic-out', 'net0=8');
    assert.deepEqual((await nubis.cliJson<Vm>(['vm', 'show', 'bwa'])).nicBandwidth, { net0: { outMbit: 8 } });
    const policed = await download('bwb', 'bwa');
    console.log(`# --nic-out net0=8: ${policed.toFixed(2)} Mbit/s`);
    assert.ok(policed <= 8 * 1.1 && policed >= 8 * 0.5, `asked 8 Mbit/s from bwa, measured ${policed.toFixed(2)}`);
    await set('bwa', '--nic-out', 'net0=none');
    assert.equal((await nubis.cliJson<Vm>(['vm', 'show', 'bwa'])).nicBandwidth, undefined);
    const free = await download('bwb', 'bwa');
    assert.ok(free > 16, `unlimited again: ${free.toFixed(1)} Mbit/s`);
  });

  it('refuses limits that cannot mean anything, naming them, and changes nothing', async () => {
    for (const [args, message] of [
      [['--nic-in', 'net5=10'], /has no NIC net5/],
      [['--nic-in', 'net0=0'], /inMbit: must be >= 1|inMbit must be a whole number of Mbit\/s from 1/],
      [['--nic-out', 'net0=fast'], /--nic-out takes a NIC and Mbit\/s such as net0=100/],
    ] as const) {
      const refused = await nubis.cli(['vm', 'set', 'bwa', ...args]);
      assert.notEqual(refused.code, 0, args.join(' '));
      assert.match(refused.stderr, message);
    }
    assert.equal((await nubis.cliJson<Vm>(['vm', 'show', 'bwa'])).nicBandwidth, undefined);
  });
});
