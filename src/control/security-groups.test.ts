import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { type FakeCluster, fakeCluster } from '../../test/helpers/fake-cluster.ts';
import type { NubisError } from '../core/errors.ts';

describe('security groups (records)', () => {
  let cluster: FakeCluster;
  before(async () => {
    cluster = await fakeCluster(['h1']);
  });
  after(() => cluster.close());

  it('creates a group with its allow-all egress rule, and deletes both together', async () => {
    const group = await cluster.services.secgroups.create({ name: 'web' });
    assert.deepEqual(
      group.rules.map((rule) => [rule.direction, rule.protocol, rule.cidr]),
      [['egress', 'any', '0.0.0.0/0']],
    );
    await cluster.services.secgroups.delete('web');
    await assert.rejects(cluster.services.secgroups.get('web'), (error: NubisError) => error.code === 'SECGROUP_NOT_FOUND');
    assert.deepEqual(await cluster.db.selectFrom('secgroup_rules').selectAll().where('group_id', '=', group.id).execute(), [], 'no rule outlives its group');
  });
});
