// Real-kernel tests of a network's NAT gateway and its port forwards. Two hosts on the underlay;
// the network lives on host A, where a probe namespace plays the VM (10.0.0.5, default route via
// the gateway 10.0.0.1) and serves HTTP on port 80. Host B's namespace plays "the outside": it
// serves HTTP on its underlay address and acts as a client of the forwards.
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { chmod, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import {
  addPortForward,
  ensureGateway,
  inspectGateway,
  listPortForwards,
  removeGateway,
  removePortForward,
  setPortForwards,
} from '../../src/network/gateway.ts';
import { routerNamespaceFor, type Gateway } from '../../src/network/gateway-layout.ts';
import { HOST_GATEWAY_TABLE } from '../../src/network/gateway-nft.ts';
import type { ActivePortForward } from '../../src/network/port-forwards.ts';
import { findLink, ip, runCommand } from '../../src/network/ip-command.ts';
import { isRunning, namespaceExists, runInNamespace } from '../../src/network/namespaces.ts';
import { ensureNetworkOnHost } from '../../src/network/overlay.ts';
import { openProbe, type Probe } from '../../src/network/probe.ts';
import { buildTestbed, leftovers, type Testbed } from './testbed.ts';

const VM_IP = '10.0.0.5';
const NET_A = 'net-a';
const NET_B = 'net-b';

describe('network gateway: NAT and port forwards', { timeout: 180_000 }, () => {
  let bed: Testbed;
  let dir: string;
  let vm: Probe;
  let outsideServer: ChildProcess | undefined;
  let hostA: string;
  let hostB: string;
  let underlayA: string;
  let underlayB: string;
  let gatewayA: Gateway;

  /** What `curl URL` run in `ns` printed, or undefined when it got no answer. */
  const curl = async (ns: string, url: string): Promise<string | undefined> => {
    const result = await runInNamespace(ns, 'curl', ['-s', '--connect-timeout', '2', '--max-time', '3', url], { timeoutMs: 10_000 });
    return result.exitCode === 0 ? result.stdout : undefined;
  };
  const ping = async (from: Probe, target: string) => (await from.run(['busybox', 'ping', '-c', '2', '-W', '1', target], { timeoutMs: 10_000 })).exitCode === 0;
  const hostTable = async (ns: string) => {
    const result = await runCommand('nft', ['list', 'table', 'ip', HOST_GATEWAY_TABLE], { netns: ns, allowFailure: true });
    return result.exitCode === 0 ? result.stdout : undefined;
  };
  /** A web root whose /cgi-bin/whoami answers with the client address the server sees. */
  const webRoot = async (name: string, index: string) => {
    const root = join(dir, name);
    await mkdir(join(root, 'cgi-bin'), { recursive: true });
    await writeFile(join(root, 'index.html'), index);
    await writeFile(join(root, 'cgi-bin', 'whoami'), '#!/bin/sh\nprintf "Content-Type: text/plain\\r\\n\\r\\n%s\\n" "$REMOTE_ADDR"\n');
    await chmod(join(root, 'cgi-bin', 'whoami'), 0o755);
    return root;
  };

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'nubis-net-gw-'));
    await chmod(dir, 0o755);
    const vmRoot = await webRoot('vm', 'hello from the vm\n');
    const outsideRoot = await webRoot('outside', 'hello from host b\n');
    bed = await buildTestbed(2);
    [hostA, hostB] = bed.hosts.map((host) => host.ns);
    [underlayA, underlayB] = bed.hosts.map((host) => host.underlayIp);
    await ensureNetworkOnHost({ hostNs: hostA, networkKey: NET_A, vni: 100, localUnderlayIp: underlayA });
    await ensureNetworkOnHost({ hostNs: hostA, networkKey: NET_B, vni: 200, localUnderlayIp: underlayA });
    vm = await openProbe({ hostNs: hostA, networkKey: NET_A, address: `${VM_IP}/24`, gateway: '10.0.0.1' });
    vm.spawn(['busybox', 'httpd', '-f', '-p', '80', '-h', vmRoot]);
    outsideServer = spawn('ip', ['netns', 'exec', hostB, 'busybox', 'httpd', '-f', '-p', '8000', '-h', outsideRoot], { stdio: 'ignore' });
    for (let i = 0; i < 30 && (await curl(hostB, `http://${underlayB}:8000/`)) === undefined; i++) await sleep(100);
    assert.equal(await curl(hostB, `http://${underlayB}:8000/`), 'hello from host b\n');
  });

  after(async () => {
    await vm?.close().catch(() => {});
    if (outsideServer?.pid !== undefined && isRunning(outsideServer.pid)) outsideServer.kill('SIGKILL');
    if (bed) {
      await bed.teardown();
      assert.deepEqual(await leftovers(bed.prefix), []);
    }
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('leaves the VM without a way out before the gateway exists', async () => {
    assert.equal(await ping(vm, underlayB), false);
  });

  it('refuses a gateway for a network that is not on the host and leaves nothing behind', async () => {
    await assert.rejects(ensureGateway({ hostNs: hostA, networkKey: 'net-missing', gatewayCidr: '10.9.0.1/24', subnet: '10.9.0.0/24' }), {
      code: 'NET_NETWORK_NOT_FOUND',
    });
    assert.equal(await namespaceExists(routerNamespaceFor(hostA, 'net-missing')), false);
    assert.equal(await hostTable(hostA), undefined);
    await assert.rejects(ensureGateway({ hostNs: hostA, networkKey: NET_A, gatewayCidr: '10.0.0.1/24', subnet: '10.0.0.0/24', uplinkDevice: 'nope0' }), {
      code: 'NET_LINK_NOT_FOUND',
    });
    await assert.rejects(ensureGateway({ hostNs: hostA, networkKey: NET_A, gatewayCidr: '10.0.1.1/24', subnet: '10.0.0.0/24' }), {
      code: 'NET_INVALID_ADDRESS',
    });
  });

  it('builds the gateway idempotently', async () => {
    gatewayA = await ensureGateway({ hostNs: hostA, networkKey: NET_A, gatewayCidr: '10.0.0.1/24', subnet: '10.0.0.0/24', uplinkDevice: 'ul0' });
    assert.equal(gatewayA.routerNs, routerNamespaceFor(hostA, NET_A));
    assert.ok(gatewayA.routerNs.startsWith(bed.prefix), 'the router namespace carries the host prefix');
    assert.equal(gatewayA.gatewayIp, '10.0.0.1');
    assert.deepEqual(await ensureGateway({ hostNs: hostA, networkKey: NET_A, gatewayCidr: '10.0.0.1/24', subnet: '10.0.0.0/24' }), gatewayA);
    assert.deepEqual(await inspectGateway({ hostNs: hostA, networkKey: NET_A }), gatewayA);
  });

  it('lets the VM reach host B by ping and TCP, seen there as host A (masquerade)', async () => {
    assert.ok(await ping(vm, underlayB), 'the VM pings host B through the gateway');
    const seen = await vm.run(['curl', '-s', '--max-time', '3', `http://${underlayB}:8000/cgi-bin/whoami`], { timeoutMs: 10_000 });
    assert.equal(seen.exitCode, 0, seen.stderr);
    assert.equal(clientAddress(seen.stdout), underlayA);
  });

  it('keeps the VM unreachable from host B without a forward, even for a neighbour that routes its subnet', async () => {
    assert.equal(await curl(hostB, `http://${underlayA}:8080/`), undefined);
    // Host A misconfigured to route the tenant subnet into its router, host B routing it to A:
    // the router still lets nothing in that is not a reply or a forwarded port.
    await ip(['route', 'add', '10.0.0.0/24', 'via', gatewayA.routerOuterIp], { netns: hostA });
    await ip(['route', 'add', '10.0.0.0/24', 'via', underlayA], { netns: hostB });
    try {
      assert.equal(await curl(hostB, `http://${VM_IP}/`), undefined);
    } finally {
      await ip(['route', 'delete', '10.0.0.0/24'], { netns: hostB });
      await ip(['route', 'delete', '10.0.0.0/24'], { netns: hostA });
    }
  });

  it('forwards host A underlay port 8080 to the VM web server, which sees the real client', async () => {
    const forwards = await setPortForwards({
      hostNs: hostA,
      networkKey: NET_A,
      listenAddress: underlayA,
      forwards: [{ protocol: 'tcp', hostPort: 8080, vmIp: VM_IP, vmPort: 80 }],
    });
    const expected: ActivePortForward[] = [{ protocol: 'tcp', hostPort: 8080, vmIp: VM_IP, vmPort: 80, listenAddress: underlayA }];
    assert.deepEqual(forwards, expected);
    assert.deepEqual(await listPortForwards({ hostNs: hostA, networkKey: NET_A }), expected);
    assert.equal(await curl(hostB, `http://${underlayA}:8080/`), 'hello from the vm\n');
    assert.equal(clientAddress(await curl(hostB, `http://${underlayA}:8080/cgi-bin/whoami`)), underlayB);
    // Host A's own clients use the forward too.
    assert.equal(await curl(hostA, `http://${underlayA}:8080/`), 'hello from the vm\n');
    // Setting the same set again changes nothing.
    assert.deepEqual(await setPortForwards({ hostNs: hostA, networkKey: NET_A, listenAddress: underlayA, forwards: expected }), expected);
  });

  it('refuses a host port that is already forwarded, by this network or another one on the host', async () => {
    await assert.rejects(
      addPortForward({ hostNs: hostA, networkKey: NET_A, protocol: 'tcp', hostPort: 8080, vmIp: VM_IP, vmPort: 81, listenAddress: underlayA }),
      { code: 'NET_PORT_FORWARD_TAKEN' },
    );
    // A second network with the same (overlapping) subnet gets its own router and link subnet.
    const gatewayB = await ensureGateway({ hostNs: hostA, networkKey: NET_B, gatewayCidr: '10.0.0.1/24', subnet: '10.0.0.0/24' });
    assert.notEqual(gatewayB.linkSubnet, gatewayA.linkSubnet);
    await assert.rejects(
      setPortForwards({ hostNs: hostA, networkKey: NET_B, listenAddress: underlayA, forwards: [{ protocol: 'tcp', hostPort: 8080, vmIp: VM_IP, vmPort: 80 }] }),
      { code: 'NET_PORT_FORWARD_TAKEN' },
    );
    await assert.rejects(
      setPortForwards({
        hostNs: hostA,
        networkKey: NET_B,
        listenAddress: underlayA,
        forwards: [{ protocol: 'tcp', hostPort: 8081, vmIp: '10.1.0.5', vmPort: 80 }],
      }),
      { code: 'NET_INVALID_PORT_FORWARD' },
    );
    assert.deepEqual(await listPortForwards({ hostNs: hostA, networkKey: NET_B }), []);
    // The same port number over UDP is a different forward.
    await setPortForwards({
      hostNs: hostA,
      networkKey: NET_B,
      listenAddress: underlayA,
      forwards: [
        { protocol: 'tcp', hostPort: 8081, vmIp: VM_IP, vmPort: 80 },
        { protocol: 'udp', hostPort: 8080, vmIp: VM_IP, vmPort: 53 },
      ],
    });
    assert.deepEqual(
      (await listPortForwards({ hostNs: hostA, networkKey: NET_B })).map((forward) => `${forward.protocol} ${forward.hostPort}`),
      ['tcp 8081', 'udp 8080'],
    );
    // Network A's forward is untouched and still works.
    assert.equal(await curl(hostB, `http://${underlayA}:8080/`), 'hello from the vm\n');
    // Network B has no VM at 10.0.0.5: its forward reaches nobody, and never network A's VM.
    assert.equal(await curl(hostB, `http://${underlayA}:8081/`), undefined);
  });

  it('replaces the forward set as a whole and removes single forwards', async () => {
    await setPortForwards({
      hostNs: hostA,
      networkKey: NET_A,
      listenAddress: underlayA,
      forwards: [{ protocol: 'tcp', hostPort: 8082, vmIp: VM_IP, vmPort: 80 }],
    });
    assert.equal(await curl(hostB, `http://${underlayA}:8080/`), undefined);
    assert.equal(await curl(hostB, `http://${underlayA}:8082/`), 'hello from the vm\n');
    await addPortForward({ hostNs: hostA, networkKey: NET_A, protocol: 'tcp', hostPort: 8080, vmIp: VM_IP, vmPort: 80, listenAddress: underlayA });
    assert.equal(await curl(hostB, `http://${underlayA}:8080/`), 'hello from the vm\n');
    assert.equal(await removePortForward({ hostNs: hostA, networkKey: NET_A, protocol: 'tcp', hostPort: 8080 }), true);
    assert.equal(await removePortForward({ hostNs: hostA, networkKey: NET_A, protocol: 'tcp', hostPort: 8080 }), false);
    assert.equal(await curl(hostB, `http://${underlayA}:8080/`), undefined);
    assert.equal(await curl(hostB, `http://${underlayA}:8082/`), 'hello from the vm\n');
    assert.deepEqual(await listPortForwards({ hostNs: hostA, networkKey: NET_A }), [
      { protocol: 'tcp', hostPort: 8082, vmIp: VM_IP, vmPort: 80, listenAddress: underlayA },
    ]);
  });

  it('removeGateway takes one network gateway away and leaves the other intact, then the host table', async () => {
    assert.equal(await removeGateway({ hostNs: hostA, networkKey: NET_A }), true);
    assert.equal(await namespaceExists(gatewayA.routerNs), false);
    assert.equal(await findLink(gatewayA.innerHostLink, { netns: hostA }), undefined);
    assert.equal(await findLink(gatewayA.outerHostLink, { netns: hostA }), undefined);
    assert.equal(await curl(hostB, `http://${underlayA}:8082/`), undefined);
    assert.equal(await ping(vm, underlayB), false);
    const table = (await hostTable(hostA)) ?? '';
    assert.doesNotMatch(table, new RegExp(gatewayA.routerOuterIp.replaceAll('.', '\\.')));
    assert.doesNotMatch(table, /8082/);
    assert.equal((await listPortForwards({ hostNs: hostA, networkKey: NET_B })).length, 2);
    await assert.rejects(listPortForwards({ hostNs: hostA, networkKey: NET_A }), { code: 'NET_GATEWAY_NOT_FOUND' });

    assert.equal(await removeGateway({ hostNs: hostA, networkKey: NET_B }), true);
    assert.equal(await hostTable(hostA), undefined);
    assert.equal(await removeGateway({ hostNs: hostA, networkKey: NET_B }), false);
  });

  it('is swept by cleanupByPrefix when its owner forgot it', async () => {
    const gateway = await ensureGateway({ hostNs: hostA, networkKey: NET_A, gatewayCidr: '10.0.0.1/24', subnet: '10.0.0.0/24' });
    await setPortForwards({
      hostNs: hostA,
      networkKey: NET_A,
      listenAddress: underlayA,
      forwards: [{ protocol: 'tcp', hostPort: 8080, vmIp: VM_IP, vmPort: 80 }],
    });
    assert.equal(await curl(hostB, `http://${underlayA}:8080/`), 'hello from the vm\n');
    await vm.close();
    if (outsideServer?.pid !== undefined && isRunning(outsideServer.pid)) outsideServer.kill('SIGKILL');
    const report = await bed.teardown();
    assert.ok(report.namespaces.includes(gateway.routerNs), `removed: ${report.namespaces.join(', ')}`);
    assert.deepEqual(await leftovers(bed.prefix), []);
  });
});

/** The client address busybox httpd put in REMOTE_ADDR (it listens on IPv6, so `[::ffff:a.b.c.d]`). */
function clientAddress(text: string | undefined): string | undefined {
  return text?.trim().replace(/^\[::ffff:(.*)\]$/, '$1');
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
