// Real-kernel tests of per-port security groups and anti-spoofing. A probe namespace plays the VM:
// its veth end on the bridge is the "tap" the firewall protects. The client is on another host,
// across the VXLAN overlay.
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile, chmod } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { applyPortFirewall, portFirewallNames, removePortFirewall, type PortFirewallOptions } from '../../src/network/firewall.ts';
import { runCommand } from '../../src/network/ip-command.ts';
import { ensureNetworkOnHost, setPeers } from '../../src/network/overlay.ts';
import { openProbe, type Probe } from '../../src/network/probe.ts';
import { buildTestbed, leftovers, macOf, type Testbed } from './testbed.ts';

const VM_IP = '10.0.0.5';
const CLIENT_IP = '10.0.0.20';
const OTHER_IP = '10.0.0.21';

describe('port firewall: security groups and anti-spoofing', { timeout: 120_000 }, () => {
  let bed: Testbed;
  let dir: string;
  let vm: Probe;
  let client: Probe;
  let other: Probe;
  let firewall: PortFirewallOptions;

  /** The body of GET / from the VM's web server, or '' when no answer came (busybox wget segfaults in busybox-static, so nc it is). */
  const http = async (from: Probe) => {
    const result = await from.run(['busybox', 'nc', '-w', '2', VM_IP, '8080'], { timeoutMs: 10_000, input: 'GET / HTTP/1.0\r\n\r\n' });
    const split = result.stdout.indexOf('\r\n\r\n');
    return split < 0 ? '' : result.stdout.slice(split + 4);
  };
  const ping = async (from: Probe, target: string, extra: string[] = []) =>
    (await from.run(['busybox', 'ping', '-c', '2', '-W', '1', ...extra, target], { timeoutMs: 10_000 })).exitCode === 0;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'nubis-net-fw-'));
    await chmod(dir, 0o755);
    await writeFile(join(dir, 'index.html'), 'hello from the vm\n');
    bed = await buildTestbed(2);
    for (const host of bed.hosts) {
      await ensureNetworkOnHost({ hostNs: host.ns, networkKey: 'net-a', vni: 100, localUnderlayIp: host.underlayIp });
      await setPeers({ hostNs: host.ns, networkKey: 'net-a', peerUnderlayIps: bed.hosts.map((h) => h.underlayIp) });
    }
    vm = await openProbe({ hostNs: bed.hosts[0].ns, networkKey: 'net-a', address: `${VM_IP}/24`, mac: '02:00:00:00:00:05' });
    client = await openProbe({ hostNs: bed.hosts[1].ns, networkKey: 'net-a', address: `${CLIENT_IP}/24` });
    other = await openProbe({ hostNs: bed.hosts[1].ns, networkKey: 'net-a', address: `${OTHER_IP}/24` });
    vm.spawn(['busybox', 'httpd', '-f', '-p', '8080', '-h', dir]);
    firewall = {
      hostNs: bed.hosts[0].ns,
      tapName: vm.hostLinkName,
      mac: await macOf(vm.namespace, 'eth0'),
      ip: VM_IP,
      ingressRules: [],
      allowIngressFrom: [],
    };
    // The service is up and reachable without a firewall.
    for (let i = 0; i < 20 && (await http(client)) === ''; i++) await new Promise((resolve) => setTimeout(resolve, 100));
    assert.equal(await http(client), 'hello from the vm\n');
  });

  after(async () => {
    for (const probe of [vm, client, other]) await probe?.close().catch(() => {});
    if (bed) {
      await bed.teardown();
      assert.deepEqual(await leftovers(bed.prefix), []);
    }
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('drops new ingress by default but lets replies to the VM own connections through', async () => {
    await applyPortFirewall(firewall);
    assert.equal(await http(client), '');
    assert.equal(await ping(client, VM_IP), false);
    assert.ok(await ping(vm, CLIENT_IP), 'egress and its replies must pass');
  });

  it('lets HTTP in once a rule allows it, only from the rule source, and blocks it again when the rule goes', async () => {
    await applyPortFirewall({ ...firewall, ingressRules: [{ protocol: 'tcp', portMin: 8080, portMax: 8080, sourceCidr: `${CLIENT_IP}/32` }] });
    assert.equal(await http(client), 'hello from the vm\n');
    assert.equal(await http(other), '');
    assert.equal(await ping(client, VM_IP), false, 'a TCP rule must not open ICMP');
    await applyPortFirewall(firewall);
    assert.equal(await http(client), '');
  });

  it('lets members of the same group in on any protocol', async () => {
    await applyPortFirewall({ ...firewall, allowIngressFrom: [OTHER_IP] });
    assert.ok(await ping(other, VM_IP));
    assert.equal(await http(other), 'hello from the vm\n');
    assert.equal(await ping(client, VM_IP), false);
  });

  it('drops a spoofed source IP and a spoofed source MAC', async () => {
    await applyPortFirewall({ ...firewall, allowIngressFrom: [] });
    assert.ok(await ping(vm, CLIENT_IP));
    await vm.run(['ip', 'addr', 'add', '10.0.0.66/24', 'dev', 'eth0']);
    assert.equal(await ping(vm, CLIENT_IP, ['-I', '10.0.0.66']), false, 'spoofed source address got through');
    await vm.run(['ip', 'addr', 'del', '10.0.0.66/24', 'dev', 'eth0']);
    await vm.run(['ip', 'link', 'set', 'eth0', 'address', '02:00:00:00:00:66']);
    assert.equal(await ping(vm, CLIENT_IP), false, 'spoofed source MAC got through');
    await vm.run(['ip', 'link', 'set', 'eth0', 'address', firewall.mac]);
    await vm.run(['ip', 'neigh', 'flush', 'all']);
    await client.run(['ip', 'neigh', 'flush', 'all']);
    assert.ok(await ping(vm, CLIENT_IP), 'the real MAC and IP must pass again');
  });

  it('removes everything it added, and the port is open again', async () => {
    const names = portFirewallNames(firewall.tapName);
    await removePortFirewall(firewall);
    await removePortFirewall(firewall);
    const inHost = { netns: firewall.hostNs, allowFailure: true };
    assert.notEqual((await runCommand('iptables', ['-L', names.ingressChain, '-n'], inHost)).exitCode, 0);
    assert.doesNotMatch((await runCommand('iptables', ['-S', 'FORWARD'], inHost)).stdout, /physdev/);
    assert.notEqual((await runCommand('nft', ['list', 'chain', 'bridge', 'nubis_antispoof', names.antiSpoofChain], inHost)).exitCode, 0);
    assert.equal(await http(client), 'hello from the vm\n');
  });

  it('refuses invalid rules before changing anything', async () => {
    await assert.rejects(applyPortFirewall({ ...firewall, ingressRules: [{ protocol: 'tcp', portMin: 90, portMax: 80, sourceCidr: '0.0.0.0/0' }] }), {
      code: 'NET_INVALID_RULE',
    });
    await assert.rejects(applyPortFirewall({ ...firewall, ingressRules: [{ protocol: 'icmp', portMin: 1, sourceCidr: '0.0.0.0/0' }] }), {
      code: 'NET_INVALID_RULE',
    });
    await assert.rejects(applyPortFirewall({ ...firewall, ingressRules: [{ protocol: 'tcp', sourceCidr: '10.0.0.0' }] }), { code: 'NET_INVALID_ADDRESS' });
  });
});
