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
});
