/**
 * Virtual networks across hosts, with real packets: two hosts in network namespaces joined by an
 * underlay, tenant networks as VXLAN overlays, VMs on different hosts reaching each other, two
 * networks with the same subnet never exchanging a frame (each in its own conntrack zone), IPAM
 * refusals, a probe and a DHCP server keeping their host's network while VMs migrate away, and
 * `down` leaving no namespace, link or dnsmasq behind.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { Operation, Vm } from '../../src/wire/schemas.ts';
import type { FaultPoint } from '../../src/core/fault-points.ts';
import { bridgeNameFor } from '../../src/network/names.ts';
import { NubisInstance, runOnConsole } from '../helpers/nubis-instance.ts';

interface ProbeResult {
  host: string;
  address: string;
  exitCode: number;
  stdout: string;
  stderr: string;
}

/** The dnsmasq processes of a test bed, found by their configuration path in /proc (/run/nubis/<prefix>-<host>/...). */
function dnsmasqOf(testBed: string): Array<{ pid: number; host: string }> {
  const found: Array<{ pid: number; host: string }> = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    let args: string[];
    try {
      args = readFileSync(`/proc/${entry}/cmdline`, 'utf8').split('\0');
    } catch {
      continue; // gone meanwhile
    }
    const conf = args.find((arg) => arg.startsWith(`--conf-file=/run/nubis/${testBed}-`));
    if (args[0].endsWith('dnsmasq') && conf) found.push({ pid: Number(entry), host: conf.split('/')[3].slice(testBed.length + 1) });
  }
  return found;
}

describe('virtual networks across hosts', { skip: process.getuid?.() !== 0 ? 'needs root for network namespaces' : false }, () => {
  const nubis = new NubisInstance('networks');
  let testBed = '';

  before(async () => {
    await nubis.up(['--hosts', '2']);
    testBed = nubis.upResult.testBed as string;
  });
  after(() => nubis.destroy());

  async function probe(network: string, args: string[], options: { project?: string; on?: string; timeoutSeconds?: number } = {}): Promise<ProbeResult> {
    // --json goes before `--`: everything after it belongs to the probed command.
    const result = await nubis.cli([
      '--json',
      'network',
      'probe',
      network,
      ...(options.project ? ['--project', options.project] : []),
      ...(options.on ? ['--on', options.on] : []),
      ...(options.timeoutSeconds ? ['--timeout', String(options.timeoutSeconds)] : []),
      '--',
      ...args,
    ]);
    if (result.code !== 0 && result.stdout === '') throw new Error(`nubis network probe ${network} failed: ${result.stderr}`);
    return JSON.parse(result.stdout) as ProbeResult;
  }

  it('puts every host in its own namespace on the underlay', async () => {
    const hosts = await nubis.cliJson<Array<{ name: string; status: string; underlayIp?: string }>>(['host', 'list']);
    assert.deepEqual(
      hosts.map((h) => [h.name, h.status]),
      [
        ['host-1', 'online'],
        ['host-2', 'online'],
      ],
    );
    assert.ok(hosts.every((h) => h.underlayIp?.startsWith('172.31.0.')));
    const namespaces = execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' });
    assert.match(namespaces, new RegExp(`${testBed}-host-1`));
    assert.match(namespaces, new RegExp(`${testBed}-host-2`));
  });

  it('creates networks and refuses bad ones with the reason, creating nothing', async () => {
    const created = await nubis.cliJson<{ subnet: string; vni: number; mtu: number }>([
      'network',
      'create',
      'net-a',
      '--subnet',
      '10.20.0.0/24',
      '--gateway',
      '10.20.0.1',
    ]);
    assert.equal(created.subnet, '10.20.0.0/24');
    assert.ok(created.vni >= 1000);
    assert.equal(created.mtu, 1450);
    await nubis.cliJson(['project', 'create', 'other']);
    // The same subnet in another project: allowed, the networks are isolated.
    await nubis.cliJson(['network', 'create', 'net-b', '--subnet', '10.20.0.0/24', '--project', 'other']);
    const refusals: Array<[string[], RegExp]> = [
      [['network', 'create', 'bad1', '--subnet', '10.20.0.0/33'], /not an IPv4 subnet/],
      [['network', 'create', 'bad2', '--subnet', '10.20.0.7/24'], /host bits set/],
      [['network', 'create', 'bad3', '--subnet', '10.20.0.128/25'], /overlaps 10\.20\.0\.0\/24 of network net-a/],
      [['network', 'create', 'bad4', '--subnet', '10.30.0.0/24', '--vni', String(created.vni)], /VNI \d+ is used by network net-a/],
      [['network', 'create', 'bad5', '--subnet', '10.30.0.0/24', '--gateway', '10.31.0.1'], /not a usable address of subnet/],
      [['vm', 'create', 'bad6', '--image', 'tiny', '--network', 'net-a', '--ip', '10.99.0.5'], /not a usable address of subnet/],
      [['vm', 'create', 'bad7', '--image', 'tiny', '--network', 'net-a', '--ip', '10.20.0.1'], /10\.20\.0\.1 on network net-a is taken/],
      [['vm', 'create', 'bad8', '--image', 'tiny', '--network', 'nope'], /No network nope/],
    ];
    for (const [args, message] of refusals) {
      const result = await nubis.cli(args);
      assert.notEqual(result.code, 0, args.join(' '));
      assert.match(result.stderr, message);
    }
    const networks = await nubis.cliJson<Array<{ name: string; project: string; nicCount: number }>>(['network', 'list']);
    assert.deepEqual(
      networks.map((n) => [n.name, n.project, n.nicCount]),
      [
        ['net-a', 'default', 0],
        ['net-b', 'other', 0],
      ],
    );
    assert.equal((await nubis.cliJson<Vm[]>(['vm', 'list'])).length, 0);
  });

  it('lets VMs on different hosts of one network reach each other', async () => {
    const a1 = await nubis.cliJson<Vm>(['vm', 'create', 'a1', '--image', 'tiny', '--network', 'net-a', '--ip', '10.20.0.10', '--host', 'host-1']);
    const a2 = await nubis.cliJson<Vm>(['vm', 'create', 'a2', '--image', 'tiny', '--network', 'net-a', '--host', 'host-2']);
    assert.deepEqual(a1.guestIps, ['10.20.0.10']);
    assert.deepEqual(
      a2.nics.map((n) => n.ip),
      ['10.20.0.2'],
      'the lowest free address after the gateway',
    );
    assert.deepEqual(a2.guestIps, ['10.20.0.2'], 'the guest configured the address IPAM gave it');
    const ping = await probe('net-a', ['ping', '-c', '3', '-i', '0.2', '-W', '2', '10.20.0.10']);
    assert.equal(ping.exitCode, 0, ping.stdout + ping.stderr);
    const http = await probe('net-a', ['curl', '-s', '--max-time', '5', 'http://10.20.0.2/']);
    assert.match(http.stdout, /^a2 requests=\d+$/);
    // From inside the guest on host-2 to the guest on host-1, across the VXLAN overlay.
    const fromGuest = await runOnConsole(nubis, 'a2', 'wget -qO- http://10.20.0.10/');
    assert.match(fromGuest, /a1 requests=\d+/);
    const network = await nubis.cliJson<{ hosts: string[]; nicCount: number }>(['network', 'show', 'net-a']);
    assert.deepEqual(network.hosts, ['host-1', 'host-2']);
    assert.equal(network.nicCount, 2);
  });

  it('keeps the data path up while an agent is down, and the agent re-adopts it', async () => {
    process.kill(nubis.pidOf('agent-host-2'), 'SIGKILL');
    // host-1's agent runs the probe; a2's bridge, VXLAN device and tap on host-2 carry the traffic.
    const whileDown = await probe('net-a', ['curl', '-s', '--max-time', '5', 'http://10.20.0.2/']);
    assert.match(whileDown.stdout, /^a2 requests=\d+$/);
    await nubis.up(['--hosts', '2']);
    const a2 = await nubis.cliJson<Vm>(['vm', 'show', 'a2']);
    assert.equal(a2.state, 'running');
    const fromGuest = await runOnConsole(nubis, 'a2', 'wget -qO- http://10.20.0.10/');
    assert.match(fromGuest, /a1 requests=\d+/);
  });

  it('hands each NIC its IPAM address over DHCP, also to a host that does not run the server', async () => {
    const created = await nubis.cliJson<{ dhcp: boolean; dhcpAddress: string }>([
      'network',
      'create',
      'net-d',
      '--subnet',
      '10.40.0.0/24',
      '--gateway',
      '10.40.0.1',
      '--dhcp',
    ]);
    assert.equal(created.dhcp, true);
    assert.equal(created.dhcpAddress, '10.40.0.2');
    const d1 = await nubis.cliJson<Vm>(['vm', 'create', 'd1', '--image', 'tiny', '--network', 'net-d', '--host', 'host-1']);
    const d2 = await nubis.cliJson<Vm>(['vm', 'create', 'd2', '--image', 'tiny', '--network', 'net-d', '--ip', '10.40.0.77', '--host', 'host-2']);
    assert.deepEqual(d1.guestIps, ['10.40.0.3'], 'the guest on the DHCP server host got its lease');
    assert.deepEqual(d2.guestIps, ['10.40.0.77'], 'the guest on the other host got its fixed lease across the overlay');
    const route = await runOnConsole(nubis, 'd2', 'ip route');
    assert.match(route, /default via 10\.40\.0\.1/, 'DHCP handed out the gateway');
    await nubis.cliJson(['vm', 'delete', 'd1']);
    await nubis.cliJson(['vm', 'delete', 'd2']);
    await nubis.cliJson(['network', 'delete', 'net-d']);
  });

  it('never lets two networks exchange a frame, even with the same subnet on the same host', async () => {
    // b1 takes the very address a1 has, on host-2 where a2 (net-a) also runs.
    const b1 = await nubis.cliJson<Vm>([
      'vm',
      'create',
      'b1',
      '--image',
      'tiny',
      '--network',
      'net-b',
      '--ip',
      '10.20.0.10',
      '--host',
      'host-2',
      '--project',
      'other',
    ]);
    assert.deepEqual(b1.guestIps, ['10.20.0.10']);
    const onB = await probe('net-b', ['curl', '-s', '--max-time', '5', 'http://10.20.0.10/'], { project: 'other' });
    assert.match(onB.stdout, /^b1 requests=/, 'net-b sees its own 10.20.0.10');
    const onA = await probe('net-a', ['curl', '-s', '--max-time', '5', 'http://10.20.0.10/']);
    assert.match(onA.stdout, /^a1 requests=/, 'net-a sees its own 10.20.0.10');
    const crossing = await probe('net-b', ['ping', '-c', '3', '-i', '0.2', '-W', '1', '10.20.0.2'], { project: 'other' });
    assert.notEqual(crossing.exitCode, 0, 'a2 (net-a) must not answer on net-b');
    const fromGuest = await runOnConsole(nubis, 'b1', 'ping -c 2 -W 1 10.20.0.2 || echo unreachable', { project: 'other' });
    assert.match(fromGuest, /unreachable/);
  });

  it('tracks two networks with the same subnet on one host in conntrack zones of their own, each reaching its own VM', async () => {
    const netA = await nubis.cliJson<{ id: string; conntrackZone: number }>(['network', 'show', 'net-a']);
    const netB = await nubis.cliJson<{ id: string; conntrackZone: number }>(['network', 'show', 'net-b', '--project', 'other']);
    assert.notEqual(netA.conntrackZone, netB.conntrackZone);
    // host-2 carries both: each bridge's traffic is put in its network's zone before conntrack.
    const inHost2 = (...command: string[]) => execFileSync('ip', ['netns', 'exec', `${testBed}-host-2`, ...command], { encoding: 'utf8' });
    const rules = inHost2('nft', 'list', 'table', 'ip', 'nubis_ct_zones');
    assert.match(rules, /ct zone set iifname map @zones/);
    assert.match(rules, new RegExp(`"${bridgeNameFor(netA.id)}" : ${netA.conntrackZone}\\b`));
    assert.match(rules, new RegExp(`"${bridgeNameFor(netB.id)}" : ${netB.conntrackZone}\\b`));
    // The very same connection (probe address, source port, 10.20.0.10:80) on both networks from
    // host-2, in turns: each network reaches its own VM, a1 across the overlay and b1 on host-2.
    const curl = ['curl', '-s', '--max-time', '5', '--local-port', '40080', 'http://10.20.0.10/'];
    for (let round = 0; round < 2; round++) {
      const onA = await probe('net-a', curl, { on: 'host-2' });
      const onB = await probe('net-b', curl, { project: 'other', on: 'host-2' });
      assert.equal(onA.address, onB.address, 'both probes have the same address');
      assert.match(onA.stdout, /^a1 requests=/, `net-a, round ${round}`);
      assert.match(onB.stdout, /^b1 requests=/, `net-b, round ${round}`);
    }
    const tracked = inHost2('cat', '/proc/net/nf_conntrack');
    for (const zone of [netA.conntrackZone, netB.conntrackZone]) {
      assert.match(tracked, new RegExp(`sport=40080 dport=80 .*zone=${zone} `), `the connection is tracked in zone ${zone}`);
    }
  });

  it('keeps a probe on a host answered while the last VM of its network there migrates away', async () => {
    await nubis.cliJson(['network', 'create', 'net-p', '--subnet', '10.70.0.0/24']);
    const p1 = await nubis.cliJson<Vm>(['vm', 'create', 'p1', '--image', 'tiny', '--network', 'net-p', '--host', 'host-1']);
    const signals = mkdtempSync(join(tmpdir(), 'nubis-probe-signals-'));
    try {
      // One ping every 0.2 s, each marked before or after the move, until the test says stop.
      const loop = [
        `touch ${signals}/started;`,
        `while [ ! -e ${signals}/stop ]; do`,
        `if [ -e ${signals}/moved ]; then when=after; else when=before; fi;`,
        `if ping -c 1 -W 1 ${p1.nics[0].ip} > /dev/null; then echo "$when ok"; else echo "$when lost"; fi;`,
        'sleep 0.2; done',
      ].join(' ');
      const probing = probe('net-p', ['sh', '-c', loop], { on: 'host-1', timeoutSeconds: 300 });
      let ended: ProbeResult | Error | undefined;
      probing.then(
        (result) => (ended = result),
        (error: Error) => (ended = error),
      );
      for (let i = 0; i < 300 && !ended && !existsSync(join(signals, 'started')); i++) await new Promise((resolve) => setTimeout(resolve, 100));
      assert.ok(existsSync(join(signals, 'started')), `the probe runs (it ended: ${ended instanceof Error ? ended.message : JSON.stringify(ended)})`);
      const moved = await nubis.cliJson<{ to: string }>(['vm', 'migrate', 'p1', '--to', 'host-2']);
      assert.equal(moved.to, 'host-2');
      writeFileSync(join(signals, 'moved'), '');
      await new Promise((resolve) => setTimeout(resolve, 4000));
      const whileProbing = await nubis.cliJson<{ hosts: string[] }>(['network', 'show', 'net-p']);
      writeFileSync(join(signals, 'stop'), '');
      const result = await probing;
      assert.equal(result.host, 'host-1');
      const after = result.stdout.split('\n').filter((line) => line.startsWith('after'));
      assert.ok(after.length >= 5, `pings after the move: ${after.length}`);
      assert.deepEqual(
        after.filter((line) => line !== 'after ok'),
        [],
        'every ping after the move was answered',
      );
      assert.deepEqual(whileProbing.hosts, ['host-1', 'host-2'], 'the probe kept the network on host-1');
      assert.deepEqual((await nubis.cliJson<{ hosts: string[] }>(['network', 'show', 'net-p'])).hosts, ['host-2'], 'without the probe host-1 lets go');
    } finally {
      writeFileSync(join(signals, 'stop'), '');
      rmSync(signals, { recursive: true, force: true });
    }
    await nubis.cliJson(['vm', 'delete', 'p1']);
    await nubis.cliJson(['network', 'delete', 'net-p']);
  });

  it('enforces security groups per port, updated live as rules change', async () => {
    await nubis.cliJson(['secgroup', 'create', 'web']);
    const badRule = await nubis.cli(['secgroup', 'rule', 'add', 'web', '--protocol', 'tcp', '--port', '90-80']);
    assert.match(badRule.stderr, /Port range 90-80 runs backwards/);
    const s1 = await nubis.cliJson<Vm>(['vm', 'create', 's1', '--image', 'tiny', '--network', 'net-a', '--secgroup', 'web', '--host', 'host-1']);
    const s1Ip = s1.nics[0].ip;
    const curl = ['curl', '-s', '--max-time', '3', `http://${s1Ip}/`];
    assert.equal((await probe('net-a', curl)).stdout, '', 'new ingress from outside the group is dropped');
    const fromA2 = await runOnConsole(nubis, 'a2', `timeout 5 wget -qO- http://${s1Ip}/ || echo blocked`);
    assert.match(fromA2, /blocked/, 'a VM outside the group is blocked too');
    const outbound = await runOnConsole(nubis, 's1', 'timeout 5 wget -qO- http://10.20.0.2/');
    assert.match(outbound, /a2 requests=/, 'egress and its replies pass');
    const rule = await nubis.cliJson<{ id: string }>(['secgroup', 'rule', 'add', 'web', '--protocol', 'tcp', '--port', '80']);
    assert.match((await probe('net-a', curl)).stdout, /^s1 requests=/, 'the rule opens HTTP');
    const ping = await probe('net-a', ['ping', '-c', '2', '-W', '1', s1Ip]);
    assert.notEqual(ping.exitCode, 0, 'ICMP stays closed: the rule is for TCP 80 only');
    const s2 = await nubis.cliJson<Vm>(['vm', 'create', 's2', '--image', 'tiny', '--network', 'net-a', '--secgroup', 'web', '--host', 'host-2']);
    await nubis.cli(['secgroup', 'rule', 'delete', 'web', rule.id]);
    assert.equal((await probe('net-a', curl)).stdout, '', 'deleting the rule closes HTTP again');
    const member = await runOnConsole(nubis, 's2', `timeout 5 wget -qO- http://${s1Ip}/`);
    assert.match(member, /s1 requests=/, 'members of the group reach each other without a rule');
    const group = await nubis.cliJson<{ members: string[]; rules: Array<{ id: string; direction: string }> }>(['secgroup', 'show', 'web']);
    assert.deepEqual(group.members, ['s1', 's2']);
    // Egress: a new group allows all; without that rule, only what egress rules allow goes out.
    const allEgress = group.rules.find((r) => r.direction === 'egress')!;
    await nubis.cliJson(['secgroup', 'rule', 'delete', 'web', allEgress.id]);
    const blockedOut = await runOnConsole(nubis, 's1', 'timeout 5 wget -qO- http://10.20.0.2/ || echo egress-blocked');
    assert.match(blockedOut, /egress-blocked/);
    await nubis.cliJson(['secgroup', 'rule', 'add', 'web', '--direction', 'egress', '--protocol', 'tcp', '--port', '80', '--cidr', '10.20.0.0/24']);
    const allowedOut = await runOnConsole(nubis, 's1', 'timeout 5 wget -qO- http://10.20.0.2/; ping -c 1 -W 1 10.20.0.2 || echo icmp-blocked');
    assert.match(allowedOut, /a2 requests=/, 'the egress rule lets HTTP out');
    assert.match(allowedOut, /icmp-blocked/, 'and nothing else');
    assert.match((await nubis.cli(['secgroup', 'delete', 'web'])).stderr, /used by VM\(s\) s1, s2/);
    await nubis.cliJson(['vm', 'delete', 's2']);
    await nubis.cliJson(['vm', 'delete', 's1']);
    await nubis.cliJson(['secgroup', 'delete', 'web']);
    assert.ok(s2.nics[0].ip);
  });

  it('drops frames a VM sends from an address that is not its own', async () => {
    // One console session: the same ping from the VM's own address (the control) and from an
    // address it added itself.
    const output = await runOnConsole(
      nubis,
      'a1',
      'ping -c 1 -W 2 10.20.0.2 && echo own-address-ok; ip addr add 10.20.0.99/24 dev eth0; ping -c 2 -W 1 -I 10.20.0.99 10.20.0.2 || echo spoof-dropped; ip addr del 10.20.0.99/24 dev eth0',
      { timeoutMs: 30_000 },
    );
    assert.match(output, /own-address-ok/);
    assert.match(output, /spoof-dropped/);
  });

  it('lets VMs out through a NAT gateway, and in only through port forwards', async () => {
    const noGateway = await nubis.cli(['network', 'create', 'bad-nat', '--subnet', '10.50.0.0/24', '--nat']);
    assert.match(noGateway.stderr, /A NAT gateway needs the gateway address/);
    await nubis.cliJson(['network', 'create', 'net-n', '--subnet', '10.50.0.0/24', '--gateway', '10.50.0.1', '--nat']);
    await nubis.cliJson<Vm>(['vm', 'create', 'n1', '--image', 'tiny', '--network', 'net-n', '--host', 'host-1']);
    // host-2's underlay address stands for the outside world of the VM.
    const out = await runOnConsole(nubis, 'n1', 'ping -c 2 -W 2 172.31.0.12 && echo reached-outside');
    assert.match(out, /reached-outside/);
    const fromOutside = (): string => {
      try {
        return execFileSync('ip', ['netns', 'exec', `${testBed}-host-2`, 'curl', '-s', '--max-time', '3', 'http://172.31.0.11:8080/'], { encoding: 'utf8' });
      } catch {
        return 'unreachable';
      }
    };
    assert.equal(fromOutside(), 'unreachable', 'no way in without a forward');
    const forward = await nubis.cliJson<{ listenAddress: string; hostPort: number }>(['network', 'forward', 'add', 'net-n', '--port', '8080', '--to', 'n1:80']);
    assert.equal(forward.listenAddress, '172.31.0.11');
    assert.match(fromOutside(), /^n1 requests=\d+$/);
    const taken = await nubis.cli(['network', 'forward', 'add', 'net-n', '--port', '8080', '--to', 'n1:22']);
    assert.match(taken.stderr, /already forwarded/);
    await nubis.cliJson(['network', 'forward', 'delete', 'net-n', '8080']);
    assert.equal(fromOutside(), 'unreachable', 'the forward is gone');
    await nubis.cliJson(['vm', 'delete', 'n1']);
    await nubis.cliJson(['network', 'delete', 'net-n']);
  });

  it('refuses to delete a network in use, and deletes it once its VMs are gone', async () => {
    const inUse = await nubis.cli(['network', 'delete', 'net-a']);
    assert.notEqual(inUse.code, 0);
    assert.match(inUse.stderr, /used by VM\(s\) a1, a2/);
    await nubis.cliJson(['vm', 'delete', 'a2']);
    const network = await nubis.cliJson<{ hosts: string[] }>(['network', 'show', 'net-a']);
    assert.deepEqual(network.hosts, ['host-1'], 'host-2 no longer carries net-a');
    await nubis.cliJson(['vm', 'delete', 'a1']);
    await nubis.cliJson(['network', 'delete', 'net-a']);
    assert.deepEqual(
      (await nubis.cliJson<Array<{ name: string }>>(['network', 'list'])).map((n) => n.name),
      ['net-b'],
    );
  });

  it('reconciles a VM create that a killed control plane interrupted: the VM and its operation agree, nothing is left holding a name, address or capacity', async () => {
    await nubis.cliJson(['network', 'create', 'net-k', '--subnet', '10.60.0.0/24']);
    const faultDir = mkdtempSync(join(tmpdir(), 'nubis-faults-'));
    const memoryOf = async (host: string): Promise<number> => (await nubis.cliJson<{ allocatedMemoryMb: number }>(['host', 'show', host])).allocatedMemoryMb;
    /** Restarts the control plane armed to stop at `point`, creates k1 there, and kills it at that moment. */
    const killDuringCreate = async (point: FaultPoint): Promise<string | undefined> => {
      process.kill(nubis.pidOf('control-plane'), 'SIGKILL');
      const armed = await nubis.cli(['up', '--detach', '--port', String(nubis.port), '--hosts', '2', '--json'], {
        env: { NUBIS_FAULT_POINTS: point, NUBIS_FAULT_DIR: faultDir },
      });
      assert.equal(armed.code, 0, armed.stderr);
      const request = nubis
        .api<{ operation: Operation }>('POST', '/v1/vms', {
          name: 'k1',
          image: 'tiny',
          memoryMb: 128,
          host: 'host-2',
          networks: [{ network: 'net-k', ip: '10.60.0.9' }],
        })
        .catch(() => undefined);
      for (let i = 0; i < 600 && !existsSync(join(faultDir, point)); i++) await new Promise((resolve) => setTimeout(resolve, 100));
      assert.ok(existsSync(join(faultDir, point)), `the control plane reached ${point}`);
      process.kill(nubis.pidOf('control-plane'), 'SIGKILL');
      rmSync(join(faultDir, point));
      const answered = await request;
      await nubis.up(['--hosts', '2']);
      return answered?.body.operation.id;
    };
    /** Waits until an interrupted operation is settled with its host's report (stage `reconciled`). */
    const reconciled = async (id: string): Promise<Operation> => {
      for (let i = 0; i < 150; i++) {
        const operation = await nubis.cliJson<Operation>(['operation', 'show', id]);
        if (operation.stage === 'reconciled') return operation;
        await new Promise((resolve) => setTimeout(resolve, 200));
      }
      throw new Error(`operation ${id} was not reconciled`);
    };
    /** Waits until the VM is reconciled with its host's report (no longer pending). */
    const settled = async (): Promise<Vm | undefined> => {
      for (let i = 0; i < 150; i++) {
        const vms = await nubis.cliJson<Vm[]>(['vm', 'list']);
        const vm = vms.find((v) => v.name === 'k1');
        if (vm?.state !== 'pending') return vm;
        await new Promise((resolve) => setTimeout(resolve, 200));
      }
      throw new Error('k1 stayed pending');
    };
    try {
      const before = await memoryOf('host-2');
      // Before placement nothing is recorded: nothing to reconcile.
      assert.equal(await killDuringCreate('vm.create.before-placement'), undefined, 'the request got no answer');
      assert.equal(await settled(), undefined);
      // After the record, before QEMU: undone once host-2 reports that it has no such VM.
      const undone = await killDuringCreate('vm.create.after-record');
      assert.ok(undone, 'the request was answered with an operation');
      assert.equal(await settled(), undefined, 'the pending VM was undone');
      // The VM is settled first, its operation right after (the same report).
      const undoneOp = await reconciled(undone);
      assert.equal(undoneOp.status, 'failed');
      assert.match(undoneOp.error?.message ?? '', /undone/);
      assert.equal(await memoryOf('host-2'), before, 'its capacity is free');
      // After QEMU started: host-2 runs it, so the create is done and says so.
      const finished = await killDuringCreate('vm.create.after-qemu-started');
      const vm = await settled();
      assert.equal(vm?.state, 'running');
      assert.deepEqual(
        vm?.nics.map((n) => n.ip),
        ['10.60.0.9'],
        'its name and address were free for it again',
      );
      const finishedOp = await reconciled(finished!);
      assert.equal(finishedOp.status, 'succeeded', JSON.stringify(finishedOp));
      assert.equal(await memoryOf('host-2'), before + 128);
      await nubis.cliJson(['vm', 'delete', 'k1']);
      await nubis.cliJson(['network', 'delete', 'net-k']);
    } finally {
      rmSync(faultDir, { recursive: true, force: true });
    }
  });

  it('keeps a DHCP network served from its host while its VM moves away, and a VM created after the move gets its lease', async () => {
    await nubis.cliJson(['network', 'create', 'net-m', '--subnet', '10.45.0.0/24', '--gateway', '10.45.0.1', '--dhcp']);
    await nubis.cliJson<Vm>(['vm', 'create', 'm1', '--image', 'tiny', '--network', 'net-m', '--host', 'host-1']);
    assert.deepEqual(
      dnsmasqOf(testBed).map((server) => server.host),
      ['host-1'],
    );
    assert.equal((await nubis.cliJson<{ to: string }>(['vm', 'migrate', 'm1', '--to', 'host-2'])).to, 'host-2');
    const m2 = await nubis.cliJson<Vm>(['vm', 'create', 'm2', '--image', 'tiny', '--network', 'net-m', '--host', 'host-2']);
    assert.deepEqual(m2.guestIps, [m2.nics[0].ip], 'm2 got its lease from host-1 across the overlay');
    assert.deepEqual((await nubis.cliJson<{ hosts: string[] }>(['network', 'show', 'net-m'])).hosts, ['host-1', 'host-2']);
    assert.deepEqual(
      dnsmasqOf(testBed).map((server) => server.host),
      ['host-1'],
      'one DHCP server, still on host-1',
    );
    // Both VMs and the server stay for `down`, as a user leaves them.
  });

  it('leaves no namespace, link, QEMU or dnsmasq behind on down', async () => {
    assert.ok(dnsmasqOf(testBed).length > 0, 'a DHCP server runs before down');
    const down = await nubis.cli(['down']);
    assert.equal(down.code, 0, down.stderr);
    assert.deepEqual(dnsmasqOf(testBed), [], 'no dnsmasq of this data folder survives');
    assert.deepEqual(
      (existsSync('/run/nubis') ? readdirSync('/run/nubis') : []).filter((entry) => entry.startsWith(testBed)),
      [],
      'nor its files',
    );
    assert.doesNotMatch(execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' }), new RegExp(testBed));
    assert.doesNotMatch(execFileSync('ip', ['-o', 'link'], { encoding: 'utf8' }), new RegExp(testBed));
  });
});
