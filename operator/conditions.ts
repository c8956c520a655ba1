// Status conditions as a list keyed by type (cert-manager style). lastTransitionTime moves
// only when the status flips, so rewriting the same condition is not a change. Pure.
import type { Condition, ConditionStatus, ConditionType } from './types.js';

export interface ConditionInput {
  type: ConditionType;
  status: ConditionStatus;
  reason: string;
  message: string;
}

export const CONDITION_ORDER: ConditionType[] = ['Ready', 'Progressing', 'Degraded'];

export function setConditions(
  previous: Condition[] | undefined,
  next: ConditionInput[],
  generation: number | undefined,
  now: Date,
): Condition[] {
  const byType = new Map((previous ?? []).map((c) => [c.type, c]));
  for (const n of next) {
    const old = byType.get(n.type);
    const lastTransitionTime = old && old.status === n.status ? old.lastTransitionTime : now.toISOString();
    const c: Condition = { ...n, lastTransitionTime };
    if (generation !== undefined) c.observedGeneration = generation;
    byType.set(n.type, c);
  }
  return [...byType.values()].sort((a, b) => rank(a.type) - rank(b.type));
}

function rank(t: string): number {
  const i = CONDITION_ORDER.indexOf(t as ConditionType);
  return i < 0 ? CONDITION_ORDER.length : i;
}

export function findCondition(conds: Condition[] | undefined, type: ConditionType): Condition | undefined {
  return conds?.find((c) => c.type === type);
}
