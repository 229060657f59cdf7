// Limits per broker client that aedes does not have, and how their refusals are logged: the
// subscription limit (broker.limits.maxSubscriptions) and episodes of refusals (a warning when
// one starts, one line with the count when it ends) for floods that would otherwise log a line
// per refusal or, logged once, never again.
import type { Client } from 'aedes';
import { subscriptionCount, subscriptionQoS } from './aedes-internals.js';

/** A client's subscription limit. */
interface SubscriptionLimit {
  max: number;
  /**
   * Filters granted but perhaps not added yet: aedes authorizes the filters of one SUBSCRIBE one
   * after the other and adds each right after (a clean session) or once the session store took
   * them (a persistent one, later). Cleared once the store had its turn.
   */
  granted: Set<string>;
  clearing: boolean;
  refused: (client: Client, filter: string) => void;
}

const subscriptionLimits = new WeakMap<Client, SubscriptionLimit>();

/** Puts a limit on the client's subscriptions; `refused` is told of each filter refused for it. */
export function limitSubscriptions(client: Client, max: number, refused: (client: Client, filter: string) => void): void {
  subscriptionLimits.set(client, { max, granted: new Set(), clearing: false, refused });
}

/**
 * Would a subscription to `filter` take the client over its limit (limitSubscriptions)? Called
 * from authorizeSubscribe for each filter before aedes adds it; true refuses it (SUBACK 0x80, the
 * client stays). A filter the client has already is a new subscription of nothing: never refused.
 */
export function overSubscriptionLimit(client: Client, filter: string): boolean {
  const limit = subscriptionLimits.get(client);
  if (!limit) return false;
  if (subscriptionQoS(client, filter) !== undefined || limit.granted.has(filter)) return false;
  let notYetAdded = 0;
  for (const granted of limit.granted) if (subscriptionQoS(client, granted) === undefined) notYetAdded++;
  if (subscriptionCount(client) + notYetAdded >= limit.max) {
    limit.refused(client, filter);
    return true;
  }
  limit.granted.add(filter);
  if (!limit.clearing) {
    limit.clearing = true;
    // After the session store's promise (microtasks run before this): each granted filter is in
    // client.subscriptions, or was refused by the ACL and never will be.
    setImmediate(() => {
      limit.granted.clear();
      limit.clearing = false;
    });
  }
  return false;
}

/** Episodes per key (an address, a limit): started by the first refusal, ended by `end` or a quiet period. */
export class Episodes<F extends Record<string, unknown> = Record<string, unknown>> {
  private readonly open = new Map<string, { count: number; timer: NodeJS.Timeout; fields: F }>();
  private readonly quietMs: number;
  private readonly started: (key: string, fields: F) => void;
  private readonly ended: (key: string, count: number, fields: F) => void;

  /**
   * `started` when a key's first refusal comes; `ended` with the episode's count when `end(key)`
   * is called or no refusal came for `quietMs`.
   */
  constructor(quietMs: number, started: (key: string, fields: F) => void, ended: (key: string, count: number, fields: F) => void) {
    this.quietMs = quietMs;
    this.started = started;
    this.ended = ended;
  }

  /** One refusal for `key` (`fields` describe the first one, for the log). */
  hit(key: string, fields: F): void {
    const episode = this.open.get(key);
    if (episode) {
      episode.count++;
      episode.timer.refresh();
      return;
    }
    // Bounded: a flood of keys ends the oldest episodes early.
    if (this.open.size >= 10_000) this.end(this.open.keys().next().value!);
    this.open.set(key, { count: 1, timer: setTimeout(() => this.end(key), this.quietMs).unref(), fields });
    this.started(key, fields);
  }

  /** Ends the episode of `key`, if one is open. */
  end(key: string): void {
    const episode = this.open.get(key);
    if (!episode) return;
    clearTimeout(episode.timer);
    this.open.delete(key);
    this.ended(key, episode.count, episode.fields);
  }

  /** Stops the timers; open episodes end silently. */
  close(): void {
    for (const episode of this.open.values()) clearTimeout(episode.timer);
    this.open.clear();
  }
}

const episodeTables = new WeakMap<object, Map<string, Episodes>>();

/** The episodes called `name` of `owner` (a broker), made by `create` the first time. */
export function episodesOf<F extends Record<string, unknown>>(owner: object, name: string, create: () => Episodes<F>): Episodes<F> {
  let table = episodeTables.get(owner);
  if (!table) episodeTables.set(owner, (table = new Map()));
  let episodes = table.get(name);
  if (!episodes) table.set(name, (episodes = create() as unknown as Episodes));
  return episodes as unknown as Episodes<F>;
}
