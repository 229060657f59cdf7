// The operations endpoint: what a supervisor, a Prometheus server or an operator asks the gateway.
//   /            the web console (src/console/: the page, and its API under /api/console/)
//   /healthz     liveness: the process answers (503 once it is shutting down)
//   /readyz      readiness: the gateway started (config loaded, devices running) and every broker listener listens
//   /metrics     Prometheus text format (prom-client); with http.metricsToken, only with that bearer token
//   /api/status  JSON: the gateway's status snapshot (src/app/status.ts): gateway, devices with state
//                and last error, tags with their latest sample, outbox, uplink, broker and writes
//                (?device=NAME for one device's tags, 404 for a device the config does not have;
//                ?tags=0 for none)
import { timingSafeEqual } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createTlsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import type { Logger } from 'pino';
import type { Config } from '../config/schema.js';
import { errorMessage } from '../util/errors.js';
import type { Gateway } from '../gateway.js';
import type { GatewayMetrics } from './metrics.js';
import type { StatusSnapshot } from '../app/status.js';
import { ConsoleServer } from '../console/server.js';

export class OpsServer {
  private constructor(
    private readonly server: Server,
    readonly url: string,
    private readonly webConsole: ConsoleServer | undefined,
  ) {}

  static async start(config: Config['http'], gateway: Gateway, metrics: GatewayMetrics, log: Logger): Promise<OpsServer> {
    const webConsole = config.console.enabled
      ? new ConsoleServer(gateway, { http: config, configFile: gateway.configFile }, log)
      : undefined;
    const listener = (request: IncomingMessage, response: ServerResponse) => {
      handle(request, response, gateway, metrics, config, webConsole).catch((error: unknown) => {
        log.error({ url: request.url, error: errorMessage(error) }, 'operations endpoint failed');
        if (!response.headersSent) send(response, 500, 'text/plain', 'internal error\n');
        else response.destroy();
      });
    };
    const server: Server = config.tls
      ? createTlsServer({ cert: readPem(config.tls.cert, 'http.tls.cert'), key: readPem(config.tls.key, 'http.tls.key') }, listener)
      : createServer(listener);
    // Scrapers and health checks keep connections open; none of them may keep the process alive.
    server.keepAliveTimeout = 5000;
    await new Promise<void>((resolve, reject) => {
      server.once('error', (error: NodeJS.ErrnoException) =>
        reject(
          new Error(
            `operations endpoint cannot listen on ${config.host}:${config.port}: ${error.code ?? error.message}${error.code === 'EADDRINUSE' ? ' (change http.port)' : ''}`,
          ),
        ),
      );
      server.listen(config.port, config.host, () => resolve());
    }).catch((error: unknown) => {
      webConsole?.close();
      throw error;
    });
    const address = server.address() as AddressInfo;
    const url = `${config.tls ? 'https' : 'http'}://${address.family === 'IPv6' ? `[${address.address}]` : address.address}:${address.port}`;
    const endpoints = [...(webConsole ? ['/'] : []), '/healthz', '/readyz', '/metrics', '/api/status'];
    log.info(
      {
        url,
        endpoints,
        ...(webConsole
          ? { console: webConsole.auth.loginRequired ? 'login required (broker.users with a console role)' : 'this machine only, no login' }
          : {}),
      },
      'operations endpoint listening',
    );
    return new OpsServer(server, url, webConsole);
  }

  close(): Promise<void> {
    this.webConsole?.close();
    return new Promise((resolve) => {
      this.server.close(() => resolve());
      this.server.closeAllConnections();
    });
  }
}

async function handle(
  request: IncomingMessage,
  response: ServerResponse,
  gateway: Gateway,
  metrics: GatewayMetrics,
  config: Config['http'],
  webConsole: ConsoleServer | undefined,
): Promise<void> {
  const url = new URL(request.url ?? '/', 'http://localhost');
  if (webConsole && (await webConsole.handle(request, response, url))) return;
  // The console's Host and proxy guard holds for every path (a rebinding page must not read
  // /api/status either); health checks are answered whatever the name they use.
  const refused = url.pathname === '/healthz' || url.pathname === '/readyz' ? undefined : webConsole?.checkHost(request);
  if (refused) return send(response, refused.status, 'text/plain', `${refused.message}\n`);
  if (request.method !== 'GET' && request.method !== 'HEAD') {
    response.setHeader('Allow', 'GET, HEAD');
    return send(response, 405, 'text/plain', 'method not allowed\n');
  }
  switch (url.pathname) {
    case '/healthz':
      return gateway.stopped ? send(response, 503, 'text/plain', 'shutting down\n') : send(response, 200, 'text/plain', 'ok\n');
    case '/readyz': {
      const problems = readinessProblems(gateway);
      return send(response, problems.length === 0 ? 200 : 503, 'application/json', json({ ready: problems.length === 0, problems }));
    }
    case '/metrics':
      if (config.metricsToken !== undefined && !bearerMatches(request, config.metricsToken)) {
        response.setHeader('WWW-Authenticate', 'Bearer realm="plc2mqtt metrics"');
        return send(response, 401, 'text/plain', 'a bearer token is required (http.metricsToken)\n');
      }
      return send(response, 200, metrics.registry.contentType, await metrics.scrape());
    case '/api/status': {
      // Off loopback the tag values are the console's business: a console session or the metrics token.
      if (
        webConsole?.auth.loginRequired &&
        !webConsole.mayReadStatus(request) &&
        !(config.metricsToken !== undefined && bearerMatches(request, config.metricsToken))
      ) {
        response.setHeader('WWW-Authenticate', 'Bearer realm="plc2mqtt status"');
        return send(
          response,
          401,
          'text/plain',
          'log in to the console first, or send the metrics token (http.metricsToken) as a bearer token\n',
        );
      }
      const device = url.searchParams.get('device');
      const names = gateway.config.devices.map((entry) => entry.name);
      if (device !== null && !names.includes(device)) {
        return send(
          response,
          404,
          'application/json',
          json({ error: `no device ${JSON.stringify(device)}; devices: ${names.join(', ') || '(none)'}` }),
        );
      }
      return send(
        response,
        200,
        'application/json',
        json(apiStatus(gateway.status({ tags: url.searchParams.get('tags') !== '0', device: device ?? undefined }))),
      );
    }
    default:
      return send(response, 404, 'text/plain', 'not found; try /healthz, /readyz, /metrics or /api/status\n');
  }
}

function bearerMatches(request: IncomingMessage, token: string): boolean {
  const header = request.headers.authorization ?? '';
  const sent = Buffer.from(header.startsWith('Bearer ') ? header.slice(7) : '');
  const expected = Buffer.from(token);
  return sent.length === expected.length && timingSafeEqual(sent, expected);
}

function readPem(file: string, setting: string): Buffer {
  try {
    return readFileSync(file);
  } catch (error) {
    throw new Error(`cannot read ${setting} (${file}): ${errorMessage(error)}`);
  }
}

function readinessProblems(gateway: Gateway): string[] {
  const problems: string[] = [];
  if (gateway.stopped) problems.push('shutting down');
  const listening = gateway.broker.addresses().length;
  const configured = gateway.config.broker.listeners.length;
  if (listening < configured) problems.push(`integrated broker: ${listening} of ${configured} listeners up`);
  return problems;
}

/** /api/status: the status snapshot as it is, but for the broker's queue, which only the metrics show. */
function apiStatus(snapshot: StatusSnapshot): unknown {
  const { queued: _queued, ...broker } = snapshot.broker;
  return { ...snapshot, broker };
}

/** JSON with 64-bit values as strings. */
function json(value: unknown): string {
  return `${JSON.stringify(value, (_key, item: unknown) => (typeof item === 'bigint' ? item.toString() : item))}\n`;
}

function send(response: ServerResponse, code: number, type: string, body: string): void {
  response.writeHead(code, { 'Content-Type': type, 'Cache-Control': 'no-store' });
  response.end(body);
}
