// Primary host awareness (Sparkplug 3.0): the edge node publishes its births only while its
// primary host application says it is online, on the retained topic spBv1.0/STATE/<host id>
// with the JSON payload {"online": true|false, "timestamp": <ms>}.
//
// The timestamp orders the host's messages: a retained or late OFFLINE from an earlier host
// session (its will) must not take down a node that already saw the host come back, and an
// ONLINE older than one already seen is stale [tck-id-operational-behavior-edge-node-birth-sequence-wait],
// [tck-id-operational-behavior-edge-node-termination-host-offline-timestamp].

export const STATE_PREFIX = 'spBv1.0/STATE/';

export type HostVerdict =
  /** The host is online (newer than anything seen): births may go out. */
  | 'online'
  /** The host went offline: disconnect (the will tells the world), keep buffering, wait for it. */
  | 'offline'
  /** Nothing changes: another host, an older message, or one that is not a STATE payload. */
  | 'ignore';

export interface HostState {
  online: boolean;
  timestamp: number;
}

/** A 3.0 STATE payload, or why it is not one. */
export function parseState(payload: Buffer): HostState | { problem: string } {
  let parsed: unknown;
  try {
    parsed = JSON.parse(payload.toString('utf8'));
  } catch {
    return { problem: `not JSON: ${JSON.stringify(payload.subarray(0, 40).toString('utf8'))}` };
  }
  if (parsed === null || typeof parsed !== 'object') return { problem: 'not a JSON object' };
  const { online, timestamp } = parsed as { online?: unknown; timestamp?: unknown };
  if (typeof online !== 'boolean') return { problem: '"online" is not a boolean' };
  if (typeof timestamp !== 'number' || !Number.isFinite(timestamp)) return { problem: '"timestamp" is not a number' };
  return { online, timestamp };
}

/** What the node knows of its primary host, across reconnects of the node (the host's clock orders its messages). */
export class PrimaryHost {
  readonly hostId: string;
  readonly topic: string;
  private lastSeen: number | undefined;
  private onlineAt: number | undefined;
  private online = false;

  constructor(hostId: string) {
    this.hostId = hostId;
    this.topic = STATE_PREFIX + hostId;
  }

  /**
   * A new connection of the node: its births wait for the host's STATE again (the retained one
   * arrives with the subscription), since the host may have gone while the node was away. What
   * was seen of the host's timestamps stays.
   */
  newSession(): void {
    this.online = false;
  }

  /** True while the host's last word is "online". */
  get isOnline(): boolean {
    return this.online;
  }

  /** One STATE message on `topic`: what it means for the node. */
  observe(topic: string, payload: Buffer): HostVerdict {
    // Only the configured host counts [tck-id-operational-behavior-edge-node-birth-sequence-wait-id].
    if (topic !== this.topic) return 'ignore';
    const state = parseState(payload);
    if ('problem' in state) return 'ignore';
    if (state.online) {
      // The first STATE is taken as it is; later ones only when not older than the last seen.
      if (this.lastSeen !== undefined && state.timestamp < this.lastSeen) return 'ignore';
      this.lastSeen = state.timestamp;
      this.onlineAt = state.timestamp;
      if (this.online) return 'ignore';
      this.online = true;
      return 'online';
    }
    // An OFFLINE older than the ONLINE the node acted on is a late will of an earlier host session.
    if (this.onlineAt !== undefined && state.timestamp < this.onlineAt) return 'ignore';
    this.lastSeen = Math.max(this.lastSeen ?? state.timestamp, state.timestamp);
    if (!this.online) return 'ignore';
    this.online = false;
    return 'offline';
  }
}
