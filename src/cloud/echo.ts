// Echo suppression for MQTT 3.1.1: a gateway that both sends to and receives from a cloud topic
// gets its own messages back (3.1.1 has no "No Local"), and a forwarded command would be written
// twice. Each message sent on such a topic is remembered (topic + payload hash) for ECHO_TTL_MS,
// and the first cloud message that matches it is taken as its echo. MQTT 5 uses No Local instead.
import { createHash } from 'node:crypto';
import type { BridgeRules } from './bridge-rules.js';
import type { StoredMessage } from './buffer.js';

/** How long a message sent to the cloud is recognized when the cloud sends it back. */
const ECHO_TTL_MS = 60_000;
const MAX_ECHOES = 10_000;
/** Cloud topics remembered as taken back by a receive rule or not (a cache: rules are matched once). */
const MAX_KNOWN_TOPICS = 100_000;

export class EchoFilter {
  private readonly rules: BridgeRules;
  /** False with MQTT 5 (No Local) or without receive rules: nothing comes back. */
  private readonly enabled: boolean;
  private readonly now: () => number;
  /** Messages sent on topics the receive rules also take back, by topic and payload hash. */
  private readonly echoes = new Map<string, { count: number; expires: number }>();
  /** Ids already remembered: a resend after a reconnect is the same message, and comes back at most once more. */
  private readonly sentIds = new Set<number>();
  private readonly ownTopics = new Map<string, boolean>();

  constructor(rules: BridgeRules, protocolVersion: 4 | 5, now: () => number = Date.now) {
    this.rules = rules;
    this.enabled = protocolVersion !== 5 && rules.receives;
    this.now = now;
  }

  /** Takes over what the filter of the uplink this one replaces still expects (a reload). */
  continueFrom(previous: EchoFilter): void {
    for (const [key, echo] of previous.echoes) this.echoes.set(key, { ...echo });
    for (const id of previous.sentIds) this.sentIds.add(id);
  }

  /** A message is about to be sent to the cloud. */
  sending(message: Pick<StoredMessage, 'id' | 'topic' | 'payload'>): void {
    if (!this.enabled || !this.receivesOwn(message.topic) || this.sentIds.has(message.id)) return;
    if (this.sentIds.size >= MAX_ECHOES) this.sentIds.delete(this.sentIds.values().next().value!);
    this.sentIds.add(message.id);
    this.expect(message.topic, message.payload);
  }

  /** True when a cloud message is one this gateway sent itself within ECHO_TTL_MS (each send is taken back once). */
  isEcho(topic: string, payload: Buffer): boolean {
    if (this.echoes.size === 0) return false;
    const key = echoKey(topic, payload);
    const echo = this.echoes.get(key);
    if (echo === undefined) return false;
    if (--echo.count === 0) this.echoes.delete(key);
    return echo.expires >= this.now();
  }

  private receivesOwn(cloudTopic: string): boolean {
    let known = this.ownTopics.get(cloudTopic);
    if (known === undefined) {
      known = this.rules.localTopic(cloudTopic) !== undefined;
      if (this.ownTopics.size > MAX_KNOWN_TOPICS) this.ownTopics.clear();
      this.ownTopics.set(cloudTopic, known);
    }
    return known;
  }

  private expect(topic: string, payload: Buffer): void {
    const key = echoKey(topic, payload);
    const expires = this.now() + ECHO_TTL_MS;
    const echo = this.echoes.get(key);
    if (echo) {
      // The same command twice (a button pressed twice): both come back.
      echo.count++;
      echo.expires = expires;
      return;
    }
    if (this.echoes.size >= MAX_ECHOES) {
      // Expired entries first; if all are current, the oldest ones (Map order is insertion order).
      const now = this.now();
      for (const [old, entry] of this.echoes) if (entry.expires < now) this.echoes.delete(old);
      for (const old of this.echoes.keys()) {
        if (this.echoes.size < MAX_ECHOES) break;
        this.echoes.delete(old);
      }
    }
    this.echoes.set(key, { count: 1, expires });
  }
}

function echoKey(topic: string, payload: Buffer): string {
  return `${topic}\u0000${createHash('sha1').update(payload).digest('base64')}`;
}
