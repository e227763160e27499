/**
 * Lookups (or requests) of one key each, answered by calls for many: a key asked for while no
 * batch is out goes out at once (with whatever else was asked in the same tick); keys asked for
 * while batches are out wait for the next one. A lone caller pays nothing; hundreds of callers (burst pools
 * polling their instances on one worker) share a few calls, within an API's request rate.
 * `lookupMany` answers each key with its value, or with an Error for that key alone; a key it
 * leaves out is answered undefined; a rejection fails every key of the batch.
 */
export type BatchedLookup<K, V> = (key: K) => Promise<V | undefined>;

interface Waiter<V> {
  resolve: (value: V | undefined) => void;
  reject: (err: unknown) => void;
}

export function batchedLookup<K, V>(
  lookupMany: (keys: K[]) => Promise<Map<K, V | Error>>,
  opts: { maxBatch: number },
): BatchedLookup<K, V> {
  const waiting = new Map<K, Array<Waiter<V>>>();
  let inFlight = 0;
  let scheduled = false;

  function send(): void {
    const batch = new Map([...waiting].slice(0, opts.maxBatch));
    for (const key of batch.keys()) waiting.delete(key);
    inFlight++;
    void lookupMany([...batch.keys()])
      .then(
        (found) => {
          for (const [key, waiters] of batch) {
            const answer = found.get(key);
            for (const w of waiters) {
              if (answer instanceof Error) w.reject(answer);
              else w.resolve(answer);
            }
          }
        },
        (err: unknown) => {
          for (const waiters of batch.values()) for (const w of waiters) w.reject(err);
        },
      )
      .finally(() => {
        inFlight--;
        flush();
      });
  }

  /** One batch when none is out; more only when the waiting keys fill whole batches. */
  function flush(): void {
    if (waiting.size > 0 && inFlight === 0) send();
    while (waiting.size >= opts.maxBatch) send();
  }

  return (key) =>
    new Promise<V | undefined>((resolve, reject) => {
      const waiters = waiting.get(key);
      if (waiters) waiters.push({ resolve, reject });
      else waiting.set(key, [{ resolve, reject }]);
      if (!scheduled) {
        scheduled = true;
        queueMicrotask(() => {
          scheduled = false;
          flush();
        });
      }
    });
}
