// The console API (src/console/server.ts) as the page sees it: the JSON shapes, and fetch with the
// session's CSRF token on every POST. A 401 means the session ended: the app shows the login form.
// The shapes follow the server's types (src/app/status.ts and others) as JSON carries them — 64-bit
// integers as decimal strings, times as ISO text — rather than importing those types: the page is
// type-checked on its own (DOM libraries, no Node types), and the server's types hold bigints.

export type Role = 'viewer' | 'operator';
export type Quality = 'good' | 'uncertain' | 'bad';
/** 64-bit integers arrive as decimal strings. */
export type Scalar = number | boolean | string;
export type TagValue = Scalar | Scalar[];

export interface Session {
  loginRequired: boolean;
  authenticated: boolean;
  user?: string;
  role?: Role;
  csrf?: string;
  gateway?: string;
}

export interface LoginAnswer {
  user: string;
  role: Role;
  csrf: string;
}

export interface TagStatus {
  device: string;
  tag: string;
  topic: string;
  writable: boolean;
  commandTopic?: string;
  unit?: string;
  value?: TagValue | null;
  quality?: Quality;
  reason?: string;
  ts?: number;
}

/** A `samples` row: [device, tag, value, quality, reason, ts]. */
export type SampleRow = [string, string, TagValue | null, Quality, string | null, number];

export type DeviceState = 'starting' | 'connecting' | 'connected' | 'disconnected' | 'stopped' | 'failed';

export interface DeviceSnapshot {
  name: string;
  driver: string;
  state: DeviceState;
  lastError: string | null;
  tags: number;
  samples: number;
  connectAttempts: number;
  nextTryAt: string | null;
  pollErrors: number;
  errorsByCode: Record<string, number>;
  overruns: number;
  cycles: number;
  plans: Record<string, string>;
  /** Per poll group, how long its last read took (seconds). */
  lastPollSeconds: Record<string, number>;
}

export type LastReload = { at: string } & (
  | {
      outcome: 'applied';
      result: {
        added: string[];
        removed: string[];
        restarted: string[];
        unchanged: number;
        failed: string[];
        applied: string[];
        disconnected: string[];
        notApplied: string[];
      };
    }
  | { outcome: 'refused'; problems: string[] }
);

export interface Overview {
  gateway: {
    name: string;
    version: string;
    startedAt: string;
    uptimeSeconds: number;
    samples: number;
    published: number;
    configFile: string | null;
    lastReload: LastReload | null;
  };
  devices: { total: number; up: number; list: Array<{ name: string; state: DeviceState; lastError: string | null }> };
  uplink: {
    url: string;
    format: string;
    connected: boolean;
    sent: number;
    acknowledged: number;
    rejected: number;
    inFlight: number;
    reconnects: number;
    received: number;
    lastError?: string;
  } | null;
  outbox: {
    messages: number;
    bytes: number;
    appended: number;
    dropped: number;
    delivered: number;
    rejected: number;
    damaged: number;
    pending: number;
    diskFull: boolean;
    oldestAgeSeconds: number;
    /** [ms, depth], one point per 10 s over the last hour. */
    history: Array<[number, number]>;
  } | null;
  broker: { clients: number; denied: number; listeners: string[] };
  writes: { received: number; written: number; rejected: number; failed: number };
  process: { cpuPercent: number; rssBytes: number; heapUsedBytes: number };
  browsers: number;
}

export interface BrokerClient {
  id: string;
  user: string | null;
  address: string | null;
  subscriptions: number;
  queued: number;
}

export interface BrokerInfo {
  clients: BrokerClient[];
  denied: number;
  listeners: string[];
}

export interface ConfigInfo {
  file: string | null;
  config: unknown;
}

export interface ValidateAnswer {
  ok: boolean;
  problems: Array<{ path: string; message: string }>;
  report: string;
}

export interface CommandAnswer {
  ok: boolean;
  device?: string;
  tag?: string;
  value?: TagValue;
  readBack?: TagValue | null;
  error?: string;
  ts: number;
}

export interface Trend {
  device: string;
  tag: string;
  minutes: number;
  /** [ms, value], oldest first. */
  points: Array<[number, number]>;
}

/** SSE `device-state`. */
export interface DeviceStateEvent {
  device: string;
  state: DeviceState;
  lastError?: string;
}

/** SSE `uplink-state`. */
export interface UplinkStateEvent {
  state: 'connected' | 'disconnected';
  reason?: string;
}

/** SSE `outbox-depth`. */
export interface OutboxDepthEvent {
  messages: number;
  bytes: number;
}

/** SSE `write`. */
export interface WriteEvent {
  topic?: string;
  answer: CommandAnswer;
  source: string;
  user?: string;
}

export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

let csrfToken = '';
let unauthorized: () => void = () => {};

/** The session's CSRF token, sent as X-CSRF-Token on every POST. */
export function setCsrf(token: string): void {
  csrfToken = token;
}

/** Called when a request answers 401 (the session expired or was logged out elsewhere). */
export function onUnauthorized(handler: () => void): void {
  unauthorized = handler;
}

function errorText(data: unknown): string | undefined {
  if (data !== null && typeof data === 'object' && 'error' in data && typeof data.error === 'string') return data.error;
  return undefined;
}

async function call<T>(method: 'GET' | 'POST', path: string, body?: { text: string; type: string }): Promise<T> {
  const headers: Record<string, string> = { Accept: 'application/json' };
  if (method === 'POST') headers['X-CSRF-Token'] = csrfToken;
  if (body) headers['Content-Type'] = body.type;
  const response = await fetch(`/api/console/${path}`, {
    method,
    headers,
    credentials: 'same-origin',
    cache: 'no-store',
    ...(body ? { body: body.text } : {}),
  });
  const text = response.status === 204 ? '' : await response.text();
  let data: unknown;
  try {
    data = text === '' ? undefined : JSON.parse(text);
  } catch {
    data = undefined;
  }
  if (!response.ok) {
    if (response.status === 401 && path !== 'login') unauthorized();
    throw new ApiError(response.status, errorText(data) ?? (text.trim() || `${response.status} ${response.statusText}`));
  }
  return data as T;
}

const json = (value: unknown) => ({ text: JSON.stringify(value), type: 'application/json' });

export const api = {
  session: () => call<Session>('GET', 'session'),
  login: (username: string, password: string) => call<LoginAnswer>('POST', 'login', json({ username, password })),
  logout: () => call<undefined>('POST', 'logout'),
  overview: () => call<Overview>('GET', 'overview'),
  devices: () => call<{ devices: DeviceSnapshot[] }>('GET', 'devices'),
  tags: () => call<{ tags: TagStatus[] }>('GET', 'tags'),
  trend: (device: string, tag: string) => call<Trend>('GET', `trend?device=${encodeURIComponent(device)}&tag=${encodeURIComponent(tag)}`),
  broker: () => call<BrokerInfo>('GET', 'broker'),
  config: () => call<ConfigInfo>('GET', 'config'),
  validate: (text: string) => call<ValidateAnswer>('POST', 'validate', { text, type: 'text/plain; charset=utf-8' }),
  write: (device: string, tag: string, value: TagValue) => call<CommandAnswer>('POST', 'write', json({ device, tag, value })),
};

export function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
