// Content negotiation's pure parts: the format class of a manifest media type, the class (and
// completeness) a request's Accept asks for, and when a class's mapping also answers a client.
// The Accept headers are those real clients send (checked against their sources and the
// rig): Docker 20.10 (one Accept line per type, in map order; Node joins the lines with ", "),
// containerd 1.6, skopeo 1.9 (containers/image), crane (go-containerregistry), curl.

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  classAccept,
  defaultAccept,
  manifestMediaTypes as mt,
  mediaTypeClass,
  negotiate,
  servable,
  upstreamAccept,
  wantedClass,
} from '../../mirror/manifest-class.js';

const clientAccepts: Record<string, string | undefined> = {
  docker: [mt.schema1Signed, 'application/json', mt.dockerManifest, mt.dockerList, mt.ociIndex, mt.ociManifest].join(', '),
  containerd: [mt.dockerManifest, mt.dockerList, mt.ociManifest, mt.ociIndex, '*/*'].join(', '),
  skopeo: [mt.ociManifest, mt.dockerManifest, mt.schema1Signed, mt.schema1, mt.dockerList, mt.ociIndex].join(', '),
  crane: [mt.dockerManifest, mt.ociManifest, mt.schema1, mt.schema1Signed, mt.dockerList, mt.ociIndex].join(','),
  curl: '*/*',
  none: undefined,
};

describe('manifest format classes', () => {
  it('classifies media types (parameters and case ignored)', () => {
    assert.equal(mediaTypeClass(mt.ociIndex), 'index');
    assert.equal(mediaTypeClass(mt.dockerList), 'index');
    assert.equal(mediaTypeClass(mt.ociManifest), 'image');
    assert.equal(mediaTypeClass(`${mt.dockerManifest}; charset=utf-8`), 'image');
    assert.equal(mediaTypeClass(mt.schema1Signed), 'schema1');
    assert.equal(mediaTypeClass(mt.schema1), 'schema1');
    assert.equal(mediaTypeClass('application/json'), 'schema1');
    assert.equal(mediaTypeClass('APPLICATION/VND.OCI.IMAGE.INDEX.V1+JSON'), 'index');
    assert.equal(mediaTypeClass('application/vnd.example.artifact+json'), undefined);
  });

  it('every current client, no Accept and */* want the index class, completely', () => {
    for (const [client, accept] of Object.entries(clientAccepts)) {
      assert.deepEqual(negotiate(accept), { class: 'index', complete: true, variant: 'index' }, client);
    }
    // Docker's lines arrive in any order; q values are ignored as registries ignore them.
    const shuffled = [mt.ociManifest, mt.dockerList, 'application/json', mt.ociIndex, mt.schema1Signed, mt.dockerManifest].join(',');
    assert.equal(negotiate(shuffled).complete, true);
    assert.equal(wantedClass(`${mt.ociIndex};q=0.5, ${mt.dockerList}, ${mt.ociManifest}, ${mt.dockerManifest}`), 'index');
    assert.equal(wantedClass('application/json'), 'index', 'names no manifest type: asks for all');
    assert.equal(wantedClass(';;;,,,'), 'index');
  });

  it('schema 1 only is the schema1 class; schema 2 or OCI manifest without a list type is image', () => {
    assert.deepEqual(negotiate(mt.schema1Signed), { class: 'schema1', complete: true, variant: 'schema1' });
    assert.deepEqual(negotiate(`${mt.schema1Signed}, application/json, */*`), { class: 'schema1', complete: true, variant: 'schema1' });
    assert.deepEqual(negotiate(`${mt.ociManifest}, ${mt.dockerManifest}, ${mt.schema1Signed}`), { class: 'image', complete: true, variant: 'image' });
    // Docker 1.10 - 17.x: schema 2 and schema 1, no OCI.
    assert.deepEqual(negotiate(`${mt.dockerManifest}, ${mt.schema1Signed}, application/json`), { class: 'image', complete: false, variant: 'image:docker-v2' });
    assert.deepEqual(negotiate(mt.dockerManifest), { class: 'image', complete: false, variant: 'image:docker-v2' });
  });

  it('partial index Accepts are the index class, not complete, with their own variant', () => {
    assert.deepEqual(negotiate(`${mt.ociIndex}, ${mt.ociManifest}`), { class: 'index', complete: false, variant: 'index:oci-index+oci-manifest' });
    assert.deepEqual(negotiate(`${mt.dockerList}, ${mt.dockerManifest}`), { class: 'index', complete: false, variant: 'index:docker-list+docker-v2' });
  });

  it("a class's mapping serves a client when the upstream would answer it the same", () => {
    // Complete clients: any modern type.
    for (const type of [mt.ociIndex, mt.dockerList, mt.ociManifest, mt.dockerManifest, mt.schema1Signed]) {
      for (const [client, accept] of Object.entries(clientAccepts)) assert.ok(servable(type, accept), `${client} ${type}`);
    }
    // A schema 1 answer is what every client of the class gets, whatever it names.
    assert.ok(servable(mt.schema1Signed, mt.dockerManifest));
    // Partial clients: only the types they name (*/* does not widen named manifest types).
    assert.ok(!servable(mt.ociManifest, `${mt.dockerManifest}, ${mt.schema1Signed}`));
    assert.ok(!servable(mt.ociManifest, `${mt.dockerManifest}, */*`));
    assert.ok(servable(mt.dockerManifest, `${mt.dockerManifest}, ${mt.schema1Signed}`));
    assert.ok(!servable(mt.dockerList, `${mt.ociIndex}, ${mt.ociManifest}`));
    // Unknown types: by the Accept literally or */*.
    assert.ok(servable('application/vnd.example+json', '*/*'));
    assert.ok(servable('application/vnd.example+json', undefined));
    assert.ok(!servable('application/vnd.example+json', mt.dockerManifest));
  });

  it('asks the upstream with the client Accept, or every type when it names none', () => {
    assert.equal(upstreamAccept(undefined), defaultAccept);
    assert.equal(upstreamAccept('*/*'), defaultAccept);
    assert.equal(upstreamAccept(clientAccepts.docker), clientAccepts.docker);
    assert.equal(classAccept.index, defaultAccept);
    for (const c of ['index', 'image', 'schema1'] as const) {
      assert.deepEqual(negotiate(classAccept[c]), { class: c, complete: true, variant: c }, c);
    }
  });
});
