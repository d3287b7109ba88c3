// `nubis down` and crash recovery rely on cleanupByPrefix: build everything the driver can make
// (hosts, networks, a tap, a DHCP server, a running probe, an nft table), forget every handle as a
// crashed agent would, and check that one call leaves nothing with the prefix behind.
import assert from 'node:assert/strict';
import { chmod, mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { ensureDhcp } from '../../src/network/dhcp.ts';
import { runCommand } from '../../src/network/ip-command.ts';
import { isRunning } from '../../src/network/namespaces.ts';
import { createTap, ensureNetworkOnHost, setPeers } from '../../src/network/overlay.ts';
import { startProbe } from '../../src/network/probe.ts';
import { cleanupByPrefix, listNftTables } from '../../src/network/underlay.ts';
import { buildTestbed, leftovers, runPrefix } from './testbed.ts';

describe('cleanupByPrefix', { timeout: 60_000 }, () => {
  const prefix = runPrefix();
  let dir: string | undefined;

  after(async () => {
    // Whatever the test did, leave nothing behind.
    await cleanupByPrefix(prefix);
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('removes every namespace, link, bridge, nft table and process with the prefix', async () => {
    dir = await mkdtemp(join(tmpdir(), 'nubis-net-cleanup-'));
    await chmod(dir, 0o755);
    const bed = await buildTestbed(2, prefix);
    for (const host of bed.hosts) {
      await ensureNetworkOnHost({ hostNs: host.ns, networkKey: 'net-a', vni: 100, localUnderlayIp: host.underlayIp });
      await setPeers({ hostNs: host.ns, networkKey: 'net-a', peerUnderlayIps: bed.hosts.map((other) => other.underlayIp) });
    }
    await createTap({ hostNs: bed.hosts[0].ns, networkKey: 'net-a', tapName: 'ntap-cleanup' });
    const stateDir = join(dir, 'dhcp');
    await mkdir(stateDir);
    const server = await ensureDhcp({
      hostNs: bed.hosts[0].ns,
      networkKey: 'net-a',
      stateDir,
      subnet: '10.0.0.0/24',
      serverIp: '10.0.0.2',
      hosts: [],
    });
    const probe = await startProbe({ hostNs: bed.hosts[1].ns, networkKey: 'net-a', address: '10.0.0.9/24', command: ['busybox', 'sleep', '600'] });
    await runCommand('nft', ['add', 'table', 'inet', `${prefix}fw`]);
    // A different prefix must survive.
    const bystander = `${runPrefix()}keep`;
    try {
      await runCommand('ip', ['link', 'add', bystander, 'type', 'bridge']);
      const report = await cleanupByPrefix(prefix);
      assert.ok(report.namespaces.length >= 4, `namespaces removed: ${report.namespaces.join(', ')}`);
      assert.ok(report.killedPids.includes(server.pid));
      assert.deepEqual(report.nftTables, [`inet ${prefix}fw`]);
      assert.deepEqual(await leftovers(prefix), []);
      assert.equal(isRunning(server.pid), false);
      assert.equal(isRunning(probe.child.pid!), false);
      assert.deepEqual(
        (await listNftTables()).filter((table) => table.name.startsWith(prefix)),
        [],
      );
      assert.deepEqual(await leftovers(bystander), [bystander]);
      // Running it again on nothing is fine.
      assert.deepEqual(await cleanupByPrefix(prefix), { namespaces: [], links: [], nftTables: [], killedPids: [] });
      await assert.rejects(cleanupByPrefix('n'), { code: 'NET_INVALID_NAME' });
    } finally {
      await runCommand('ip', ['link', 'delete', bystander], { allowFailure: true });
      await probe.stop().catch(() => {});
    }
  });
});
