// Manifest content negotiation, as registries do it. What a tag resolves to depends on the
// client's Accept header: distribution (and Docker Hub) answer a manifest list's tag with the
// list only when the Accept names the list's type (else with its linux/amd64 image), a schema
// 2 tag with a schema 1 conversion when the Accept lacks schema 2, and an OCI index or
// manifest with 404 when the Accept lacks its type. So the mirror keeps one tag mapping per
// *format class* of request, never one per tag:
//
//   index    the Accept names an OCI index or a Docker manifest list (every current client:
//            Docker, containerd, skopeo, crane; also no Accept and "*/*", for which the mirror
//            asks the upstream for every type: its best answer)
//   image    no list type, but an OCI manifest or Docker schema 2
//   schema1  neither (schema 1 only: the oldest clients)
//
// A class's mapping is always the upstream's answer to a request of that class whose Accept
// names every modern type of the class ("complete"). Another request of the class names a
// subset of them; under distribution's rules the upstream would give it that same manifest
// whenever the manifest's type is one it names (or a schema 1 manifest, which is what it gets
// whatever it names), so that is when the mapping serves it (servable()); otherwise the mirror
// passes the request through with its own Accept and records nothing.

export type FormatClass = 'index' | 'image' | 'schema1';
export const formatClasses: readonly FormatClass[] = ['index', 'image', 'schema1'];

export const manifestMediaTypes = {
  ociIndex: 'application/vnd.oci.image.index.v1+json',
  ociManifest: 'application/vnd.oci.image.manifest.v1+json',
  dockerList: 'application/vnd.docker.distribution.manifest.list.v2+json',
  dockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
  schema1Signed: 'application/vnd.docker.distribution.manifest.v1+prettyjws',
  schema1: 'application/vnd.docker.distribution.manifest.v1+json',
} as const;

const mt = manifestMediaTypes;

/** What the mirror asks for when the client did not say: every type it can pass through. */
export const defaultAccept = [mt.ociIndex, mt.ociManifest, mt.dockerList, mt.dockerManifest, mt.schema1Signed, mt.schema1].join(', ');

/** The Accept the mirror uses for a class when no client's Accept is at hand (revalidation). */
export const classAccept: Readonly<Record<FormatClass, string>> = {
  index: defaultAccept,
  image: [mt.ociManifest, mt.dockerManifest, mt.schema1Signed, mt.schema1].join(', '),
  schema1: [mt.schema1Signed, mt.schema1].join(', '),
};

const knownManifestTypes = new Set<string>(Object.values(mt));
const indexTypes = [mt.ociIndex, mt.dockerList];
const imageTypes = [mt.ociManifest, mt.dockerManifest];
const modernTypes = [...indexTypes, ...imageTypes];

const typeClass: Record<string, FormatClass> = {
  [mt.ociIndex]: 'index',
  [mt.dockerList]: 'index',
  [mt.ociManifest]: 'image',
  [mt.dockerManifest]: 'image',
  [mt.schema1Signed]: 'schema1',
  [mt.schema1]: 'schema1',
  // distribution registers schema 1 under plain application/json as well.
  'application/json': 'schema1',
};

function bare(mediaType: string): string {
  return mediaType.split(';')[0]!.trim().toLowerCase();
}

/** The class of a manifest's media type; undefined for a type that is none of these. */
export function mediaTypeClass(mediaType: string): FormatClass | undefined {
  return typeClass[bare(mediaType)];
}

/** The media types an Accept header names (parameters such as q dropped), lower-case. */
function namedTypes(accept: string | undefined): Set<string> {
  const out = new Set<string>();
  if (accept) for (const a of accept.split(',')) out.add(bare(a));
  out.delete('');
  return out;
}

/**
 * The manifest types the mirror asks the upstream for: those the client names, or, when it
 * names none (no header, "*\/*", application/json), all of them.
 */
function effectiveTypes(accept: string | undefined): Set<string> {
  const named = [...namedTypes(accept)].filter((t) => knownManifestTypes.has(t));
  return new Set(named.length > 0 ? named : knownManifestTypes);
}

export interface Negotiated {
  /** The format class of the request. */
  class: FormatClass;
  /** The Accept names every modern type of its class: the upstream's answer is the class's. */
  complete: boolean;
  /**
   * Names what the upstream's answer depends on: the class for a complete request, else the
   * class and the exact set of modern types named (for keys such as negative entries).
   */
  variant: string;
}

/** The class a request wants, decided from its Accept header alone. */
export function negotiate(accept: string | undefined): Negotiated {
  const types = effectiveTypes(accept);
  const named = modernTypes.filter((t) => types.has(t));
  const cls: FormatClass = indexTypes.some((t) => types.has(t)) ? 'index' : imageTypes.some((t) => types.has(t)) ? 'image' : 'schema1';
  const wanted = cls === 'index' ? modernTypes : cls === 'image' ? imageTypes : [];
  const complete = wanted.every((t) => types.has(t));
  return { class: cls, complete, variant: complete ? cls : `${cls}:${named.map(shortName).join('+')}` };
}

function shortName(type: string): string {
  return type === mt.ociIndex ? 'oci-index' : type === mt.ociManifest ? 'oci-manifest' : type === mt.dockerList ? 'docker-list' : 'docker-v2';
}

/** The class a request wants (negotiate(accept).class). */
export function wantedClass(accept: string | undefined): FormatClass {
  return negotiate(accept).class;
}

/**
 * Whether a manifest of this media type, the answer to a complete request of the client's
 * class, is also the upstream's answer to this client: a schema 1 manifest always is; a modern
 * type when the client's Accept names it (no header or "*\/*": every type); another type when
 * the Accept admits it literally or by "*\/*".
 */
export function servable(mediaType: string, accept: string | undefined): boolean {
  const type = bare(mediaType);
  if (mediaTypeClass(type) === 'schema1') return true;
  if (knownManifestTypes.has(type)) return effectiveTypes(accept).has(type);
  return acceptable(type, accept);
}

/**
 * What to ask the upstream for. A client that names manifest types gets exactly those; one
 * that names none (curl's and fetch's "*\/*", or no header) gets every type we pass through:
 * distribution answers "*\/*" for an OCI manifest with 404, not with the manifest.
 */
export function upstreamAccept(accept: string | undefined): string {
  if (!accept) return defaultAccept;
  return [...namedTypes(accept)].some((t) => knownManifestTypes.has(t)) ? accept : defaultAccept;
}

/** Whether a client's Accept header admits a media type (no header admits anything). */
export function acceptable(mediaType: string, accept: string | undefined): boolean {
  if (!accept) return true;
  const want = bare(mediaType);
  return [...namedTypes(accept)].some((t) => t === '*/*' || t === want);
}
