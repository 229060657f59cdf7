// Failed logins limited per remote address (the web console's logins, checked against the scrypt
// hashes of broker.users): each costs an scrypt check (~35 ms and 16 MB), so a flood of wrong
// passwords would otherwise delay real logins and eat memory. An attempt counts as a failure before its check (attempts sent
// at once are limited too) and a success takes back only its own entry (logging in as oneself
// never clears the failures of guesses at someone else's password). At most a few checks run at
// once. Addresses count as they are, IPv4-mapped IPv6 as IPv4, IPv6 by its /64.
import { randomBytes } from 'node:crypto';

/** Failed logins allowed per address within the window; then refused until the oldest leaves it. */
export const LOGIN_FAILURES = 5;
const FAILURE_WINDOW_MS = 5 * 60_000;
/** Addresses remembered at most; the oldest are forgotten first (a flood of addresses costs bounded memory). */
const MAX_ADDRESSES = 10_000;
/** Password checks running at once; more logins are refused until one ends. */
const MAX_CHECKS_IN_FLIGHT = 2;

/**
 * Checked when the user does not exist (or may not log in here), so such a login costs the same
 * time as a wrong password: the answer's timing tells nothing about which users exist. (A
 * well-formed scrypt hash of random bytes: no password matches it.)
 */
export const DUMMY_HASH = `scrypt$16384$8$1$${randomBytes(16).toString('base64')}$${randomBytes(32).toString('base64')}`;

export type Admission =
  | { admitted: true; address: string; at: number }
  | { admitted: false; reason: 'limited'; retryAfterSeconds: number }
  | { admitted: false; reason: 'busy' };

export class LoginLimiter {
  private readonly failures = new Map<string, number[]>();
  private checksInFlight = 0;
  private readonly now: () => number;

  constructor(now: () => number = Date.now) {
    this.now = now;
  }

  /** May a login from `remoteAddress` be checked now? If so it counts as a failure until `succeeded`, and holds a check slot until `done`. */
  admit(remoteAddress: string): Admission {
    const now = this.now();
    const address = addressKey(remoteAddress);
    this.forgetOld(now);
    const recent = (this.failures.get(address) ?? []).filter((at) => now - at < FAILURE_WINDOW_MS);
    if (recent.length >= LOGIN_FAILURES)
      return {
        admitted: false,
        reason: 'limited',
        retryAfterSeconds: Math.max(1, Math.ceil((recent[0]! + FAILURE_WINDOW_MS - now) / 1000)),
      };
    // (Not counted: the flood that fills the slots may be someone else's.)
    if (this.checksInFlight >= MAX_CHECKS_IN_FLIGHT) return { admitted: false, reason: 'busy' };
    recent.push(now);
    this.failures.set(address, recent);
    this.checksInFlight++;
    return { admitted: true, address, at: now };
  }

  /** The check of an admitted login ended (its slot is free again). */
  done(): void {
    if (this.checksInFlight > 0) this.checksInFlight--;
  }

  /** The admitted login succeeded: its own entry is taken back, no other. */
  succeeded(admission: Extract<Admission, { admitted: true }>): void {
    const entries = this.failures.get(admission.address);
    const mine = entries?.indexOf(admission.at) ?? -1;
    if (entries && mine >= 0) entries.splice(mine, 1);
  }

  private forgetOld(now: number): void {
    for (const [address, times] of this.failures) {
      if (times.length === 0 || now - times.at(-1)! >= FAILURE_WINDOW_MS) this.failures.delete(address);
    }
    while (this.failures.size > MAX_ADDRESSES) this.failures.delete(this.failures.keys().next().value!);
  }
}

/**
 * The address login failures are counted against: IPv4 as it is (also when mapped into IPv6), IPv6
 * by its /64 (one host usually has a whole /64 to pick addresses from).
 */
export function addressKey(address: string): string {
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
  if (mapped) return mapped[1]!;
  if (!address.includes(':')) return address;
  const [head = '', tail = ''] = address.split('::');
  const groups = [...head.split(':').filter(Boolean)];
  const rest = tail.split(':').filter(Boolean);
  while (groups.length + rest.length < 8) groups.push('0');
  return `${[...groups, ...rest].slice(0, 4).join(':')}::/64`;
}
