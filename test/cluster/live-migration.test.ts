/**
 * Live migration between two hosts in network namespaces, with real VMs and packets: the VM keeps
 * its IP and its memory (the guest's request counter goes on), its volume's checksummed data
 * verifies on the new host, a client pinging every 50 ms keeps getting answers, every strategy
 * completes and is recorded with sane figures, and a cancelled migration leaves the VM running on
 * its source.
 */
import assert from 'node:assert/strict';
import { truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { Operation, Vm } from '../../src/api/schemas.ts';
import { startProbe, type RunningProbe } from '../../src/network/probe.ts';
import { NubisInstance, runOnConsole } from '../helpers/nubis-instance.ts';

interface Migration {
  from: string;
  to: string;
  strategy: string;
  status: string;
  figures: { memoryMb: number; totalTimeMs: number; downtimeMs: number; transferredBytes: number; switchedToPostcopy: boolean };
}

describe('live migration', { skip: process.getuid?.() !== 0 ? 'needs root for network namespaces' : false }, () => {
  const nubis = new NubisInstance('migration');
  let testBed = '';
  let networkId = '';
  let vmIp = '';

  before(async () => {
    await nubis.up(['--hosts', '2']);
    testBed = nubis.upResult.testBed as string;
    const device = join(nubis.dataDir, 'disk.img');
    writeFileSync(device, '');
    truncateSync(device, 256 * 2 ** 20);
    await nubis.cliJson(['pool', 'create', 'p1', '--layout', 'raid0', '--device', device]);
    await nubis.cliJson(['volume', 'create', 'mvol', '--pool', 'p1', '--size', '32M']);
    networkId = (await nubis.cliJson<{ id: string }>(['network', 'create', 'mnet', '--subnet', '10.90.0.0/24'])).id;
  });
  after(() => nubis.destroy());

  async function httpCount(): Promise<number> {
    const result = await nubis.cli(['--json', 'network', 'probe', 'mnet', '--', 'curl', '-s', '--max-time', '5', `http://${vmIp}/`]);
    const match = /requests=(\d+)/.exec((JSON.parse(result.stdout) as { stdout: string }).stdout);
    assert.ok(match, `the guest answers HTTP: ${result.stdout}`);
    return Number(match[1]);
  }

  it('refuses what cannot migrate, changing nothing', async () => {
    const vm = await nubis.cliJson<Vm>(['vm', 'create', 'mv1', '--image', 'tiny', '--network', 'mnet', '--disk', 'p1/mvol', '--host', 'host-1']);
    vmIp = vm.nics[0].ip;
    const sameHost = await nubis.cli(['vm', 'migrate', 'mv1', '--to', 'host-1']);
    assert.match(sameHost.stderr, /already runs on host-1/);
    const unknown = await nubis.cli(['vm', 'migrate', 'mv1', '--to', 'host-9']);
    assert.match(unknown.stderr, /No host host-9/);
    assert.equal((await nubis.cliJson<Vm>(['vm', 'show', 'mv1'])).host, 'host-1');
    const written = await runOnConsole(nubis, 'mv1', 'nubis-tool disk-write /dev/vda 16 11 && echo written-ok');
    assert.match(written, /written-ok/);
  });

  it('moves a running VM with each strategy: same IP, same memory, same data, the client keeps its answers', async () => {
    // A client on the overlay pings the VM every 50 ms through all three migrations, from a probe
    // on host-2, which carries the network throughout because another VM stays there.
    await nubis.cliJson(['vm', 'create', 'anchor', '--image', 'tiny', '--memory', '128', '--network', 'mnet', '--host', 'host-2']);
    const pinger: RunningProbe = await startProbe({ hostNs: `${testBed}-host-2`, networkKey: networkId, address: '10.90.0.250/24', command: ['ping', '-i', '0.05', '-W', '1', vmIp] });
    let counter = await httpCount();
    try {
      for (const [strategy, to] of [['precopy', 'host-2'], ['postcopy', 'host-1'], ['auto', 'host-2']] as const) {
        const moved = await nubis.cliJson<{ from: string; to: string; figures: Migration['figures'] }>(['vm', 'migrate', 'mv1', '--to', to, '--strategy', strategy]);
        assert.equal(moved.to, to);
        const vm = await nubis.cliJson<Vm>(['vm', 'show', 'mv1']);
        assert.equal(vm.host, to);
        assert.equal(vm.state, 'running');
        assert.deepEqual(vm.nics.map((n) => n.ip), [vmIp], 'the VM keeps its address');
        const next = await httpCount();
        assert.equal(next, counter + 1, `${strategy}: the guest's memory came along (its request counter goes on)`);
        counter = next;
        const verified = await runOnConsole(nubis, 'mv1', 'nubis-tool disk-verify /dev/vda 16 11 && echo verified-ok');
        assert.match(verified, /verified-ok/, `${strategy}: the volume's data verifies on ${to}`);
        const figures = moved.figures;
        assert.ok(figures.totalTimeMs > 0 && figures.downtimeMs >= 0 && figures.downtimeMs < figures.totalTimeMs + 1, JSON.stringify(figures));
        assert.ok(figures.transferredBytes > 1 << 20 && figures.transferredBytes < 4 * figures.memoryMb * 2 ** 20, JSON.stringify(figures));
        assert.equal(figures.switchedToPostcopy, strategy === 'postcopy');
      }
    } finally {
      const ping = await pinger.stop();
      const summary = /(\d+) packets transmitted, (\d+) received/.exec(ping.stdout);
      assert.ok(summary, ping.stdout.slice(-300));
      const [sent, received] = [Number(summary[1]), Number(summary[2])];
      assert.ok(received >= sent * 0.8, `the client kept its answers across three migrations: ${received} of ${sent}`);
    }
    const history = await nubis.cliJson<Migration[]>(['vm', 'migrations', 'mv1']);
    assert.deepEqual(history.map((h) => [h.strategy, h.status, h.from, h.to]), [['auto', 'completed', 'host-1', 'host-2'], ['postcopy', 'completed', 'host-2', 'host-1'], ['precopy', 'completed', 'host-1', 'host-2']]);
  });

  it('leaves the VM running on its source when a migration is cancelled', async () => {
    // 1 MB/s makes the migration last long enough to cancel it mid-pre-copy.
    const started = await nubis.api<{ operation: Operation }>('POST', '/v1/vms/mv1/migrate', { to: 'host-1', strategy: 'precopy', bandwidthMbps: 1 });
    assert.equal(started.status, 202);
    const id = started.body.operation.id;
    for (let i = 0; i < 100 && (await nubis.api<Operation>('GET', `/v1/operations/${id}`)).body.stage !== 'precopy'; i++) await new Promise((resolve) => setTimeout(resolve, 200));
    const cancelled = await nubis.cli(['operation', 'cancel', id]);
    assert.equal(cancelled.code, 0, cancelled.stderr);
    const final = await nubis.waitOperation(id);
    assert.equal(final.status, 'cancelled');
    const vm = await nubis.cliJson<Vm>(['vm', 'show', 'mv1']);
    assert.equal(vm.host, 'host-2');
    assert.equal(vm.state, 'running');
    assert.ok((await httpCount()) > 0, 'the VM still serves from its source');
    const history = await nubis.cliJson<Migration[]>(['vm', 'migrations', 'mv1']);
    assert.equal(history[0].status, 'cancelled');
    // The destination kept nothing: a new migration there works.
    const again = await nubis.cliJson<{ to: string }>(['vm', 'migrate', 'mv1', '--to', 'host-1']);
    assert.equal(again.to, 'host-1');
    await nubis.cliJson(['vm', 'delete', 'mv1']);
    await nubis.cliJson(['vm', 'delete', 'anchor']);
  });

  it('evacuates a host for maintenance and takes it back', async () => {
    for (const name of ['e1', 'e2']) await nubis.cliJson(['vm', 'create', name, '--image', 'tiny', '--memory', '128', '--network', 'mnet', '--host', 'host-1']);
    const evacuated = await nubis.cliJson<{ results: Array<{ vm: string; status: string; to: string }> }>(['host', 'evacuate', 'host-1']);
    assert.deepEqual(evacuated.results.map((r) => [r.vm, r.status, r.to]).sort(), [['e1', 'succeeded', 'host-2'], ['e2', 'succeeded', 'host-2']]);
    const hosts = await nubis.cliJson<Array<{ name: string; status: string; vmCount: number }>>(['host', 'list']);
    assert.deepEqual(hosts.map((h) => [h.name, h.status, h.vmCount]), [['host-1', 'maintenance', 0], ['host-2', 'online', 2]]);
    const refused = await nubis.cli(['vm', 'create', 'e3', '--image', 'tiny', '--host', 'host-1', '--network', 'mnet']);
    assert.match(refused.stderr, /host-1 is maintenance/);
    const restored = await nubis.cliJson<{ status: string }>(['host', 'restore', 'host-1']);
    assert.equal(restored.status, 'online');
    for (const name of ['e1', 'e2']) await nubis.cliJson(['vm', 'delete', name]);
  });
});
