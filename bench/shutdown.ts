// Shutting a bench down must try every step even when one throws (a process already gone),
// then say what failed: a leaked RGW or upstream would skew the next run.
export function stepsCollectingErrors(): { attempt: (f: () => Promise<unknown>) => Promise<void>; errors: unknown[] } {
  const errors: unknown[] = [];
  const attempt = async (f: () => Promise<unknown>): Promise<void> => {
    try {
      await f();
    } catch (err) {
      errors.push(err);
    }
  };
  return { attempt, errors };
}
