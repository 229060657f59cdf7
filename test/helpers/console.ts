// The web console's tests: the real gateway CLI in a child process (with its own environment, for
// `${VAR}` secrets), a small HTTP client over node:http/https (it may set any Host or Origin and
// pick the local source address, which the login rate limit counts by), a session holder with
// the cookie and CSRF token, and a Server-Sent Events reader that records every event.
import { spawn, type ChildProcess } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { request as httpRequest, type IncomingHttpHeaders, type IncomingMessage } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { join } from 'node:path';
import { hashPassword } from '../../src/broker/security.js';
import { track } from './cloud-broker.js';
import { CLI, type ConfigInput, type LogLine, logLines } from './cloud-gateway.js';
import { waitFor } from './net.js';

export interface Answer {
  status: number;
  headers: IncomingHttpHeaders;
  body: string;
}

export interface RequestOptions {
  method?: string;
  headers?: Record<string, string>;
  body?: string;
  /** The source address (127.0.0.x): the login rate limit counts failures per address. */
  localAddress?: string;
  /** CA of an HTTPS endpoint. */
  ca?: string | Buffer;
  timeoutMs?: number;
}

/** One request, the whole answer; rejects on a network error or after `timeoutMs` (10 s). */
export function send(url: string, options: RequestOptions = {}): Promise<Answer> {
  const target = new URL(url);
  const requester = target.protocol === 'https:' ? httpsRequest : httpRequest;
  return new Promise((resolve, reject) => {
    const request = requester(
      target,
      {
        method: options.method ?? 'GET',
        headers: options.headers ?? {},
        agent: false,
        ...(options.localAddress ? { localAddress: options.localAddress } : {}),
        ...(options.ca ? { ca: options.ca } : {}),
        timeout: options.timeoutMs ?? 10_000,
      },
      (response: IncomingMessage) => {
        const chunks: Buffer[] = [];
        response.on('data', (chunk: Buffer) => chunks.push(chunk));
        response.on('end', () =>
          resolve({ status: response.statusCode ?? 0, headers: response.headers, body: Buffer.concat(chunks).toString('utf8') }),
        );
        response.on('error', reject);
      },
    );
    request.on('timeout', () =>
      request.destroy(new Error(`${options.method ?? 'GET'} ${url}: no answer in ${options.timeoutMs ?? 10_000} ms`)),
    );
    request.on('error', reject);
    request.end(options.body);
  });
}

export function json<T>(answer: Answer): T {
  try {
    return JSON.parse(answer.body) as T;
  } catch {
    throw new Error(`not JSON (status ${answer.status}): ${answer.body.slice(0, 300)}`);
  }
}

export interface SessionInfo {
  loginRequired: boolean;
  authenticated: boolean;
  user?: string;
  role?: string;
  csrf?: string;
}

/** A browser's view of the console: the session cookie and CSRF token it holds. */
export class ConsoleClient {
  cookie: string | undefined;
  csrf: string | undefined;

  constructor(
    readonly base: string,
    private readonly defaults: Pick<RequestOptions, 'localAddress' | 'ca'> = {},
  ) {}

  request(path: string, options: RequestOptions = {}): Promise<Answer> {
    const headers: Record<string, string> = { ...(this.cookie ? { Cookie: this.cookie } : {}), ...options.headers };
    return send(this.base + path, { ...this.defaults, ...options, headers });
  }

  get(path: string, headers: Record<string, string> = {}): Promise<Answer> {
    return this.request(path, { headers });
  }

  /** A POST with the held CSRF token (`csrf: false`: without one, a string: that one instead). */
  post(path: string, body: unknown, options: { csrf?: boolean | string; headers?: Record<string, string> } = {}): Promise<Answer> {
    const token = options.csrf === false ? undefined : typeof options.csrf === 'string' ? options.csrf : this.csrf;
    return this.request(path, {
      method: 'POST',
      body: typeof body === 'string' ? body : JSON.stringify(body),
      headers: {
        'Content-Type': typeof body === 'string' ? 'text/plain' : 'application/json',
        ...(token !== undefined ? { 'X-CSRF-Token': token } : {}),
        ...options.headers,
      },
    });
  }

  /** GET /session; keeps its CSRF token (the loopback session has one without a login). */
  async session(): Promise<SessionInfo> {
    const info = json<SessionInfo>(await this.get('/api/console/session'));
    if (info.csrf) this.csrf = info.csrf;
    return info;
  }

  /** POST /login; on 200 keeps the cookie and the CSRF token. */
  async login(username: string, password: string): Promise<Answer> {
    const answer = await this.request('/api/console/login', {
      method: 'POST',
      body: JSON.stringify({ username, password }),
      headers: { 'Content-Type': 'application/json' },
    });
    if (answer.status === 200) {
      this.cookie = sessionCookie(answer);
      this.csrf = json<{ csrf: string }>(answer).csrf;
    }
    return answer;
  }
}

/** The raw Set-Cookie header of an answer (one cookie). */
export function setCookie(answer: Answer): string {
  const header = answer.headers['set-cookie'];
  const value = Array.isArray(header) ? header[0] : header;
  if (!value) throw new Error(`no Set-Cookie in the answer (status ${answer.status})`);
  return value;
}

/** "name=value" of the answer's Set-Cookie, as a browser sends it back. */
export function sessionCookie(answer: Answer): string {
  return setCookie(answer).split(';')[0]!;
}

export interface SseEvent {
  event: string;
  data: unknown;
  /** Date.now() when it arrived. */
  at: number;
}

/** Reads a Server-Sent Events stream and records every event (data parsed as JSON). */
export class SseReader {
  readonly events: SseEvent[] = [];
  status = 0;
  /** The server ended the stream. */
  ended = false;
  private buffer = '';
  private request: ReturnType<typeof httpRequest> | undefined;

  static async open(url: string, headers: Record<string, string> = {}, ca?: string | Buffer): Promise<SseReader> {
    const reader = new SseReader();
    const target = new URL(url);
    const requester = target.protocol === 'https:' ? httpsRequest : httpRequest;
    await new Promise<void>((resolve, reject) => {
      const request = requester(
        target,
        { headers: { Accept: 'text/event-stream', ...headers }, agent: false, ...(ca ? { ca } : {}) },
        (response) => {
          reader.status = response.statusCode ?? 0;
          response.setEncoding('utf8');
          response.on('data', (chunk: string) => reader.take(chunk));
          response.on('error', () => undefined);
          response.on('end', () => (reader.ended = true));
          resolve();
        },
      );
      request.on('error', reject);
      request.setTimeout(10_000, () => request.destroy(new Error('no answer to the event stream request in 10 s')));
      request.end();
      reader.request = request;
    });
    reader.request?.setTimeout(0);
    return reader;
  }

  of(event: string): SseEvent[] {
    return this.events.filter((item) => item.event === event);
  }

  async waitFor(what: string, check: (event: SseEvent) => boolean, timeoutMs: number, after = 0): Promise<SseEvent> {
    let found: SseEvent | undefined;
    await waitFor(
      () => {
        found = this.events.slice(after).find(check);
        return found !== undefined;
      },
      timeoutMs,
      () => `${what} (events so far: ${this.events.map((item) => item.event).join(', ') || 'none'})`,
    );
    return found!;
  }

  close(): void {
    this.request?.destroy();
  }

  private take(chunk: string): void {
    this.buffer += chunk;
    for (let end = this.buffer.indexOf('\n\n'); end >= 0; end = this.buffer.indexOf('\n\n')) {
      const block = this.buffer.slice(0, end);
      this.buffer = this.buffer.slice(end + 2);
      let event = 'message';
      const data: string[] = [];
      for (const line of block.split('\n')) {
        if (line.startsWith('event: ')) event = line.slice(7);
        else if (line.startsWith('data: ')) data.push(line.slice(6));
      }
      if (data.length === 0) continue;
      this.events.push({ event, data: JSON.parse(data.join('\n')) as unknown, at: Date.now() });
    }
  }
}

/** The gateway CLI (`run -c <file>`) with an environment of its own; its JSON log parsed. */
export class ConsoleGateway {
  readonly child: ChildProcess;
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  private text = '';

  constructor(
    readonly configFile: string,
    env: Record<string, string> = {},
  ) {
    this.child = spawn(process.execPath, [CLI, 'run', '-c', configFile], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, ...env },
    });
    track(this.child);
    this.child.stdout!.on('data', (chunk: Buffer) => (this.text += chunk.toString()));
    this.child.stderr!.on('data', (chunk: Buffer) => (this.text += chunk.toString()));
    this.exited = new Promise((resolve) => this.child.once('exit', (code, signal) => resolve({ code, signal })));
  }

  get running(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  output(): string {
    return this.text;
  }

  logs(): LogLine[] {
    return logLines(this.text);
  }

  async waitForLog(match: string | ((line: LogLine) => boolean), timeoutMs: number, after = 0): Promise<LogLine> {
    let found: LogLine | undefined;
    const test = typeof match === 'string' ? (line: LogLine) => line.msg === match : match;
    await waitFor(
      () => {
        found = this.logs().slice(after).find(test);
        if (!found && !this.running) throw new Error(`the gateway exited before logging ${String(match)}:\n${this.text}`);
        return found !== undefined;
      },
      timeoutMs,
      `the gateway to log ${typeof match === 'string' ? match : 'the expected line'}`,
    );
    return found!;
  }

  /** Audit lines of writes (msg "write done" / "write refused or failed", audit "write"). */
  audits(): LogLine[] {
    return this.logs().filter((line) => line.audit === 'write');
  }

  async stop(): Promise<void> {
    if (this.running) this.child.kill('SIGTERM');
    const timer = setTimeout(() => this.child.kill('SIGKILL'), 15_000);
    await this.exited;
    clearTimeout(timer);
  }
}

/** Writes `config` as `<dir>/<name>` (JSON). */
/** A Modbus TCP device on a local test server, for the consoles' gateways. */
export const modbusDevice = (name: string, port: number, tags: object[], pollInterval = '100ms') => ({
  name,
  driver: 'modbus',
  connection: { transport: 'tcp', host: '127.0.0.1', port, unitId: 1, timeout: '300ms' },
  pollInterval,
  tags,
});

export function writeConfig(dir: string, config: ConfigInput | Record<string, unknown>, name = 'gateway.json'): string {
  const file = join(dir, name);
  writeFileSync(file, JSON.stringify(config, null, 2));
  return file;
}

/** scrypt hashes for test users, made once per password. */
const hashes = new Map<string, Promise<string>>();
export function hashOf(password: string): Promise<string> {
  let hash = hashes.get(password);
  if (!hash) hashes.set(password, (hash = hashPassword(password)));
  return hash;
}
