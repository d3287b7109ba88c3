/**
 * The cluster-wide change feed: every service that changes a resource (a VM, a host, a network,
 * a pool, a volume, an operation, a migration) publishes one line here, and GET /v1/events
 * streams what it may show to each caller (docs: /work/shared EVENTS-CONTRACT, README "Live
 * events"). Publishing is synchronous and cheap: the resource as the API shows it is built
 * later, once per event, and bursts of updates of one resource become one event. Events waiting
 * together are built together: a type with a batch describer (VMs, operations) builds all of
 * them in a few queries, which is what keeps a burst of creates from paying a view per event.
 *
 * The feed keeps the last `capacity` events in a ring, numbered from 1 in an epoch that is new
 * at every start of the control plane: a client that reconnects with the id of its last event
 * gets exactly what it missed, or `reset` when that is no longer known.
 */
import type { Db } from '../state/database.ts';

export const CHANGE_TYPES = ['vm', 'host', 'network', 'pool', 'volume', 'operation', 'migration', 'desktop', 'desktop-pool', 'backup-schedule'] as const;
export type ChangeType = (typeof CHANGE_TYPES)[number];
export type ChangeAction = 'created' | 'updated' | 'deleted';

/** A project as events name it (id for authorization, name for the client). */
export interface ChangeProject {
  id: string;
  name: string;
}

/** One event as the stream sends it (`data:`). */
export interface ChangeEvent {
  seq: number;
  time: string;
  type: ChangeType;
  action: ChangeAction;
  id: string;
  name: string;
  /** The project of a project resource; null for platform resources (hosts, pools). */
  project: string | null;
  /** The resource as the API's GET shows it; absent when deleted. */
  resource?: unknown;
}

/** An event with what deciding who may see it needs. */
export interface RecordedChange {
  event: ChangeEvent;
  /** The resource's project, or null for a platform resource (or a platform operation). */
  project: ChangeProject | null;
  /** Users (ids) who see this event without the read permission: a desktop's holder, and the one it was just taken from. */
  users?: readonly string[];
}

/** How one type's resource is seen when its event is built: undefined when it is gone. */
export type ResourceDescriber = (
  id: string,
) => Promise<{ name: string; project: ChangeProject | null; resource: unknown; users?: readonly string[] } | undefined>;

/** A resource as its event shows it. */
export type DescribedResource = NonNullable<Awaited<ReturnType<ResourceDescriber>>>;

/** How many resources of one type are built at once: the ids of those still there, with their views. */
export type BatchDescriber = (ids: readonly string[]) => Promise<Map<string, DescribedResource>>;

/** What a publisher may know already: it names a resource whose view is gone (deleted). */
export interface ChangeHint {
  name?: string;
  projectId?: string | null;
  /** Users (ids) who see this event besides those the describer names (one who just lost the resource). */
  users?: readonly string[];
}

export interface ChangeFeedOptions {
  /** How many events the ring keeps for reconnecting clients. Default 10,000. */
  capacity?: number;
  /** Updates of one resource within this window become one event. Default 250 ms. */
  coalesceMs?: number;
}

/** Where a reconnecting client resumes: the events it missed, or a reset with its reason. */
export type ResumePoint = { events: RecordedChange[] } | { reset: string };

const EVENT_ID = /^([a-z0-9]{1,32})-(\d{1,15})$/;
/** Events built in one batch at most (a batch describer's ids). */
const BATCH_MAX = 500;

/** A change waiting to be built into its event. */
interface QueuedChange {
  type: ChangeType;
  action: ChangeAction;
  id: string;
  hint: ChangeHint;
  time: string;
}
/** How many resources the feed remembers the name and project of (for their deletes). */
const MAX_KNOWN = 100_000;

export class ChangeFeed {
  /** New at every start: ids of an earlier control plane never resume here. */
  readonly epoch = `${Date.now().toString(36)}${Math.floor(Math.random() * 36 ** 4).toString(36)}`;
  readonly #db: Db;
  readonly #capacity: number;
  readonly #coalesceMs: number;
  readonly #ring: RecordedChange[] = [];
  #lastSeq = 0;
  readonly #describers = new Map<ChangeType, BatchDescriber>();
  /** Updates waiting for the end of their coalescing window, by `type:id`. */
  readonly #pending = new Map<string, { timer: NodeJS.Timeout; hint: ChangeHint }>();
  /** Name and project of every resource described since the start, so a delete can name it. */
  readonly #known = new Map<string, { name: string; project: ChangeProject | null }>();
  readonly #projectNames = new Map<string, string>();
  readonly #listeners = new Set<(change: RecordedChange) => void>();
  /** Changes waiting to be built, in publish order: events go out in this order, so seq order is publish order. */
  readonly #queue: QueuedChange[] = [];
  /** The run building the queue, while one runs. */
  #draining: Promise<void> | undefined;

  constructor(db: Db, options: ChangeFeedOptions = {}) {
    this.#db = db;
    this.#capacity = options.capacity ?? 10_000;
    this.#coalesceMs = options.coalesceMs ?? 250;
  }

  /** Sets how resources of `type` are built into events, one at a time (the composition root and the pool routes do). */
  describe(type: ChangeType, describer: ResourceDescriber): void {
    this.#describers.set(type, async (ids) => {
      const described = new Map<string, DescribedResource>();
      for (const id of ids) {
        const one = await describer(id).catch(() => undefined);
        if (one) described.set(id, one);
      }
      return described;
    });
  }

  /** Sets how resources of `type` are built into events, many at once (those with many events a second). */
  describeMany(type: ChangeType, describer: BatchDescriber): void {
    this.#describers.set(type, describer);
  }

  /**
   * Records that a resource changed. Returns at once: an update waits for the end of its
   * coalescing window (later updates of the same resource in it add nothing); a create or a
   * delete goes out now, and a delete drops the update still waiting.
   */
  publish(type: ChangeType, action: ChangeAction, id: string, hint: ChangeHint = {}): void {
    const key = `${type}:${id}`;
    const waiting = this.#pending.get(key);
    // The users named by any of the coalesced updates see the one event.
    const users = [...(waiting?.hint.users ?? []), ...(hint.users ?? [])];
    const merged = users.length > 0 ? { ...hint, users } : hint;
    if (action === 'updated') {
      if (waiting) {
        waiting.hint = { ...waiting.hint, ...(users.length > 0 ? { users } : {}) };
        return;
      }
      const entry = {
        hint: merged,
        timer: setTimeout(() => {
          this.#pending.delete(key);
          this.#enqueue(type, action, id, entry.hint);
        }, this.#coalesceMs),
      };
      entry.timer.unref();
      this.#pending.set(key, entry);
      return;
    }
    clearTimeout(waiting?.timer);
    this.#pending.delete(key);
    this.#enqueue(type, action, id, merged);
  }

  /** Calls `listener` with every event from now on; returns the function that stops it. */
  subscribe(listener: (change: RecordedChange) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /** The id the stream sends with an event. */
  eventId(seq: number): string {
    return `${this.epoch}-${seq}`;
  }

  /** The id of the latest event (a client that starts now resumes from it). */
  get lastEventId(): string {
    return this.eventId(this.#lastSeq);
  }

  /** The events after `lastEventId`, or why they are not known any more. */
  resumeAfter(lastEventId: string): ResumePoint {
    const match = EVENT_ID.exec(lastEventId);
    if (!match) return { reset: `${lastEventId.slice(0, 64)} is not an event id of this stream` };
    if (match[1] !== this.epoch) return { reset: 'The control plane restarted since that event' };
    const seq = Number(match[2]);
    if (seq > this.#lastSeq) return { reset: `Event ${seq} was never sent (the last is ${this.#lastSeq})` };
    const oldest = this.#ring[0]?.event.seq ?? this.#lastSeq + 1;
    if (seq < oldest - 1) return { reset: `Events after ${seq} are no longer kept (the oldest kept is ${oldest})` };
    return { events: this.#ring.slice(seq - oldest + 1) };
  }

  /** Resolves once every event published so far is built and sent (tests, shutdown). */
  async settled(): Promise<void> {
    while (this.#pending.size > 0) await new Promise((resolve) => setTimeout(resolve, this.#coalesceMs / 2));
    while (this.#draining) await this.#draining;
  }

  #enqueue(type: ChangeType, action: ChangeAction, id: string, hint: ChangeHint): void {
    this.#queue.push({ type, action, id, hint, time: new Date().toISOString() });
    // The build starts on the next turn, so what one burst publishes is built together.
    if (!this.#draining) this.#draining = new Promise((resolve) => setImmediate(resolve)).then(() => this.#drain());
  }

  async #drain(): Promise<void> {
    try {
      while (this.#queue.length > 0) {
        const batch = this.#queue.splice(0, BATCH_MAX);
        const described = await this.#describeAll(batch);
        for (const change of batch) await this.#emit(change, described.get(`${change.type}:${change.id}`));
      }
    } finally {
      this.#draining = undefined;
    }
    // Published while the last event went out, after the loop had looked.
    if (this.#queue.length > 0 && !this.#draining) this.#draining = this.#drain();
  }

  /** The views of every resource in `batch` that is not deleted, by `type:id`: one describer call per type. */
  async #describeAll(batch: readonly QueuedChange[]): Promise<Map<string, DescribedResource>> {
    const idsByType = new Map<ChangeType, Set<string>>();
    for (const change of batch) {
      if (change.action === 'deleted') continue;
      const ids = idsByType.get(change.type) ?? new Set<string>();
      idsByType.set(change.type, ids.add(change.id));
    }
    const described = new Map<string, DescribedResource>();
    for (const [type, ids] of idsByType) {
      const views = await this.#describers
        .get(type)?.([...ids])
        .catch(() => undefined);
      for (const [id, view] of views ?? []) described.set(`${type}:${id}`, view);
    }
    return described;
  }

  async #emit({ type, action, id, hint, time }: QueuedChange, described: DescribedResource | undefined): Promise<void> {
    const key = `${type}:${id}`;
    // An update of something deleted meanwhile says nothing the delete will not say.
    if (action !== 'deleted' && !described) return;
    const known = action === 'deleted' ? this.#known.get(key) : described;
    const project = known ? known.project : await this.#projectOf(hint.projectId ?? null);
    this.#known.delete(key);
    if (described) {
      // Most recently described last; operations are never deleted, so the oldest make room.
      this.#known.set(key, { name: described.name, project: described.project });
      if (this.#known.size > MAX_KNOWN) this.#known.delete(this.#known.keys().next().value!);
    }
    const event: ChangeEvent = {
      seq: this.#lastSeq + 1,
      time,
      type,
      action,
      id,
      name: known?.name ?? hint.name ?? id,
      project: project?.name ?? null,
      ...(described ? { resource: described.resource } : {}),
    };
    this.#lastSeq = event.seq;
    const users = [...(described?.users ?? []), ...(hint.users ?? [])];
    const change: RecordedChange = { event, project, ...(users.length > 0 ? { users: [...new Set(users)] } : {}) };
    this.#ring.push(change);
    if (this.#ring.length > this.#capacity) this.#ring.shift();
    for (const listener of this.#listeners) {
      try {
        listener(change);
      } catch {
        // One listener's failure is its own: the others, and the events after, still go out.
      }
    }
  }

  async #projectOf(projectId: string | null): Promise<ChangeProject | null> {
    if (!projectId) return null;
    let name = this.#projectNames.get(projectId);
    if (!name) {
      name = (await this.#db.selectFrom('projects').select('name').where('id', '=', projectId).executeTakeFirst())?.name ?? projectId;
      this.#projectNames.set(projectId, name);
    }
    return { id: projectId, name };
  }
}

const feeds = new WeakMap<Db, ChangeFeed>();

/**
 * The change feed of the control plane over `db`: one per database, so that every service that
 * writes the state publishes with one line and no new constructor argument.
 */
export function changeFeedOf(db: Db): ChangeFeed {
  let feed = feeds.get(db);
  if (!feed) {
    feed = new ChangeFeed(db);
    feeds.set(db, feed);
  }
  return feed;
}

/** Publishes a change of a resource into the feed of `db` (see ChangeFeed.publish). */
export function publishChange(db: Db, type: ChangeType, action: ChangeAction, id: string, hint?: ChangeHint): void {
  changeFeedOf(db).publish(type, action, id, hint);
}
