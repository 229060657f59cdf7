// Who may use the web console. On a loopback-only endpoint (the default, http.host 127.0.0.1)
// whoever reaches it is on the edge box: no login, operator rights. On any other address a login
// is required: users of broker.users (the same scrypt hashes) with a "console" role, "viewer" or
// "operator". A login gets a session cookie (HttpOnly, SameSite=Strict, Secure under TLS) and a
// CSRF token the page sends in X-CSRF-Token with every POST; login failures are limited per
// remote address.
import { randomBytes, timingSafeEqual } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import { addressKey, DUMMY_HASH, LoginLimiter } from '../broker/login-limit.js';
import { verifyPassword } from '../broker/security.js';

export { addressKey, LOGIN_FAILURES } from '../broker/login-limit.js';
import type { Config } from '../config/schema.js';

export type ConsoleRole = 'viewer' | 'operator';

export interface ConsoleSession {
  user: string;
  role: ConsoleRole;
  csrf: string;
}

interface StoredSession extends ConsoleSession {
  lastSeen: number;
  /** The password hash the login was checked against: a changed password ends the session. */
  hash: string;
}

export type LoginResult =
  | { ok: true; cookie: string; session: ConsoleSession }
  | { ok: false; status: 401 | 429; error: string; retryAfterSeconds?: number };

export const SESSION_COOKIE = 'plc2mqtt_session';
/** A session unused this long ends. */
const IDLE_MS = 12 * 3_600_000;
const MAX_SESSIONS = 1000;
type User = Config['broker']['users'][number];

export class ConsoleAuth {
  /** True when the endpoint listens beyond loopback: every request needs a session. */
  readonly loginRequired: boolean;
  private readonly secure: boolean;
  private readonly users: () => readonly User[];
  private readonly sessions = new Map<string, StoredSession>();
  private readonly limiter: LoginLimiter;
  /** The loopback session: one token for the process. */
  private readonly local: ConsoleSession = { user: 'local', role: 'operator', csrf: token() };
  private readonly now: () => number;
  private readonly verify: (password: string, hash: string) => Promise<boolean>;

  constructor(options: {
    loginRequired: boolean;
    secure: boolean;
    users: () => readonly User[];
    now?: () => number;
    /** The password check (tests count its calls). */
    verify?: (password: string, hash: string) => Promise<boolean>;
  }) {
    this.loginRequired = options.loginRequired;
    this.secure = options.secure;
    this.users = options.users;
    this.now = options.now ?? Date.now;
    this.verify = options.verify ?? verifyPassword;
    this.limiter = new LoginLimiter(this.now);
  }

  /** The request's session: the loopback one, or the cookie's while its user still has that role and password. */
  session(request: IncomingMessage): ConsoleSession | undefined {
    if (!this.loginRequired) return this.local;
    const id = cookieValue(request.headers.cookie, SESSION_COOKIE);
    if (id === undefined) return undefined;
    const stored = this.sessions.get(id);
    if (!stored) return undefined;
    const now = this.now();
    const user = this.users().find((candidate) => candidate.username === stored.user);
    if (now - stored.lastSeen > IDLE_MS || !user || user.passwordHash !== stored.hash || user.console !== stored.role) {
      this.sessions.delete(id);
      return undefined;
    }
    stored.lastSeen = now;
    return stored;
  }

  /** Checks a login; a success opens a session (its cookie), a failure counts against the address. */
  async login(remoteAddress: string, username: unknown, password: unknown): Promise<LoginResult> {
    const admission = this.limiter.admit(remoteAddress);
    if (!admission.admitted) {
      if (admission.reason === 'busy')
        return { ok: false, status: 429, error: 'too many logins at once; try again in a moment', retryAfterSeconds: 1 };
      const { retryAfterSeconds } = admission;
      return {
        ok: false,
        status: 429,
        error: `too many failed logins from ${addressKey(remoteAddress)}; try again in ${retryAfterSeconds} s`,
        retryAfterSeconds,
      };
    }
    const user = typeof username === 'string' ? this.users().find((candidate) => candidate.username === username) : undefined;
    const known = user !== undefined && user.console !== undefined;
    let matches: boolean;
    try {
      matches = await this.verify(typeof password === 'string' ? password : '', known ? user.passwordHash : DUMMY_HASH);
    } finally {
      this.limiter.done();
    }
    const valid = known && typeof password === 'string' && matches;
    if (!valid || !user?.console) {
      // One message for every reason: a caller learns nothing about which users exist.
      return { ok: false, status: 401, error: 'wrong username or password, or no console access for this user' };
    }
    this.limiter.succeeded(admission);
    const id = token();
    const session: StoredSession = {
      user: user.username,
      role: user.console,
      csrf: token(),
      lastSeen: this.now(),
      hash: user.passwordHash,
    };
    this.sessions.set(id, session);
    this.evictOldest();
    return { ok: true, cookie: this.cookie(id, IDLE_MS / 1000), session };
  }

  /** Ends the request's session; the cookie that clears it. */
  logout(request: IncomingMessage): string {
    const id = cookieValue(request.headers.cookie, SESSION_COOKIE);
    if (id !== undefined) this.sessions.delete(id);
    return this.cookie('', 0);
  }

  /** Whether a login of this name could succeed: the log names only users that exist (a password typed into the name field must not be logged). */
  isUser(username: unknown): boolean {
    return typeof username === 'string' && this.users().some((candidate) => candidate.username === username);
  }

  /** A POST carries the session's CSRF token in X-CSRF-Token. */
  csrfValid(request: IncomingMessage, session: ConsoleSession): boolean {
    const sent = request.headers['x-csrf-token'];
    if (typeof sent !== 'string') return false;
    const a = Buffer.from(sent);
    const b = Buffer.from(session.csrf);
    return a.length === b.length && timingSafeEqual(a, b);
  }

  private cookie(value: string, maxAgeSeconds: number): string {
    return `${SESSION_COOKIE}=${value}; Path=/; HttpOnly; SameSite=Strict; Max-Age=${maxAgeSeconds}${this.secure ? '; Secure' : ''}`;
  }

  private evictOldest(): void {
    if (this.sessions.size <= MAX_SESSIONS) return;
    let oldest: [string, number] | undefined;
    for (const [id, session] of this.sessions) if (!oldest || session.lastSeen < oldest[1]) oldest = [id, session.lastSeen];
    if (oldest) this.sessions.delete(oldest[0]);
  }
}

function token(): string {
  return randomBytes(32).toString('base64url');
}

function cookieValue(header: string | undefined, name: string): string | undefined {
  if (!header) return undefined;
  for (const part of header.split(';')) {
    const [key, ...rest] = part.trim().split('=');
    if (key === name) return rest.join('=');
  }
  return undefined;
}

/** An address only this machine reaches: the console then needs no login. */
export function isLoopbackHost(host: string): boolean {
  return host === 'localhost' || host === '::1' || host === '[::1]' || /^127\.\d+\.\d+\.\d+$/.test(host);
}
