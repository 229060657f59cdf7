// Who may connect to the integrated broker and what they may do there: scrypt password hashes
// and ACL rules with MQTT wildcards and %u/%c substitution. Pure functions, tested by tables.
import { randomBytes, scrypt, timingSafeEqual } from 'node:crypto';
import type { Config } from '../config/schema.js';
import { topicMatches } from '../northbound/topics.js';

const SCRYPT = { N: 16384, r: 8, p: 1, keyLength: 32 } as const;

function scryptAsync(password: string, salt: Buffer, N: number, r: number, p: number, keyLength: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    scrypt(password, salt, keyLength, { N, r, p, maxmem: 256 * N * r }, (error, key) => (error ? reject(error) : resolve(key)));
  });
}

/** "scrypt$N$r$p$salt$hash" (base64), what `plc2mqtt passwd` prints and `users[].passwordHash` holds. */
export async function hashPassword(password: string): Promise<string> {
  const salt = randomBytes(16);
  const key = await scryptAsync(password, salt, SCRYPT.N, SCRYPT.r, SCRYPT.p, SCRYPT.keyLength);
  return `scrypt$${SCRYPT.N}$${SCRYPT.r}$${SCRYPT.p}$${salt.toString('base64')}$${key.toString('base64')}`;
}

let checks = 0;

/** How many password checks verifyPassword was asked for in this process (the login limit's tests count them). */
export function passwordChecks(): number {
  return checks;
}

export async function verifyPassword(password: string, hash: string): Promise<boolean> {
  checks++;
  const [scheme, N, r, p, salt, key] = hash.split('$');
  if (scheme !== 'scrypt' || !N || !r || !p || !salt || !key) return false;
  const expected = Buffer.from(key, 'base64');
  const saltBytes = Buffer.from(salt, 'base64');
  // A truncated hash (an empty key compares equal to anything) must never let everyone in.
  if (expected.length < 16 || saltBytes.length < 8) return false;
  try {
    const actual = await scryptAsync(password, saltBytes, Number(N), Number(r), Number(p), expected.length);
    return timingSafeEqual(actual, expected);
  } catch {
    return false;
  }
}

/**
 * Does the subscription filter `requested` ask for nothing beyond what `allowed` covers?
 * "plant/+/temp" is covered by "plant/#" but "#" is not covered by "plant/#": a wildcard
 * subscription must not reach topics the rule would deny one by one.
 */
export function filterCovers(allowed: string, requested: string): boolean {
  const allowedLevels = allowed.split('/');
  const requestedLevels = requested.split('/');
  for (let index = 0; index < allowedLevels.length; index++) {
    const level = allowedLevels[index]!;
    if (level === '#') return true;
    const wanted = requestedLevels[index];
    if (wanted === undefined || wanted === '#') return false;
    if (level === '+') continue;
    if (wanted === '+' || wanted !== level) return false;
  }
  return allowedLevels.length === requestedLevels.length;
}

export interface Identity {
  username: string | undefined;
  clientId: string;
}

type AclRule = NonNullable<Config['broker']['acl']>[number];

export class Acl {
  private readonly rules: readonly AclRule[] | undefined;

  constructor(rules: readonly AclRule[] | undefined) {
    this.rules = rules;
  }

  /**
   * Without rules everything is allowed but $SYS; with rules, a topic a deny of a rule for this client
   * matches is refused, otherwise what a rule for it allows is allowed.
   */
  mayPublish(who: Identity, topic: string): boolean {
    return this.check(who, 'publish', (pattern) => topicMatches(pattern, topic), topic);
  }

  /**
   * A filter (or, for a delivery, a topic) entirely inside a denied filter is refused; one that
   * only overlaps it is not (its deliveries are checked one by one, with the topic as filter).
   */
  maySubscribe(who: Identity, filter: string): boolean {
    return this.check(who, 'subscribe', (pattern) => filterCovers(pattern, filter), filter);
  }

  /** `matches`: does this allow or deny pattern cover the topic or filter asked for. */
  private check(who: Identity, action: 'publish' | 'subscribe', matches: (pattern: string) => boolean, asked: string): boolean {
    // $SYS (client ids, subscriptions, broker figures) only for a rule that names it: never
    // without rules, and no wildcard reaches it (as wildcards at the first level don't match "$"
    // topics in MQTT, [MQTT-4.7.2-1]).
    const sys = isSys(asked);
    if (!this.rules) return !sys;
    const applies = (rule: AclRule) => rule.user === undefined || rule.user === who.username;
    // Denies first, from every rule for this client: one topic inside an allowed wildcard can be refused.
    for (const rule of this.rules) {
      if (applies(rule) && rule.deny?.[action].some(matches)) return false;
    }
    for (const rule of this.rules) {
      if (!applies(rule)) continue;
      for (const pattern of rule[action]) {
        // A %u rule can't match an anonymous client: there is no username to put in.
        if (pattern.includes('%u') && who.username === undefined) continue;
        if (sys && !isSys(pattern)) continue;
        if (matches(substitute(pattern, who))) return true;
      }
    }
    return false;
  }
}

/** Is this topic or filter in the broker's $SYS tree? */
export function isSys(topic: string): boolean {
  return topic === '$SYS' || topic.startsWith('$SYS/');
}

/** %u → username, %c → client id; a value containing / + # would widen the pattern, so it can't match. */
function substitute(pattern: string, who: Identity): string {
  const safe = (value: string) => (/[/+#]/.test(value) ? '\u0000' : value);
  return pattern.replaceAll('%u', safe(who.username ?? '')).replaceAll('%c', safe(who.clientId));
}
