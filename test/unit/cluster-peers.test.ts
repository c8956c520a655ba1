// Peers and ownership: every replica that sees the same members picks the same owner; a member
// leaving moves only its own keys; a DNS failure keeps the last members; a peer marked down is
// skipped until it answers; the cluster config is refused without a shared store.

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { parseConfig } from '../../mirror/config.js';
import { Peers } from '../../mirror/cluster/peers.js';

const members = ['10.0.0.1:5000', '10.0.0.2:5000', '10.0.0.3:5000'];

async function ring(self: string, list: string[]): Promise<Peers> {
  const p = new Peers({ peers: { static: list }, self, refreshMs: 60_000 });
  await p.start();
  p.stop();
  return p;
}

describe('cluster peers', () => {
  it('every replica computes the same owner; keys spread over all members', async () => {
    const views = await Promise.all(members.map((m) => ring(m, members)));
    const owners = new Map<string, number>();
    for (let i = 0; i < 3000; i++) {
      const key = `blob:sha256:${i.toString(16).padStart(64, '0')}`;
      const o = views.map((v) => v.owner(key));
      assert.ok(o.every((x) => x === o[0]), key);
      owners.set(o[0]!, (owners.get(o[0]!) ?? 0) + 1);
    }
    for (const m of members) assert.ok((owners.get(m) ?? 0) > 800, `${m} owns ${owners.get(m)} of 3000`);
  });

  it('a member leaving moves only the keys it owned; a member joining takes about 1/N', async () => {
    const three = await ring(members[0]!, members);
    const two = await ring(members[0]!, members.slice(0, 2));
    const four = await ring(members[0]!, [...members, '10.0.0.4:5000']);
    let movedOnLeave = 0;
    let movedOnJoin = 0;
    for (let i = 0; i < 3000; i++) {
      const key = `k${i}`;
      const before = three.owner(key);
      if (before !== members[2] && two.owner(key) !== before) movedOnLeave++;
      if (four.owner(key) !== before) {
        movedOnJoin++;
        assert.equal(four.owner(key), '10.0.0.4:5000', 'a key only ever moves to the new member');
      }
    }
    assert.equal(movedOnLeave, 0, 'keys of the members that stay do not move');
    assert.ok(movedOnJoin > 500 && movedOnJoin < 1000, `moved on join: ${movedOnJoin} of 3000`);
  });

  it('self is always a member; a peer marked down is skipped; a DNS failure keeps the last members', async () => {
    let answer: string[] | Error = ['10.0.0.2', '10.0.0.3'];
    const p = new Peers({ peers: { dns: 'mirror-peers.ns.svc', port: 5000 }, self: '10.0.0.1:5000', refreshMs: 60_000 }, async () => {
      if (answer instanceof Error) throw answer;
      return answer;
    });
    assert.equal(p.ready, false);
    await p.start();
    p.stop();
    assert.equal(p.ready, true);
    assert.deepEqual(p.members(), members);
    p.markDown('10.0.0.2:5000');
    assert.deepEqual(p.members(), ['10.0.0.1:5000', '10.0.0.3:5000']);
    p.markDown('10.0.0.1:5000');
    assert.ok(p.members().includes('10.0.0.1:5000'), 'never marks itself down');
    answer = new Error('SERVFAIL');
    await (p as unknown as { refresh(): Promise<void> }).refresh();
    assert.deepEqual(p.members(), ['10.0.0.1:5000', '10.0.0.3:5000'], 'kept through a DNS failure');
    assert.equal(p.snapshot().lastError, 'SERVFAIL');
  });
});

describe('cluster config', () => {
  const s3 = { bucket: 'cache', endpoint: 'http://127.0.0.1:7480' };
  const refusal = (doc: unknown, env: Record<string, string> = {}) => {
    try {
      parseConfig(doc, env);
    } catch (err) {
      return (err as Error).message;
    }
    return 'accepted';
  };

  it('takes dns + port or a static list, self from the file or MIRROR_CLUSTER_SELF', () => {
    const c = parseConfig({ storage: { s3 }, cluster: { peers: { dns: 'm-peers.ns.svc', port: 5000 }, self: '10.0.0.1:5000' } });
    assert.deepEqual(c.cluster, { peers: { dns: 'm-peers.ns.svc', port: 5000 }, self: '10.0.0.1:5000', refreshMs: 5000 });
    const e = parseConfig({ storage: { s3 }, cluster: { peers: { static: members } } }, { MIRROR_CLUSTER_SELF: '10.0.0.9:5000' });
    assert.equal(e.cluster?.self, '10.0.0.9:5000');
  });

  it('refuses a cluster without storage.s3, without self, with both sources, or with a bad peer', () => {
    assert.match(refusal({ cluster: { peers: { static: members }, self: '10.0.0.1:5000' } }), /cluster: needs storage\.s3/);
    assert.match(refusal({ storage: { s3 }, cluster: { peers: { static: members } } }), /cluster\.self/);
    assert.match(refusal({ storage: { s3 }, cluster: { peers: { static: members, dns: 'x' }, self: '10.0.0.1:5000' } }), /exclude each other/);
    assert.match(refusal({ storage: { s3 }, cluster: { peers: { static: ['nope'] }, self: '10.0.0.1:5000' } }), /static\[0\].*host:port/);
    assert.match(refusal({ storage: { s3 }, cluster: { peers: { dns: 'bad name!' }, self: '10.0.0.1:5000' } }), /not a DNS name/);
  });
});
