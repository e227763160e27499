/**
 * Which cells the matrix runs for a workflow, from the activities a clean run scheduled: the full
 * matrix kills the worker at every boundary (while each activity runs, and right after it
 * completed), the server at a few points, runs every peer fault and the duplicates; the CI slice
 * picks a few of those by a seed.
 */
import type { Boundary, Fault, ScheduledActivity } from './matrix.js';
import type { PeerFault } from './peer-faults.js';

/** Activities whose step must happen once (a server kill lands on each of them). */
const ONE_SHOT = new Set(['talosBootstrap', 'talosRecoverEtcd', 'pveRestore', 'packerBuild']);

/** `boundaries`: that many activity boundaries, evenly spread, instead of every one (a shorter matrix). */
export function fullPlan(
  activities: ScheduledActivity[],
  peers: PeerFault[],
  boundaries?: number,
  rerun = false,
): Fault[] {
  const faults: Fault[] = [];
  const picked = new Set(
    boundaries === undefined
      ? activities.map((_, at) => at)
      : Array.from({ length: boundaries }, (_, i) => Math.floor(((i + 0.5) * activities.length) / boundaries)),
  );
  const boundary = (at: number): Boundary => {
    const activity = activities[at]!.type;
    return { at, activity, occurrence: activities.slice(0, at).filter((a) => a.type === activity).length };
  };
  // The one-shot steps' boundaries always: they are where a kill costs the most.
  activities.forEach((a, at) => ONE_SHOT.has(a.type) && picked.add(at));
  activities.forEach((_, at) => {
    if (!picked.has(at)) return;
    const b = boundary(at);
    faults.push(
      { kind: 'worker-kill', boundary: b, when: 'during' },
      { kind: 'worker-kill', boundary: b, when: 'after' },
    );
  });
  const serverAt = new Set([0.25, 0.5, 0.75].map((q) => Math.floor(q * activities.length)));
  activities.forEach((a, at) => ONE_SHOT.has(a.type) && serverAt.add(at));
  for (const at of [...serverAt].sort((x, y) => x - y)) faults.push({ kind: 'server-kill', boundary: boundary(at) });
  for (const fault of peers) faults.push({ kind: 'peer', fault });
  faults.push({ kind: 'duplicate' });
  if (rerun) faults.push({ kind: 'rerun' });
  return faults;
}

/** mulberry32: a small seeded generator, so a seed reproduces the slice. */
export function seeded(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** `count` of `all` (faults of the full plan, workflows), picked by `random` (the CI slice). */
export function slicePlan<T>(all: T[], count: number, random: () => number): T[] {
  const pool = [...all];
  const picked: T[] = [];
  while (picked.length < count && pool.length > 0) picked.push(pool.splice(Math.floor(random() * pool.length), 1)[0]!);
  return picked;
}
