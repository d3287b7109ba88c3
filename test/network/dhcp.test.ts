// Real-kernel tests of the per-network DHCP server: dnsmasq on host 1, DHCP clients (busybox
// udhcpc in probe namespaces) on host 2, reaching it across the VXLAN overlay.
import assert from 'node:assert/strict';
import { chmod, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { ensureDhcp, stopDhcp, stopDhcpServersUnder, updateDhcpHosts, type DhcpOptions } from '../../src/network/dhcp.ts';
import { runCommand } from '../../src/network/ip-command.ts';
import { isRunning } from '../../src/network/namespaces.ts';
import { openProbe } from '../../src/network/probe.ts';
import { buildTestbed, plumbNetworks, leftovers, type Testbed } from './testbed.ts';

const NET_A = 'net-a';
const NET_B = 'net-b';
const VM5_MAC = '02:00:00:00:01:05';
const VM6_MAC = '02:00:00:00:01:06';

interface Lease {
  ip: string;
  mask: string;
  router: string;
  mtu: string;
}

describe('DHCP server per network', { timeout: 120_000 }, () => {
  let bed: Testbed;
  let dir: string;
  let script: string;
  let dhcp: DhcpOptions;

  /** Runs udhcpc with `mac` on host 2 and returns the lease it got, or undefined. */
  async function requestLease(mac: string, networkKey = NET_A): Promise<Lease | undefined> {
    const probe = await openProbe({ hostNs: bed.hosts[1].ns, networkKey, mac });
    try {
      const result = await probe.run(['busybox', 'udhcpc', '-i', 'eth0', '-f', '-q', '-n', '-t', '3', '-T', '1', '-O', 'mtu', '-s', script], {
        timeoutMs: 20_000,
      });
      const bound = /^bound ip=(\S*) mask=(\S*) router=(\S*) mtu=(\S*)$/m.exec(result.stdout);
      if (result.exitCode !== 0 || !bound) return undefined;
      return { ip: bound[1], mask: bound[2], router: bound[3], mtu: bound[4] };
    } finally {
      await probe.close();
    }
  }

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'nubis-net-dhcp-'));
    await chmod(dir, 0o755);
    script = join(dir, 'udhcpc-script');
    // udhcpc passes the lease in environment variables; print them for the test to read.
    await writeFile(script, '#!/bin/sh\necho "$1 ip=$ip mask=$mask router=$router mtu=$mtu"\n', { mode: 0o755 });
    bed = await buildTestbed(2);
    await plumbNetworks(bed, [
      [NET_A, 100],
      [NET_B, 101],
    ]);
    dhcp = {
      hostNs: bed.hosts[0].ns,
      networkKey: NET_A,
      stateDir: join(dir, 'state'),
      subnet: '10.0.0.0/24',
      serverIp: '10.0.0.2',
      gateway: '10.0.0.1',
      hosts: [{ mac: VM5_MAC, ip: '10.0.0.5', name: 'vm5' }],
    };
    await mkdir(dhcp.stateDir);
  });

  after(async () => {
    if (bed) {
      await bed.teardown();
      assert.deepEqual(await leftovers(bed.prefix), []);
    }
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('gives a client on another host exactly its fixed address, the gateway and the overlay MTU', async () => {
    const server = await ensureDhcp(dhcp);
    assert.ok(isRunning(server.pid));
    assert.deepEqual(await requestLease(VM5_MAC), { ip: '10.0.0.5', mask: '24', router: '10.0.0.1', mtu: '1450' });
    assert.match(await readFile(server.leasePath, 'utf8'), /02:00:00:00:01:05 10\.0\.0\.5 vm5/);
  });

  it('gives nothing to an unknown MAC, nor to the known MAC on another network', async () => {
    assert.equal(await requestLease(VM6_MAC), undefined);
    assert.equal(await requestLease(VM5_MAC, NET_B), undefined);
  });

  it('adopts the running server when ensured again, and serves new hosts after an update', async () => {
    const first = await ensureDhcp(dhcp);
    const again = await ensureDhcp(dhcp);
    assert.equal(again.pid, first.pid);
    await updateDhcpHosts({ stateDir: dhcp.stateDir, subnet: dhcp.subnet, hosts: [...dhcp.hosts, { mac: VM6_MAC, ip: '10.0.0.6' }] });
    assert.equal((await requestLease(VM6_MAC))?.ip, '10.0.0.6');
  });

  it('restarts the server when its configuration changes (no gateway)', async () => {
    const before = await ensureDhcp(dhcp);
    const after = await ensureDhcp({ ...dhcp, gateway: undefined });
    assert.notEqual(after.pid, before.pid);
    assert.equal(isRunning(before.pid), false);
    assert.deepEqual(await requestLease(VM5_MAC), { ip: '10.0.0.5', mask: '24', router: '', mtu: '1450' });
  });

  it('refuses bad leases before touching anything', async () => {
    await assert.rejects(ensureDhcp({ ...dhcp, hosts: [{ mac: VM5_MAC, ip: '10.1.0.5' }] }), { code: 'NET_INVALID_ADDRESS' });
    await assert.rejects(ensureDhcp({ ...dhcp, hosts: [{ mac: 'nonsense', ip: '10.0.0.5' }] }), { code: 'NET_INVALID_MAC' });
    await assert.rejects(updateDhcpHosts({ stateDir: dir, subnet: dhcp.subnet, hosts: [] }), { code: 'NET_DHCP_NOT_RUNNING' });
  });

  it('stops the server and removes its namespace and files', async () => {
    const server = await ensureDhcp(dhcp);
    await stopDhcp(dhcp);
    assert.equal(isRunning(server.pid), false);
    assert.deepEqual(
      (await leftovers(bed.prefix)).filter((name) => name.includes('-dhcp-')),
      [],
    );
    await assert.rejects(readFile(server.pidPath), { code: 'ENOENT' });
    await stopDhcp(dhcp);
  });

  it('stops, by its files, a server whose namespace name is gone', async () => {
    const server = await ensureDhcp(dhcp);
    // What an agent's private mount namespace did: the name vanished, the server ran on unseen.
    await runCommand('ip', ['netns', 'delete', server.namespace]);
    assert.ok(isRunning(server.pid));
    await assert.rejects(stopDhcpServersUnder('/run'), { code: 'NET_INVALID_NAME' });
    assert.deepEqual(await stopDhcpServersUnder(join(dir, 'other')), [], 'another folder has no server');
    assert.deepEqual(await stopDhcpServersUnder(dir), [server.pid]);
    assert.equal(isRunning(server.pid), false);
    await stopDhcp(dhcp);
  });
});
