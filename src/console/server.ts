// The web console: the page (dist/console/, bundled from src/console/ui/app/ by src/console/ui/build.ts)
// and its API under /api/console/, served by the operations endpoint for every path it does not
// own. What each route returns is in docs/architecture.md ("The web console"); who may call it is
// auth.ts's business: viewers read, operators also write; every POST needs the CSRF token.
import { readFileSync } from 'node:fs';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { extname, join, normalize } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Logger } from 'pino';
import { redactUrl } from '../cloud/uplink.js';
import { ConfigError, formatProblems, parseConfigText } from '../config/load.js';
import type { Config } from '../config/schema.js';
import type { Gateway } from '../gateway.js';
import type { TagValue } from '../pipeline/driver.js';
import { errorMessage } from '../util/errors.js';
import { ConsoleAuth, isLoopbackHost, type ConsoleSession } from './auth.js';
import { ConsoleLive, tagKey } from './live.js';
import { redactConfig, UNRESOLVED_ENV } from './redact.js';

/** Where the built page is: dist/console/ (this file runs as dist/src/console/server.js). */
export const ASSETS = fileURLToPath(new URL('../../console/', import.meta.url));

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
};

const SECURITY_HEADERS = {
  'Content-Security-Policy':
    "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
  'X-Content-Type-Options': 'nosniff',
  'Referrer-Policy': 'no-referrer',
  'X-Frame-Options': 'DENY',
};

const MAX_JSON_BODY = 64 * 1024;
const MAX_CONFIG_BODY = 256 * 1024;
/** Problems listed by the validate box at most (a pasted file of garbage keys makes thousands). */
const MAX_REPORTED_PROBLEMS = 200;

class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
  }
}

export interface ConsoleOptions {
  http: Config['http'];
  /** The config file the gateway runs (shown on the overview). */
  configFile: string | undefined;
}

export class ConsoleServer {
  readonly auth: ConsoleAuth;
  readonly live: ConsoleLive;
  private readonly gateway: Gateway;
  private readonly log: Logger;
  private readonly configFile: string | undefined;
  private readonly assets = new Map<string, Buffer>();
  private cpu = { at: process.hrtime.bigint(), usage: process.cpuUsage(), percent: 0 };
  private validating = false;

  constructor(gateway: Gateway, options: ConsoleOptions, log: Logger) {
    this.gateway = gateway;
    this.log = log.child({ module: 'console' });
    this.configFile = options.configFile;
    this.auth = new ConsoleAuth({
      loginRequired: !isLoopbackHost(options.http.host),
      secure: options.http.tls !== undefined,
      users: () => gateway.config.broker.users,
    });
    this.live = new ConsoleLive(
      {
        bus: gateway.bus,
        eachTag: (visit) => gateway.eachTag(visit),
        overview: () => this.overview(),
        outboxDepth: () => gateway.outbox?.stats.messages,
      },
      { updateInterval: options.http.console.updateInterval, trendMinutes: options.http.console.trendMinutes },
      this.log,
    );
    this.live.start();
  }

  close(): void {
    this.live.stop();
  }

  /** Serves a console path; false when the path is not the console's (the caller answers 404). */
  async handle(request: IncomingMessage, response: ServerResponse, url: URL): Promise<boolean> {
    const path = url.pathname;
    if (path !== '/' && path !== '/index.html' && !path.startsWith('/assets/') && !path.startsWith('/api/console/')) return false;
    try {
      this.checkOrigin(request);
      if (path.startsWith('/api/console/')) await this.api(request, response, url);
      else this.asset(response, path === '/' ? '/index.html' : path);
    } catch (error) {
      if (error instanceof HttpError) sendJson(response, error.status, { error: error.message }, error.headers);
      else {
        this.log.error({ path, error: errorMessage(error) }, 'console request failed');
        sendJson(response, 500, { error: 'internal error' });
      }
    }
    return true;
  }

  /**
   * What every request to the endpoint must pass, also /api/status and /metrics (the caller
   * answers with the error): without a login (loopback), a page on another site could still reach
   * 127.0.0.1 through the browser (DNS rebinding), so the Host must be a loopback name; and a
   * reverse proxy in front of a loopback endpoint would give the whole network operator rights
   * without a login, so forwarded requests are refused.
   */
  checkHost(request: IncomingMessage): { status: number; message: string } | undefined {
    if (this.auth.loginRequired) return undefined;
    const host = request.headers.host ?? '';
    if (!isLoopbackHost(hostName(host)))
      return { status: 403, message: `this endpoint answers on this machine's loopback address only, not "${host}"` };
    if (
      request.headers.forwarded !== undefined ||
      request.headers['x-forwarded-for'] !== undefined ||
      request.headers['x-forwarded-host'] !== undefined
    )
      return {
        status: 403,
        message:
          'a forwarded request (a reverse proxy?) to an endpoint without logins: set http.host to the address the proxy uses (not 127.0.0.1), so that logins are required',
      };
    return undefined;
  }

  /** Whether /api/status may answer: always on loopback; elsewhere with a console session (or the caller checks the metrics token). */
  mayReadStatus(request: IncomingMessage): boolean {
    return this.auth.session(request) !== undefined;
  }

  /** A POST from another origin is refused (a null origin too: a sandboxed frame's form). */
  private checkOrigin(request: IncomingMessage): void {
    const refused = this.checkHost(request);
    if (refused) throw new HttpError(refused.status, refused.message);
    const host = request.headers.host ?? '';
    const origin = request.headers.origin;
    if (request.method === 'POST' && origin === 'null') throw new HttpError(403, 'a request from an opaque origin');
    if (request.method === 'POST' && origin !== undefined) {
      let originHost: string;
      try {
        originHost = new URL(origin).host;
      } catch {
        throw new HttpError(403, 'a request from another origin');
      }
      if (originHost !== host) throw new HttpError(403, 'a request from another origin');
    }
  }

  private async api(request: IncomingMessage, response: ServerResponse, url: URL): Promise<void> {
    const route = `${request.method ?? 'GET'} ${url.pathname.slice('/api/console'.length)}`;
    if (route === 'GET /session') {
      const session = this.auth.session(request);
      return sendJson(response, 200, {
        loginRequired: this.auth.loginRequired,
        authenticated: session !== undefined,
        ...(session ? { user: session.user, role: session.role, csrf: session.csrf } : {}),
        gateway: this.gateway.config.gateway.name,
      });
    }
    if (route === 'POST /login') {
      const body = await readJson(request, MAX_JSON_BODY);
      const address = request.socket.remoteAddress ?? 'unknown';
      const username = field(body, 'username');
      const result = await this.auth.login(address, username, field(body, 'password'));
      if (!result.ok) {
        // The name only when it is a user's: a password typed into the name field is never logged.
        this.log.warn(
          { address, username: this.auth.isUser(username) ? username : '(not a user)', status: result.status },
          'console login refused',
        );
        const headers: Record<string, string> = result.retryAfterSeconds ? { 'Retry-After': String(result.retryAfterSeconds) } : {};
        throw new HttpError(result.status, result.error, headers);
      }
      this.log.info({ address, user: result.session.user, role: result.session.role }, 'console login');
      return sendJson(
        response,
        200,
        { user: result.session.user, role: result.session.role, csrf: result.session.csrf },
        { 'Set-Cookie': result.cookie },
      );
    }
    const session = this.auth.session(request);
    if (!session) throw new HttpError(401, 'log in first');
    if (request.method === 'POST' && !this.auth.csrfValid(request, session))
      throw new HttpError(403, 'missing or wrong CSRF token (X-CSRF-Token)');
    switch (route) {
      case 'POST /logout':
        response.writeHead(204, { 'Set-Cookie': this.auth.logout(request), 'Cache-Control': 'no-store' });
        response.end();
        // Its live streams end now, not at their next check.
        return this.live.revalidate();
      case 'GET /events':
        return this.live.attach(request, response, () => this.auth.session(request) !== undefined);
      case 'GET /overview':
        return sendJson(response, 200, this.overview());
      case 'GET /devices':
        return sendJson(response, 200, { devices: this.gateway.status({ tags: false }).devices });
      case 'GET /tags':
        return sendJson(response, 200, { tags: this.gateway.status({ tags: true }).tags ?? [] });
      case 'GET /trend': {
        const device = url.searchParams.get('device') ?? '';
        const tag = url.searchParams.get('tag') ?? '';
        return sendJson(response, 200, {
          device,
          tag,
          minutes: this.gateway.config.http.console.trendMinutes,
          points: this.live.trends.points(tagKey(device, tag)),
        });
      }
      case 'GET /broker': {
        const broker = this.gateway.broker;
        return sendJson(response, 200, {
          clients: broker.clients(),
          denied: broker.stats.denied,
          listeners: broker.addresses().map((address) => address.url),
        });
      }
      case 'GET /config':
        return sendJson(response, 200, { file: this.configFile ?? null, config: redactConfig(this.gateway.config) });
      case 'POST /validate': {
        // One at a time: a large config blocks the event loop while it is checked.
        if (this.validating) throw new HttpError(429, 'another validation is running; try again in a moment', { 'Retry-After': '1' });
        this.validating = true;
        try {
          return sendJson(response, 200, validate(await readText(request, MAX_CONFIG_BODY)));
        } finally {
          this.validating = false;
        }
      }
      case 'POST /write':
        return sendJson(response, 200, await this.write(session, await readJson(request, MAX_JSON_BODY)));
      default:
        throw new HttpError(404, `no console API ${route}`);
    }
  }

  /** A write from the form: the command handler's checks, rate limits and audit line, source "console". */
  private async write(session: ConsoleSession, body: unknown): Promise<unknown> {
    if (session.role !== 'operator') throw new HttpError(403, `user "${session.user}" is a viewer: writes need the operator role`);
    const device = field(body, 'device');
    const tag = field(body, 'tag');
    const value = field(body, 'value');
    if (typeof device !== 'string' || typeof tag !== 'string') throw new HttpError(400, 'expected {"device": …, "tag": …, "value": …}');
    if (!isTagValue(value)) throw new HttpError(400, 'the value must be a number, true/false, text, or an array of them');
    return this.gateway.takeWrite(device, tag, value, { source: 'console', clientId: `console:${session.user}`, username: session.user });
  }

  /** Everything the overview page shows. */
  overview(): unknown {
    const gateway = this.gateway;
    const status = gateway.status({ tags: false });
    const uplink = gateway.config.uplink;
    const states = status.devices.map((device) => ({ name: device.name, state: device.state, lastError: device.lastError }));
    return {
      gateway: { ...status.gateway, configFile: this.configFile ?? null, lastReload: gateway.lastReload ?? null },
      devices: { total: states.length, up: states.filter((device) => device.state === 'connected').length, list: states },
      uplink: uplink && status.uplink ? { url: redactUrl(uplink.url), format: uplink.format, ...status.uplink } : null,
      outbox: status.outbox ? { ...status.outbox, history: this.live.outboxHistory.all() } : null,
      broker: { clients: status.broker.clients, denied: status.broker.denied, listeners: status.broker.listeners },
      writes: status.writes,
      process: this.processFigures(),
      browsers: this.live.browsers,
    };
  }

  /** CPU % since the last call (at least 1 s apart), RSS and heap. */
  private processFigures(): { cpuPercent: number; rssBytes: number; heapUsedBytes: number } {
    const now = process.hrtime.bigint();
    const elapsedMicros = Number(now - this.cpu.at) / 1000;
    if (elapsedMicros >= 1_000_000) {
      const usage = process.cpuUsage(this.cpu.usage);
      this.cpu = { at: now, usage: process.cpuUsage(), percent: Math.round(((usage.user + usage.system) / elapsedMicros) * 1000) / 10 };
    }
    const memory = process.memoryUsage();
    return { cpuPercent: this.cpu.percent, rssBytes: memory.rss, heapUsedBytes: memory.heapUsed };
  }

  private asset(response: ServerResponse, path: string): void {
    const file = normalize(path).replace(/^(\.\.[/\\])+/, '');
    const name = file === '/index.html' ? 'index.html' : file.replace(/^\/assets\//, '');
    if (name.includes('..') || name.includes('/') || name.includes('\\'))
      return send(response, 404, 'text/plain; charset=utf-8', 'not found\n');
    let body = this.assets.get(name);
    if (!body) {
      try {
        body = readFileSync(join(ASSETS, name));
      } catch {
        if (name === 'index.html')
          return send(
            response,
            503,
            'text/plain; charset=utf-8',
            'the web console is not built: run `npm run build` (the API under /api/console/ works)\n',
          );
        return send(response, 404, 'text/plain; charset=utf-8', 'not found\n');
      }
      this.assets.set(name, body);
    }
    // The page may change with an upgrade; the hashed assets never do.
    const cache = name === 'index.html' ? 'no-cache' : 'public, max-age=31536000, immutable';
    response.writeHead(200, {
      'Content-Type': TYPES[extname(name)] ?? 'application/octet-stream',
      'Cache-Control': cache,
      ...SECURITY_HEADERS,
    });
    response.end(body);
  }
}

/**
 * `plc2mqtt validate`'s report for pasted text. Environment variables are not resolved (see
 * UNRESOLVED_ENV): a field that takes one is checked as its ${NAME} text, which the report says.
 */
function validate(text: string): { ok: boolean; report: string; problems: Array<{ path: string; message: string }> } {
  const note = /\$\{[A-Za-z_]/.test(text) ? '\n(environment variables are not resolved here: each ${NAME} is checked as that text)' : '';
  try {
    const config = parseConfigText(text, 'pasted config', UNRESOLVED_ENV);
    const tags = config.devices.reduce((count, device) => count + device.tags.length, 0);
    const summary = `${config.devices.length} device${config.devices.length === 1 ? '' : 's'}, ${tags} tag${tags === 1 ? '' : 's'}`;
    return { ok: true, problems: [], report: `pasted config: valid — ${summary}${note}` };
  } catch (error) {
    if (!(error instanceof ConfigError)) return { ok: false, problems: [], report: errorMessage(error) + note };
    const shown = error.problems.slice(0, MAX_REPORTED_PROBLEMS);
    const problems = shown.map((problem) => ({ path: problem.path.join('.'), message: problem.message }));
    const more = error.problems.length - shown.length;
    const cut = more > 0 ? `\n  … and ${more} more` : '';
    return {
      ok: false,
      problems,
      report:
        formatProblems('pasted config', shown).replace(
          /^pasted config: \d+ problems?/,
          `pasted config: ${error.problems.length} problem${error.problems.length === 1 ? '' : 's'}`,
        ) +
        cut +
        note,
    };
  }
}

function isTagValue(value: unknown): value is TagValue {
  const scalar = (item: unknown) => typeof item === 'number' || typeof item === 'boolean' || typeof item === 'string';
  return scalar(value) || (Array.isArray(value) && value.length > 0 && value.every(scalar));
}

function field(body: unknown, name: string): unknown {
  return body !== null && typeof body === 'object' ? (body as Record<string, unknown>)[name] : undefined;
}

function hostName(host: string): string {
  if (host.startsWith('[')) return host.slice(0, host.indexOf(']') + 1);
  return host.split(':')[0] ?? '';
}

async function readText(request: IncomingMessage, limit: number): Promise<string> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of request as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > limit) throw new HttpError(413, `the request is larger than ${limit} bytes`);
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}

async function readJson(request: IncomingMessage, limit: number): Promise<unknown> {
  // A form cannot send application/json across origins without a preflight this server never grants.
  if (!/^application\/json\b/i.test(request.headers['content-type'] ?? ''))
    throw new HttpError(415, 'expected Content-Type: application/json');
  const text = await readText(request, limit);
  try {
    return JSON.parse(text) as unknown;
  } catch {
    throw new HttpError(400, 'the request body is not JSON');
  }
}

function sendJson(response: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  const text = JSON.stringify(body, (_key, value: unknown) => (typeof value === 'bigint' ? value.toString() : value));
  response.writeHead(status, {
    'Content-Type': 'application/json; charset=utf-8',
    'Cache-Control': 'no-store',
    ...SECURITY_HEADERS,
    ...headers,
  });
  response.end(text);
}

function send(response: ServerResponse, status: number, type: string, body: string): void {
  response.writeHead(status, { 'Content-Type': type, 'Cache-Control': 'no-store', ...SECURITY_HEADERS });
  response.end(body);
}
