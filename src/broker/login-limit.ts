// Failed logins limited per remote address, checked against the scrypt hashes of broker.users:
// each check costs ~35 ms of a CPU and 16 MB, so a flood of wrong passwords would otherwise delay
// real logins and eat memory. Addresses count as they are, IPv4-mapped IPv6 as IPv4, IPv6 by its /64.
//
// Two ways in, one limiter:
// - admit() (the web console, HTTP): an attempt counts as a failure before its check (attempts
//   sent at once are limited too) and a success takes back only its own entry (logging in as
//   oneself never clears the failures of guesses at someone else's password); five failures in
//   5 minutes get 429 for a while, more logins than check slots get "try again in a moment".
// - check() (the MQTT broker, whose clients retry on their own and must never be locked out: an
//   HMI and an attacker may share one address behind NAT): logins wait in a queue, fair between
//   addresses (round-robin), at most MAX_CHECKS_IN_FLIGHT checks at once and one per address;
//   after failures from an address its next check waits FAILURE_DELAY_STEP_MS per failure (at
//   most MAX_FAILURE_DELAY_MS; forgotten after a quiet FAILURE_QUIET_MS): a delay, never a
//   lockout. Only the excess over MAX_WAITING_PER_ADDRESS waiting logins of one address is
//   refused at once, without a check.
import { randomBytes } from 'node:crypto';

/** Failed logins allowed per address within the window; then refused until the oldest leaves it. */
export const LOGIN_FAILURES = 5;
const FAILURE_WINDOW_MS = 5 * 60_000;
/** Addresses remembered at most; the oldest are forgotten first (a flood of addresses costs bounded memory). */
const MAX_ADDRESSES = 10_000;
/** Password checks running at once (this is CPU work; 2 suits the small edge boxes the gateway runs on). */
const MAX_CHECKS_IN_FLIGHT = 2;
/** check(): logins of one address waiting for their check; more are refused at once, unchecked. */
export const MAX_WAITING_PER_ADDRESS = 16;
/** check(): the delay before the next check of an address, per failure from it... */
const FAILURE_DELAY_STEP_MS = 100;
/** ...at most this long... */
const MAX_FAILURE_DELAY_MS = 2_000;
/** ...and its failures are forgotten once none came for this long. */
const FAILURE_QUIET_MS = 60_000;

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

/** What check() did with a login. */
export type CheckOutcome =
  | { outcome: 'checked'; ok: boolean }
  /** Too many logins from its address were waiting: refused without a check. */
  | { outcome: 'refused' }
  /** Its client left while it waited: not checked. */
  | { outcome: 'abandoned' };

interface QueuedCheck {
  run: () => Promise<boolean>;
  abandoned: () => boolean;
  resolve: (outcome: CheckOutcome) => void;
}

/** check()'s state of one address. */
interface AddressQueue {
  waiting: QueuedCheck[];
  running: boolean;
  /** Failed checks since the last quiet FAILURE_QUIET_MS, and when the last one ended. */
  failures: number;
  lastFailureAt: number;
  /** When its last check ended (the delay counts from there). */
  lastEndAt: number;
}

export class LoginLimiter {
  private readonly failures = new Map<string, number[]>();
  private checksInFlight = 0;
  private readonly now: () => number;
  /** check(): every address with a state, oldest first. */
  private readonly queues = new Map<string, AddressQueue>();
  /** check(): the addresses with logins waiting, in turn order (the next turn goes to the first that may go). */
  private readonly turns = new Map<string, AddressQueue>();
  private wakeUp: NodeJS.Timeout | undefined;

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

  /**
   * Checks a login from `remoteAddress` with `run` (the password check) when its turn comes: fair
   * between addresses, one at a time per address, after the delay its address's failures earned.
   * `run` resolving false counts as a failure of the address. `abandoned`, asked when the turn
   * comes, drops a login whose client has gone.
   */
  check(remoteAddress: string, run: () => Promise<boolean>, abandoned: () => boolean = () => false): Promise<CheckOutcome> {
    const address = addressKey(remoteAddress);
    let queue = this.queues.get(address);
    if (!queue) {
      if (this.queues.size >= MAX_ADDRESSES) this.forgetIdleQueues();
      queue = { waiting: [], running: false, failures: 0, lastFailureAt: 0, lastEndAt: 0 };
      this.queues.set(address, queue);
    }
    if (queue.waiting.length >= MAX_WAITING_PER_ADDRESS) return Promise.resolve({ outcome: 'refused' });
    const waiting = queue;
    return new Promise((resolve) => {
      waiting.waiting.push({ run, abandoned, resolve });
      if (!this.turns.has(address)) this.turns.set(address, waiting);
      this.pump();
    });
  }

  /** How long the next check of logins from this address would wait for its failures (0 without). */
  delayFor(remoteAddress: string): number {
    const queue = this.queues.get(addressKey(remoteAddress));
    return queue ? this.delayOf(queue, this.now()) : 0;
  }

  private delayOf(queue: AddressQueue, now: number): number {
    if (queue.failures > 0 && now - queue.lastFailureAt >= FAILURE_QUIET_MS) queue.failures = 0;
    return Math.min(queue.failures * FAILURE_DELAY_STEP_MS, MAX_FAILURE_DELAY_MS);
  }

  /** Starts the checks whose turn it is, while slots are free; wakes up for the next delayed one. */
  private pump(): void {
    const now = this.now();
    let nextAt = Number.POSITIVE_INFINITY;
    while (this.checksInFlight < MAX_CHECKS_IN_FLIGHT) {
      let started = false;
      for (const [address, queue] of this.turns) {
        if (queue.running) continue;
        const readyAt = queue.lastEndAt + this.delayOf(queue, now);
        if (readyAt > now) {
          nextAt = Math.min(nextAt, readyAt);
          continue;
        }
        const job = queue.waiting.shift()!;
        // Its turn is used: to the back of the line (or out of it).
        this.turns.delete(address);
        if (queue.waiting.length > 0) this.turns.set(address, queue);
        if (job.abandoned()) {
          job.resolve({ outcome: 'abandoned' });
        } else {
          this.start(queue, job);
        }
        started = true;
        break;
      }
      if (!started) break;
    }
    if (this.wakeUp) clearTimeout(this.wakeUp);
    this.wakeUp = undefined;
    if (nextAt !== Number.POSITIVE_INFINITY && this.checksInFlight < MAX_CHECKS_IN_FLIGHT) {
      this.wakeUp = setTimeout(() => this.pump(), Math.max(1, nextAt - now)).unref();
    }
  }

  private start(queue: AddressQueue, job: QueuedCheck): void {
    queue.running = true;
    this.checksInFlight++;
    const finish = (ok: boolean) => {
      this.checksInFlight--;
      queue.running = false;
      const now = this.now();
      queue.lastEndAt = now;
      if (!ok) {
        this.delayOf(queue, now); // forgets failures of a quiet minute ago first
        queue.failures++;
        queue.lastFailureAt = now;
      }
      job.resolve({ outcome: 'checked', ok });
      this.pump();
    };
    job.run().then(finish, () => finish(false));
  }

  /** Forgets the addresses with nothing waiting, those without recent failures first, then the oldest. */
  private forgetIdleQueues(): void {
    const now = this.now();
    const idle = (queue: AddressQueue) => !queue.running && queue.waiting.length === 0;
    for (const [address, queue] of this.queues) {
      if (idle(queue) && this.delayOf(queue, now) === 0) this.queues.delete(address);
    }
    for (const [address, queue] of this.queues) {
      if (this.queues.size <= MAX_ADDRESSES * 0.9) break;
      if (idle(queue)) this.queues.delete(address);
    }
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
