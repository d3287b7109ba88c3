/**
 * The network service over fake agents: which hosts carry a network and with which peers (VXLAN
 * head-end replication), DHCP on one host only, unplugging a host its last VM left, and probes.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { type FakeCluster, fakeCluster } from '../../test/helpers/fake-cluster.ts';
import type { HostNetworkSpec } from '../agent-api/contract.ts';
import type { NubisError } from '../core/errors.ts';

describe('network service with fake agents', () => {
  let cluster: FakeCluster;
  before(async () => {
    cluster = await fakeCluster(['h1', 'h2', 'h3']);
  });
  after(() => cluster.close());

  /** The last spec of `network` an agent was told to apply. */
  const lastApplied = (host: string, networkId: string): HostNetworkSpec | undefined =>
    cluster
      .agent(host)
      .callsOf('applyNetwork')
      .map(([spec]) => spec as HostNetworkSpec)
      .filter((spec) => spec.id === networkId)
      .at(-1);

  const createVm = async (name: string, host: string, network: string): Promise<string> => {
    const operation = await cluster.services.operations.wait(
      (await cluster.services.vms.create({ name, image: 'tiny', cpus: 1, memoryMb: 128, host, networks: [{ network }], waitReady: false })).id,
    );
    assert.equal(operation.status, 'succeeded', JSON.stringify(operation.error));
    return operation.target.id;
  };

  it('plugs a network into the hosts of its VMs, each with the others as VXLAN peers, and DHCP on one of them', async () => {
    const network = await cluster.services.networks.create({ name: 'blue', subnet: '10.80.0.0/24', gateway: '10.80.0.1', dhcp: true, nat: false });
    await createVm('b1', 'h1', 'blue');
    await createVm('b2', 'h2', 'blue');
    const h1 = lastApplied('h1', network.id);
    const h2 = lastApplied('h2', network.id);
    assert.deepEqual(h1?.peers, ['172.31.0.12']);
    assert.deepEqual(h2?.peers, ['172.31.0.11']);
    assert.equal([h1?.dhcp, h2?.dhcp].filter(Boolean).length, 1, 'one DHCP server for the network');
    const leases = (h1?.dhcp ?? h2?.dhcp)?.hosts.map((lease) => lease.name).sort();
    assert.deepEqual(leases, ['b1', 'b2'], 'a fixed lease per VM');
    assert.equal(lastApplied('h3', network.id), undefined, 'a host without a VM on it does not carry it');
    assert.deepEqual((await cluster.services.networks.get('blue')).hosts.sort(), ['h1', 'h2']);
  });

  it('unplugs a host its last VM on the network left, and tells the others', async () => {
    const network = await cluster.services.networks.get('blue');
    await cluster.services.operations.wait((await cluster.services.vms.delete('b2')).id);
    assert.deepEqual(cluster.agent('h2').callsOf('removeNetwork').at(-1), [network.id]);
    assert.deepEqual(lastApplied('h1', network.id)?.peers, [], 'h1 replicates to nobody now');
    assert.deepEqual((await cluster.services.networks.get('blue')).hosts, ['h1']);
  });

  it('keeps a network on the host of a running probe while its last VM there migrates off, and clears it once the probe ends', async () => {
    const network = await cluster.services.networks.create({ name: 'green', subnet: '10.81.0.0/24', dhcp: false, nat: false });
    await createVm('g1', 'h3', 'green');
    const releaseProbe = cluster.agent('h3').hold('probe');
    const probing = cluster.services.networks.probe('green', undefined, { command: ['ping', '-c', '30', '10.81.0.2'], timeoutSeconds: 60 });
    while (cluster.agent('h3').callsOf('probe').length === 0) await new Promise((resolve) => setTimeout(resolve, 5));
    const vmId = (await cluster.services.vms.get('g1')).id;
    const moved = await cluster.services.operations.wait((await cluster.services.migrations.migrate(vmId, { to: 'h1', strategy: 'precopy' })).id);
    assert.equal(moved.status, 'succeeded', JSON.stringify(moved.error));
    const removedFrom = (host: string) =>
      cluster
        .agent(host)
        .callsOf('removeNetwork')
        .filter(([id]) => id === network.id).length;
    assert.equal(removedFrom('h3'), 0, 'the probe keeps the network on h3');
    assert.deepEqual(lastApplied('h3', network.id)?.peers, ['172.31.0.11'], 'h3 still floods to h1, where the VM went');
    assert.deepEqual(lastApplied('h1', network.id)?.peers, ['172.31.0.13']);
    assert.deepEqual((await cluster.services.networks.get('green')).hosts, ['h1', 'h3']);
    releaseProbe();
    assert.equal((await probing).host, 'h3');
    assert.equal(removedFrom('h3'), 1, 'with the probe gone nothing keeps it there');
    assert.deepEqual(lastApplied('h1', network.id)?.peers, []);
    assert.deepEqual((await cluster.services.networks.get('green')).hosts, ['h1']);
    await cluster.services.operations.wait((await cluster.services.vms.delete('g1')).id);
    await cluster.services.networks.delete('green');
  });

  it('keeps a DHCP server and NAT gateway on their host when the VMs leave it, moves them off a host in maintenance, and removes them with the network', async () => {
    const network = await cluster.services.networks.create({ name: 'red', subnet: '10.82.0.0/24', gateway: '10.82.0.1', dhcp: true, nat: true });
    await createVm('r1', 'h1', 'red');
    await cluster.services.networks.addForward('red', {
      protocol: 'tcp',
      hostPort: 8082,
      vmId: (await cluster.services.vms.get('r1')).id,
      vmName: 'r1',
      vmPort: 80,
    });
    const vmId = (await cluster.services.vms.get('r1')).id;
    const moved = await cluster.services.operations.wait((await cluster.services.migrations.migrate(vmId, { to: 'h2', strategy: 'precopy' })).id);
    assert.equal(moved.status, 'succeeded', JSON.stringify(moved.error));
    const removedFrom = (host: string) =>
      cluster
        .agent(host)
        .callsOf('removeNetwork')
        .filter(([id]) => id === network.id).length;
    assert.equal(removedFrom('h1'), 0, 'h1 keeps the network: it serves DHCP and runs the gateway');
    assert.ok(lastApplied('h1', network.id)?.dhcp && lastApplied('h1', network.id)?.nat, 'DHCP and NAT stay on h1');
    assert.deepEqual(
      lastApplied('h1', network.id)?.dhcp?.hosts.map((lease) => lease.name),
      ['r1'],
    );
    assert.equal(lastApplied('h2', network.id)?.dhcp, undefined, 'never a second DHCP server');
    assert.deepEqual((await cluster.services.networks.get('red')).hosts, ['h1', 'h2']);
    assert.equal((await cluster.services.networks.forwards('red'))[0].listenAddress, '172.31.0.11', 'the forward still listens on h1');
    // In maintenance h1 hands them to a host that is up and carries the network.
    await cluster.db.updateTable('hosts').set({ maintenance: 1 }).where('name', '=', 'h1').execute();
    try {
      await cluster.services.networks.sync(network.id);
    } finally {
      await cluster.db.updateTable('hosts').set({ maintenance: 0 }).where('name', '=', 'h1').execute();
    }
    assert.equal(removedFrom('h1'), 1);
    assert.ok(lastApplied('h2', network.id)?.dhcp && lastApplied('h2', network.id)?.nat, 'DHCP and NAT moved to h2');
    assert.equal((await cluster.services.networks.forwards('red'))[0].listenAddress, '172.31.0.12');
    await cluster.services.operations.wait((await cluster.services.vms.delete('r1')).id);
    assert.equal(removedFrom('h2'), 0, 'no VM is left, but h2 serves the network');
    assert.deepEqual((await cluster.services.networks.get('red')).hosts, ['h2']);
    await cluster.services.networks.delete('red');
    assert.equal(removedFrom('h2'), 1, 'deleting the network takes its DHCP server and gateway away');
  });

  it('clears a host that could not remove a network at the next sync, and refuses to delete the network while an up host keeps it', async () => {
    const network = await cluster.services.networks.create({ name: 'gray', subnet: '10.83.0.0/24', gateway: '10.83.0.1', dhcp: true, nat: false });
    await createVm('y1', 'h1', 'gray');
    await createVm('y2', 'h2', 'gray');
    const removedFrom = (host: string) =>
      cluster
        .agent(host)
        .callsOf('removeNetwork')
        .filter(([id]) => id === network.id).length;
    cluster.agent('h2').failNext('removeNetwork', new Error('agent restarting'));
    await cluster.services.operations.wait((await cluster.services.vms.delete('y2')).id);
    assert.equal(removedFrom('h2'), 2, 'the failed removal was tried again by the sync that followed');
    await cluster.services.networks.sync(network.id);
    assert.equal(removedFrom('h2'), 2, 'once it succeeded, h2 is not asked again');
    await cluster.services.operations.wait((await cluster.services.vms.delete('y1')).id);
    cluster.agent('h1').failNext('removeNetwork', new Error('agent restarting'));
    await assert.rejects(cluster.services.networks.delete('gray'), (error: NubisError) => error.code === 'NET_UNPLUG_FAILED' && /h1/.test(error.message));
    assert.equal((await cluster.services.networks.get('gray')).hosts.length, 1, 'the network is still there');
    await cluster.services.networks.delete('gray');
    assert.equal(removedFrom('h1'), 2);
  });

  it("gives every network a conntrack zone of its own, and a deleted network's zone to the next", async () => {
    const first = await cluster.services.networks.create({ name: 'z1', subnet: '10.84.0.0/24', dhcp: false, nat: false });
    await cluster.services.networks.create({ name: 'z2', subnet: '10.86.0.0/24', dhcp: false, nat: false });
    const zones = (await cluster.services.networks.list()).map((n) => n.conntrackZone);
    assert.equal(new Set(zones).size, zones.length, 'no two networks share a zone');
    assert.ok(zones.every((zone) => zone >= 1 && zone <= 65535));
    await cluster.services.networks.delete('z1');
    const third = await cluster.services.networks.create({ name: 'z3', subnet: '10.85.0.0/24', dhcp: false, nat: false });
    assert.equal(third.conntrackZone, first.conntrackZone, 'the freed zone is taken again');
    await createVm('z3vm', 'h1', 'z3');
    assert.equal(lastApplied('h1', third.id)?.ctZone, third.conntrackZone, 'hosts get the zone in the spec');
    await cluster.services.operations.wait((await cluster.services.vms.delete('z3vm')).id);
    await cluster.services.networks.delete('z3');
    await cluster.services.networks.delete('z2');
  });

  it('runs a probe on a host carrying the network with a free address, and refuses one on a host that does not', async () => {
    const result = await cluster.services.networks.probe('blue', undefined, { command: ['ping', '-c', '1', '10.80.0.3'], timeoutSeconds: 5 });
    assert.deepEqual([result.host, result.exitCode], ['h1', 0]);
    const [, request] = cluster.agent('h1').callsOf('probe').at(-1) as [string, { address: string; gateway?: string }];
    assert.equal(request.address, `${result.address}/24`);
    assert.equal(request.gateway, '10.80.0.1');
    await assert.rejects(
      cluster.services.networks.probe('blue', undefined, { host: 'h3', command: ['true'], timeoutSeconds: 5 }),
      (error: NubisError) => error.code === 'NET_NOT_PLUMBED',
    );
  });

  it('refuses to delete a network in use, and deletes it once its VMs are gone', async () => {
    await assert.rejects(cluster.services.networks.delete('blue'), (error: NubisError) => error.code === 'NET_IN_USE');
    await cluster.services.operations.wait((await cluster.services.vms.delete('b1')).id);
    await cluster.services.networks.delete('blue');
    await assert.rejects(cluster.services.networks.get('blue'), (error: NubisError) => error.code === 'NET_NOT_FOUND');
  });

  it('gives parallel creates distinct VNIs, and a name to one of them only', async () => {
    const services = cluster.services;
    const made = await Promise.all(
      Array.from({ length: 6 }, (_, i) => services.networks.create({ name: `par${i}`, subnet: `10.120.${i}.0/24`, dhcp: false, nat: false })),
    );
    assert.equal(new Set(made.map((network) => network.vni)).size, 6);
    const same = await Promise.allSettled([0, 1].map((i) => services.networks.create({ name: 'twin', subnet: `10.121.${i}.0/24`, dhcp: false, nat: false })));
    assert.deepEqual(same.map((result) => (result.status === 'fulfilled' ? 'created' : (result.reason as NubisError).code)).sort(), [
      'NET_NAME_TAKEN',
      'created',
    ]);
  });

  it('gives VMs created at once on one network distinct addresses, all of them created', async () => {
    await cluster.services.networks.create({ name: 'rush', subnet: '10.122.0.0/24', dhcp: false, nat: false });
    const names = Array.from({ length: 8 }, (_, i) => `rush${i}`);
    await Promise.all(names.map((name, i) => createVm(name, `h${(i % 3) + 1}`, 'rush')));
    const ips = await Promise.all(names.map(async (name) => (await cluster.services.vms.get(name)).nics[0].ip));
    assert.equal(new Set(ips).size, names.length, `distinct addresses: ${ips.join(', ')}`);
  });
});
