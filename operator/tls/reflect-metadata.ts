// The few Reflect metadata functions tsyringe (a dependency of @peculiar/x509) checks for at
// load time and calls from its decorators. A stand-in for the reflect-metadata package, which
// is not a dependency: metadata per target in a WeakMap (bounded by the classes that exist),
// looked up along the prototype chain as the proposal has it. Imported once, before x509.
type Key = unknown;
const store = new WeakMap<object, Map<Key, unknown>>();

function own(target: object, create: boolean): Map<Key, unknown> | undefined {
  let m = store.get(target);
  if (!m && create) store.set(target, (m = new Map()));
  return m;
}

const R = Reflect as unknown as Record<string, unknown>;
if (typeof R.getMetadata !== 'function') {
  R.defineMetadata = (key: Key, value: unknown, target: object) => void own(target, true)!.set(key, value);
  R.getOwnMetadata = (key: Key, target: object) => own(target, false)?.get(key);
  R.hasOwnMetadata = (key: Key, target: object) => own(target, false)?.has(key) ?? false;
  R.getMetadata = (key: Key, target: object) => {
    for (let t: object | null = target; t; t = Object.getPrototypeOf(t)) {
      const m = own(t, false);
      if (m?.has(key)) return m.get(key);
    }
    return undefined;
  };
  R.hasMetadata = (key: Key, target: object) => (R.getMetadata as (k: Key, t: object) => unknown)(key, target) !== undefined;
  R.metadata = (key: Key, value: unknown) => (target: object) => void own(target, true)!.set(key, value);
}
export {};
