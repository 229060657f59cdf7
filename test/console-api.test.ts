// The web console's HTTP API against the real gateway CLI (issue 16), over node:http:
// - loopback endpoint: no login (operator "local"), Host check against DNS rebinding, CSRF on POSTs,
//   foreign Origin refused; writes reach a Modbus server with an audit line (source "console");
//   SSE (overview at once, coalesced samples, bounded event rate, device-state down/up); trends;
//   redacted config (secrets from ${VAR} too); validate report equal to `plc2mqtt validate`'s and
//   without secrets; /metrics bearer token; broker client list.
// - endpoint on 0.0.0.0: login required; one generic 401; rate limit (429 + Retry-After) per address;
//   cookie attributes; viewer reads but cannot write; operator writes; logout; a reload that removes a
//   user or changes a role ends the session.
// - http.tls: HTTPS, Secure cookie.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import mqtt from 'mqtt';
import { killAllChildren, makePki, makeTempDir, removeDir } from './helpers/cloud-broker.js';
import { CLI, type LogLine } from './helpers/cloud-gateway.js';
import {
  type Answer,
  ConsoleClient,
  ConsoleGateway,
  hashOf,
  json,
  modbusDevice,
  type SessionInfo,
  SseReader,
  sessionCookie,
  send,
  setCookie,
  writeConfig,
} from './helpers/console.js';
import { TcpTestServer } from './helpers/modbus-servers.js';
import { freePort, waitFor } from './helpers/net.js';

type SampleRow = [string, string, unknown, string, string | null, number];

interface WriteAnswer {
  ok: boolean;
  device?: string;
  tag?: string;
  value?: unknown;
  error?: string;
}

interface TagRow {
  device: string;
  tag: string;
  value?: unknown;
  quality?: string;
  writable: boolean;
}

/** `plc2mqtt validate -c <file>` in a child process. */
function cliValidate(file: string, env: Record<string, string> = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      [CLI, 'validate', '-c', file],
      { encoding: 'utf8', timeout: 20_000, env: { ...process.env, ...env } },
      (error, stdout, stderr) => resolve({ code: error ? (typeof error.code === 'number' ? error.code : -1) : 0, stdout, stderr }),
    );
  });
}

/** True when the text holds any `size`-character piece of `secret`. */
function holdsPieceOf(text: string, secret: string, size = 8): string | undefined {
  for (let at = 0; at + size <= secret.length; at++) if (text.includes(secret.slice(at, at + size))) return secret.slice(at, at + size);
  return undefined;
}

const PLC_TAGS = [
  { name: 'level', area: 'holding', address: 0, type: 'uint16', writable: true },
  { name: 'fixed', area: 'holding', address: 1, type: 'uint16' },
];

describe('web console API, loopback endpoint (no login)', () => {
  const dir = makeTempDir('plc2mqtt-console-');
  const modbus = new TcpTestServer();
  const secrets = {
    CLOUD_PW: 'cloud-pw-Zq8v1u3Kx',
    METRICS_TOKEN: 'metrics-token-Hh2Lp0Qs9Wd4',
    TLS_PASS: 'tls-pass-Rt5Yb7Nm',
    CLOUD_USER: 'cloud-user-Ve3Jc6',
    PORT_SECRET: 'port-secret-Gk4Fw1',
    LONG_SECRET: `long-secret-${'Xy7'.repeat(20)}`,
    SHORT20: 'sh20-Ab3Cd4Ef5Gh6Ij',
  };
  let gateway: ConsoleGateway;
  let client: ConsoleClient;
  let base = '';
  let httpPort = 0;
  let brokerPort = 0;
  let hashes: string[] = [];

  before(async () => {
    await modbus.start();
    modbus.holding[1] = 77;
    const simPort = await freePort();
    httpPort = await freePort();
    brokerPort = await freePort();
    const cloudPort = await freePort();
    hashes = [await hashOf('mqtt-user-pw'), await hashOf('ops-pw-1')];
    const file = writeConfig(dir, {
      gateway: { name: 'cgw', dataDir: join(dir, 'data'), logLevel: 'info', shutdownTimeout: '10s' },
      broker: {
        listeners: [{ type: 'tcp', host: '127.0.0.1', port: brokerPort }],
        allowAnonymous: true,
        users: [
          { username: 'mqttuser', passwordHash: hashes[0]! },
          { username: 'ops', passwordHash: hashes[1]!, console: 'operator' },
        ],
      },
      http: { host: '127.0.0.1', port: httpPort, console: { updateInterval: '1s' }, metricsToken: '${METRICS_TOKEN}' },
      // A cloud that is never there, with every kind of secret.
      uplink: {
        url: `mqtts://clouduser:\${CLOUD_PW}@127.0.0.1:${cloudPort}`,
        username: '${CLOUD_USER}',
        tls: { passphrase: '${TLS_PASS}', rejectUnauthorized: false },
        reconnect: { initial: 1000, max: 5000 },
      },
      simulators: [{ name: 'sim', type: 'modbus-tcp', host: '127.0.0.1', port: simPort }],
      devices: [
        modbusDevice(
          'demo',
          simPort,
          [
            { name: 'ramp', address: '40002', type: 'uint16' },
            { name: 'counter', address: '40003', type: 'uint32' },
            { name: 'banner', address: '40021', type: 'string', length: 8 },
          ],
          '50ms',
        ),
        modbusDevice('plc', modbus.port, PLC_TAGS),
      ],
    });
    gateway = new ConsoleGateway(file, secrets);
    await gateway.waitForLog('operations endpoint listening', 30_000);
    base = `http://127.0.0.1:${httpPort}`;
    client = new ConsoleClient(base);
    await waitFor(
      async () => {
        const tags = json<{ tags: TagRow[] }>(await client.get('/api/console/tags')).tags;
        return (
          tags.some((tag) => tag.tag === 'ramp' && typeof tag.value === 'number') &&
          tags.some((tag) => tag.tag === 'fixed' && tag.value === 77)
        );
      },
      20_000,
      'first values of both devices',
    );
  });

  after(async () => {
    await gateway?.stop();
    await modbus.stop();
    await killAllChildren();
    removeDir(dir);
  });

  it('the session is operator "local" without a login, with a CSRF token', async () => {
    const session = await client.session();
    assert.equal(session.loginRequired, false);
    assert.equal(session.authenticated, true);
    assert.equal(session.user, 'local');
    assert.equal(session.role, 'operator');
    assert.match(session.csrf ?? '', /^[A-Za-z0-9_-]{32,}$/);
    assert.equal((await client.get('/api/console/overview')).status, 200);
  });

  it('a Host header that is not loopback is refused (DNS rebinding); localhost and 127.0.0.1 are fine', async () => {
    for (const host of ['evil.example.com', `evil.example.com:${httpPort}`, `192.168.1.10:${httpPort}`]) {
      const answer = await client.get('/api/console/overview', { Host: host });
      assert.equal(answer.status, 403, `Host ${host}: ${answer.body}`);
      assert.equal((await client.get('/api/console/session', { Host: host })).status, 403);
    }
    assert.equal((await client.get('/api/console/overview', { Host: `localhost:${httpPort}` })).status, 200);
    assert.equal((await client.get('/api/console/overview', { Host: `127.0.0.1:${httpPort}` })).status, 200);
  });

  it('the same guard holds for /api/status and /metrics (a rebinding page must not read them), not for the health checks; a forwarded request is refused', async () => {
    for (const path of ['/api/status', '/metrics']) {
      const answer = await client.get(path, { Host: `evil.example.com:${httpPort}` });
      assert.equal(answer.status, 403, `${path}: ${answer.body}`);
    }
    assert.equal((await client.get('/api/status')).status, 200);
    assert.equal((await client.get('/healthz', { Host: 'probe.internal' })).status, 200);
    // A reverse proxy in front of a loopback endpoint would hand everyone operator rights without a login.
    const proxied = await client.get('/api/console/overview', { 'X-Forwarded-For': '203.0.113.9' });
    assert.equal(proxied.status, 403, proxied.body);
    assert.match(proxied.body, /set http\.host/);
  });

  it('a POST without the CSRF token (or with a wrong one) is refused and writes nothing; with it the write reaches the Modbus server, audited as "console"', async () => {
    await client.session();
    const writesBefore = modbus.writes.length;
    const missing = await client.post('/api/console/write', { device: 'plc', tag: 'level', value: 4321 }, { csrf: false });
    assert.equal(missing.status, 403, missing.body);
    const wrong = await client.post('/api/console/write', { device: 'plc', tag: 'level', value: 4321 }, { csrf: 'x'.repeat(43) });
    assert.equal(wrong.status, 403, wrong.body);
    assert.equal(modbus.writes.length, writesBefore, 'nothing written');
    assert.equal(
      gateway.audits().filter((line) => line.source === 'console').length,
      0,
      'a refused request never reached the command handler',
    );

    const done = await client.post('/api/console/write', { device: 'plc', tag: 'level', value: 4321 });
    assert.equal(done.status, 200, done.body);
    const answer = json<WriteAnswer>(done);
    assert.equal(answer.ok, true, done.body);
    assert.deepEqual({ device: answer.device, tag: answer.tag, value: answer.value }, { device: 'plc', tag: 'level', value: 4321 });
    assert.equal(modbus.holding[0], 4321);
    assert.deepEqual(modbus.writes.at(-1), { fc: 6, address: 0, values: [4321] });
    const audit = await gateway.waitForLog((line) => line.audit === 'write' && line.source === 'console' && line.requested === 4321, 5000);
    assert.equal(audit.username, 'local');
    assert.equal(audit.clientId, 'console:local');
    assert.equal(audit.result, 'written');
    assert.equal(audit.device, 'plc');
    assert.equal(audit.tag, 'level');
  });

  it('a POST with a foreign Origin is refused even with the CSRF token; the same origin is fine', async () => {
    await client.session();
    const writesBefore = modbus.writes.length;
    const foreign = await client.post(
      '/api/console/write',
      { device: 'plc', tag: 'level', value: 11 },
      { headers: { Origin: 'http://evil.example.com' } },
    );
    assert.equal(foreign.status, 403, foreign.body);
    const otherPort = await client.post(
      '/api/console/write',
      { device: 'plc', tag: 'level', value: 11 },
      { headers: { Origin: 'http://127.0.0.1:1' } },
    );
    assert.equal(otherPort.status, 403, otherPort.body);
    assert.equal(modbus.writes.length, writesBefore);
    const same = await client.post('/api/console/write', { device: 'plc', tag: 'level', value: 12 }, { headers: { Origin: base } });
    assert.equal(same.status, 200, same.body);
    assert.equal(json<WriteAnswer>(same).ok, true);
    assert.equal(modbus.holding[0], 12);
  });

  it('a write to a tag that is not writable is refused in the answer and audited; an unknown tag too', async () => {
    await client.session();
    const writesBefore = modbus.writes.length;
    const refused = json<WriteAnswer>(await client.post('/api/console/write', { device: 'plc', tag: 'fixed', value: 5 }));
    assert.equal(refused.ok, false);
    assert.match(refused.error ?? '', /not writable/);
    assert.equal(modbus.holding[1], 77);
    assert.equal(modbus.writes.length, writesBefore);
    const audit = await gateway.waitForLog((line) => line.audit === 'write' && line.source === 'console' && line.tag === 'fixed', 5000);
    assert.equal(audit.result, 'rejected');
    assert.equal(audit.username, 'local');
    const unknown = json<WriteAnswer>(await client.post('/api/console/write', { device: 'plc', tag: 'nope', value: 5 }));
    assert.equal(unknown.ok, false);
    const bad = await client.post('/api/console/write', { device: 'plc', tag: 'level', value: { x: 1 } });
    assert.equal(bad.status, 400, bad.body);
  });

  it('SSE: an overview at once, coalesced samples (each tag once per flush, ≤ 8 events in 5 s at 1 s while polling every 50 ms)', async () => {
    const events = await SseReader.open(`${base}/api/console/events`);
    try {
      assert.equal(events.status, 200);
      await events.waitFor('the first event', () => true, 5000);
      assert.equal(events.events[0]!.event, 'overview');
      const overview = events.events[0]!.data as { gateway: { name: string }; devices: { total: number } };
      assert.equal(overview.gateway.name, 'cgw');
      assert.equal(overview.devices.total, 2);
      // The first samples event, then count over 5 s.
      await events.waitFor('a samples event', (event) => event.event === 'samples', 5000);
      const start = events.events.length;
      await new Promise((resolve) => setTimeout(resolve, 5000));
      const window = events.events.slice(start).filter((event) => event.event === 'samples');
      const all = events.of('samples');
      for (const event of all) {
        const rows = event.data as SampleRow[];
        assert.ok(rows.length > 0);
        const keys = rows.map((row) => `${row[0]}/${row[1]}`);
        assert.equal(new Set(keys).size, keys.length, `a tag twice in one flush: ${keys.join(', ')}`);
      }
      const ramps = all.flatMap((event) => (event.data as SampleRow[]).filter((row) => row[0] === 'demo' && row[1] === 'ramp'));
      assert.ok(ramps.length >= 2, 'the ramp changes and comes in several flushes');
      assert.ok(new Set(ramps.map((row) => row[2])).size >= 2, 'with different values');
      const row = ramps.at(-1)!;
      assert.equal(typeof row[2], 'number');
      assert.equal(row[3], 'good');
      assert.equal(typeof row[5], 'number');
      // ~100 polls of the ramp in 5 s; updateInterval 1 s: about 5 events.
      assert.ok(window.length <= 8, `samples events in 5 s: ${window.length} (updateInterval 1 s)`);
      assert.ok(window.length >= 2, `samples events in 5 s: ${window.length}`);
    } finally {
      events.close();
    }
  });

  it('SSE: a device-state event when a Modbus device goes down and again when it comes back', async () => {
    const events = await SseReader.open(`${base}/api/console/events`);
    try {
      await events.waitFor('the overview', (event) => event.event === 'overview', 5000);
      const port = modbus.port;
      await modbus.stop();
      type State = { device: string; state: string; lastError?: string };
      const down = await events.waitFor(
        'plc down',
        (event) => event.event === 'device-state' && (event.data as State).device === 'plc' && (event.data as State).state !== 'connected',
        20_000,
      );
      const downAt = events.events.indexOf(down);
      await modbus.start(port);
      await events.waitFor(
        'plc connected again',
        (event) => event.event === 'device-state' && (event.data as State).device === 'plc' && (event.data as State).state === 'connected',
        30_000,
        downAt + 1,
      );
      const devices = json<{ devices: Array<{ name: string; state: string; lastPollSeconds: Record<string, number> }> }>(
        await client.get('/api/console/devices'),
      ).devices;
      assert.equal(devices.find((device) => device.name === 'plc')?.state, 'connected');
      const lastRead = devices.find((device) => device.name === 'plc')?.lastPollSeconds.default;
      assert.ok(typeof lastRead === 'number' && lastRead >= 0, `the last read's duration: ${String(lastRead)}`);
    } finally {
      events.close();
    }
  });

  it('/trend: points for a numeric tag after a few seconds while a browser looks, none for a string tag', async (t) => {
    // Trends are sampled while a console is open (and a while after): this test is one.
    const events = await SseReader.open(`${base}/api/console/events`);
    t.after(() => events.close());
    let points: Array<[number, number]> = [];
    await waitFor(
      async () => {
        points = json<{ points: Array<[number, number]> }>(await client.get('/api/console/trend?device=demo&tag=ramp')).points;
        return points.length >= 3;
      },
      15_000,
      () => `3 trend points of demo/ramp, got ${points.length}`,
    );
    for (const [ts, value] of points) {
      assert.ok(ts > Date.now() - 600_000 && ts <= Date.now() + 1000);
      assert.equal(typeof value, 'number');
    }
    assert.ok(
      points.every((point, index) => index === 0 || point[0] > points[index - 1]![0]),
      'oldest first, one per second',
    );
    const banner = json<{ points: unknown[] }>(await client.get('/api/console/trend?device=demo&tag=banner'));
    assert.deepEqual(banner.points, []);
    const tags = json<{ tags: TagRow[] }>(await client.get('/api/console/tags')).tags;
    assert.equal(
      typeof tags.find((tag) => tag.tag === 'banner')?.value,
      'string',
      'the banner is read (so "no points" is the trend’s choice)',
    );
  });

  it('/config, /overview, /tags and the event stream never show a password hash, the uplink password, the metrics token or a TLS passphrase', async () => {
    const config = await client.get('/api/console/config');
    assert.equal(config.status, 200);
    const bodies: Array<[string, string]> = [
      ['/config', config.body],
      ['/overview', (await client.get('/api/console/overview')).body],
      ['/devices', (await client.get('/api/console/devices')).body],
      ['/tags', (await client.get('/api/console/tags')).body],
      ['/broker', (await client.get('/api/console/broker')).body],
    ];
    const events = await SseReader.open(`${base}/api/console/events`);
    await events.waitFor('the overview', (event) => event.event === 'overview', 5000);
    events.close();
    bodies.push(['events', JSON.stringify(events.events)]);
    for (const [what, body] of bodies) {
      for (const hash of hashes) assert.ok(!body.includes(hash.split('$').at(-1)!), `${what} shows a password hash`);
      for (const name of ['CLOUD_PW', 'METRICS_TOKEN', 'TLS_PASS'] as const)
        assert.equal(holdsPieceOf(body, secrets[name]), undefined, `${what} shows (part of) ${name}`);
    }
    const shown = json<{
      config: {
        uplink: { url: string; tls: { passphrase: string } };
        http: { metricsToken: string };
        broker: { users: Array<{ passwordHash: string }> };
      };
    }>(config).config;
    assert.ok(!shown.uplink.url.includes('clouduser:'), shown.uplink.url);
    assert.match(shown.uplink.url, /^mqtts:\/\/127\.0\.0\.1:\d+$/);
    assert.equal(typeof shown.http.metricsToken, 'string');
    assert.equal(shown.broker.users.length, 2);
  });

  it('/config shows a value that came from an environment variable as ${NAME} (issue16-plan: redact.ts)', async () => {
    const body = (await client.get('/api/console/config')).body;
    // Not only values under secret-looking keys: any ${ENV} value (uplink.username here) is shown as written.
    assert.ok(!body.includes(secrets.CLOUD_USER), "uplink.username's value from ${CLOUD_USER} is shown");
    assert.ok(body.includes('${CLOUD_USER}'), 'shown as ${CLOUD_USER}');
  });

  it('/validate reports the same problems as `plc2mqtt validate` for the same text', async () => {
    await client.session();
    const text = `{
      // a config with several problems
      "gateway": { "name": "v", "logLevel": "verbose" },
      "broker": { "allowAnonymus": true },
      "http": { "port": "9180" },
      "devices": [
        { "name": "d", "driver": "modbus", "connection": { "transport": "tcp", "host": "127.0.0.1", "port": 502 },
          "tags": [{ "name": "t", "address": "40001", "type": "int17" }] },
        { "name": "e", "driver": "modbsu", "tags": [] }
      ]
    }`;
    const file = join(dir, 'pasted.json');
    writeFileSync(file, text);
    const cli = await cliValidate(file);
    assert.equal(cli.code, 2, cli.stderr);
    const answer = await client.post('/api/console/validate', text);
    assert.equal(answer.status, 200, answer.body);
    const report = json<{ ok: boolean; report: string; problems: Array<{ path: string; message: string }> }>(answer);
    assert.equal(report.ok, false);
    const cliLines = cli.stderr.trimEnd().split('\n');
    const lines = report.report.split('\n');
    assert.match(cliLines[0]!, /: \d+ problems?$/);
    assert.equal(lines[0]!.replace(/^.*: /, ''), cliLines[0]!.replace(/^.*: /, ''), 'the same count');
    assert.deepEqual(lines.slice(1), cliLines.slice(1), 'the same problem lines');
    assert.ok(lines.length >= 4, report.report);
    assert.equal(report.problems.length, lines.length - 1);
    for (const [index, problem] of report.problems.entries()) assert.ok(lines[index + 1]!.endsWith(problem.message), lines[index + 1]);
    // A valid config: ok.
    const valid = json<{ ok: boolean; report: string }>(await client.post('/api/console/validate', '{ "devices": [] }'));
    assert.equal(valid.ok, true, valid.report);
    // Without the CSRF token: refused.
    assert.equal((await client.post('/api/console/validate', text, { csrf: false })).status, 403);
  });

  it('/validate: an environment variable holding a secret put into a number field does not show the secret', async () => {
    await client.session();
    const check = async (value: string, name: string, secret: string) => {
      const text = JSON.stringify({ http: { port: value } });
      const body = (await client.post('/api/console/validate', text)).body;
      const report = json<{ ok: boolean; report: string }>({ status: 200, headers: {}, body });
      assert.equal(report.ok, false, `${value}: ${report.report}`);
      assert.match(report.report, /http\.port/);
      return { body, piece: holdsPieceOf(body, secret), name };
    };
    const short = await check('${PORT_SECRET}', 'PORT_SECRET', secrets.PORT_SECRET);
    assert.equal(short.piece, undefined, `the report shows ${short.name}: ${short.body}`);
    assert.ok(short.body.includes('${PORT_SECRET}'), short.body);
    const defaulted = await check('${PORT_SECRET:-1}', 'PORT_SECRET', secrets.PORT_SECRET);
    assert.equal(defaulted.piece, undefined, `the report shows ${defaulted.name}: ${defaulted.body}`);
    // Messages cut long values to 57 characters ("…"): a scrub of whole values would miss the piece,
    // so variables are never resolved in the first place.
    const long = await check('${LONG_SECRET}', 'LONG_SECRET', secrets.LONG_SECRET);
    // The same cut with padding before the variable (39 "A"s, then a 20-character secret).
    const padded = await check(`${'A'.repeat(39)}\${SHORT20}`, 'SHORT20', secrets.SHORT20);
    assert.deepEqual(
      [long.piece, padded.piece],
      [undefined, undefined],
      `pieces of secrets in the validate report: ${long.body}\n${padded.body}`,
    );
  });

  it('/metrics needs the bearer token (http.metricsToken from ${METRICS_TOKEN}); /healthz does not', async () => {
    const none = await send(`${base}/metrics`);
    assert.equal(none.status, 401);
    assert.match(String(none.headers['www-authenticate']), /^Bearer/);
    assert.equal((await send(`${base}/metrics`, { headers: { Authorization: 'Bearer wrong-token-wrong-token' } })).status, 401);
    assert.equal((await send(`${base}/metrics`, { headers: { Authorization: `Bearer ${secrets.METRICS_TOKEN}x` } })).status, 401);
    assert.equal((await send(`${base}/metrics`, { headers: { Authorization: secrets.METRICS_TOKEN } })).status, 401);
    const good = await send(`${base}/metrics`, { headers: { Authorization: `Bearer ${secrets.METRICS_TOKEN}` } });
    assert.equal(good.status, 200);
    assert.match(good.body, /^plc2mqtt_device_connected\{device="plc"\} 1$/m);
    assert.equal((await send(`${base}/healthz`)).status, 200);
    assert.equal((await send(`${base}/readyz`)).status, 200);
  });

  it('/broker lists a connected mqtt.js client with its id, user and subscription count', async () => {
    const mqttClient = await mqtt.connectAsync(`mqtt://127.0.0.1:${brokerPort}`, {
      clientId: 'console-test-client',
      username: 'mqttuser',
      password: 'mqtt-user-pw',
      reconnectPeriod: 0,
      connectTimeout: 5000,
    });
    try {
      await mqttClient.subscribeAsync(['a/b', 'c/#', 'plc2mqtt/+/plc/level'], { qos: 1 });
      type Broker = {
        clients: Array<{ id: string; user: string | null; address: string | null; subscriptions: number; queued: number }>;
        denied: number;
        listeners: string[];
      };
      let broker: Broker | undefined;
      await waitFor(
        async () => {
          broker = json<Broker>(await client.get('/api/console/broker'));
          return broker.clients.some((entry) => entry.id === 'console-test-client' && entry.subscriptions === 3);
        },
        5000,
        () => `the client with 3 subscriptions in /broker: ${JSON.stringify(broker)}`,
      );
      const entry = broker!.clients.find((item) => item.id === 'console-test-client')!;
      assert.equal(entry.user, 'mqttuser');
      assert.match(entry.address ?? '', /^(::ffff:)?127\.0\.0\.1:\d+$/);
      assert.equal(typeof entry.queued, 'number');
      assert.deepEqual(broker!.listeners, [`mqtt://127.0.0.1:${brokerPort}`]);
      const overview = json<{ broker: { clients: number } }>(await client.get('/api/console/overview'));
      assert.ok(overview.broker.clients >= 1);
    } finally {
      await mqttClient.endAsync(true);
    }
  });
});

describe('web console API, endpoint beyond loopback (login required)', () => {
  const dir = makeTempDir('plc2mqtt-console-login-');
  const modbus = new TcpTestServer();
  let gateway: ConsoleGateway;
  let base = '';
  let configFile = '';
  let users: Array<{ username: string; passwordHash: string; console?: 'viewer' | 'operator' }> = [];
  let brokerPort = 0;
  let httpPort = 0;
  const config = () => ({
    gateway: { name: 'lgw', dataDir: join(dir, 'data'), logLevel: 'info', shutdownTimeout: '10s' },
    broker: { listeners: [{ type: 'tcp', host: '127.0.0.1', port: brokerPort }], allowAnonymous: true, users },
    // 0.0.0.0: login required, also for a client that comes over 127.0.0.1.
    http: { host: '0.0.0.0', port: httpPort },
    devices: [modbusDevice('plc', modbus.port, PLC_TAGS)],
  });

  before(async () => {
    await modbus.start();
    modbus.holding[1] = 77;
    httpPort = await freePort();
    brokerPort = await freePort();
    users = [
      { username: 'ops', passwordHash: await hashOf('ops-pw-1'), console: 'operator' },
      { username: 'viewer', passwordHash: await hashOf('viewer-pw-1'), console: 'viewer' },
      { username: 'mqttonly', passwordHash: await hashOf('mqtt-only-pw') },
    ];
    configFile = writeConfig(dir, config());
    gateway = new ConsoleGateway(configFile);
    await gateway.waitForLog('operations endpoint listening', 30_000);
    base = `http://127.0.0.1:${httpPort}`;
    await waitFor(async () => (await send(`${base}/healthz`)).status === 200, 10_000, 'the endpoint');
  });

  after(async () => {
    await gateway?.stop();
    await modbus.stop();
    await killAllChildren();
    removeDir(dir);
  });

  it('every console route but session and login answers 401 without a session', async () => {
    const anonymous = new ConsoleClient(base);
    const session = await anonymous.session();
    assert.deepEqual(
      { loginRequired: session.loginRequired, authenticated: session.authenticated },
      { loginRequired: true, authenticated: false },
    );
    assert.equal(session.csrf, undefined);
    for (const path of ['overview', 'devices', 'tags', 'trend?device=plc&tag=level', 'broker', 'config', 'events']) {
      const answer = await anonymous.get(`/api/console/${path}`);
      assert.equal(answer.status, 401, `GET ${path}: ${answer.body}`);
      assert.ok(!answer.body.includes('level') || path.startsWith('trend'), answer.body);
    }
    for (const path of ['write', 'validate', 'logout']) {
      const answer = await anonymous.post(`/api/console/${path}`, { device: 'plc', tag: 'level', value: 1 }, { csrf: 'whatever' });
      assert.equal(answer.status, 401, `POST ${path}: ${answer.body}`);
    }
    // A made-up cookie is no session.
    anonymous.cookie = `plc2mqtt_session=${'A'.repeat(43)}`;
    assert.equal((await anonymous.get('/api/console/overview')).status, 401);
    assert.equal(modbus.writes.length, 0);
  });

  it('wrong password, unknown user and a user without a console role: 401 with one generic message', async () => {
    const anonymous = new ConsoleClient(base, { localAddress: '127.0.0.2' });
    const answers: Answer[] = [
      await anonymous.login('ops', 'not-the-password'),
      await anonymous.login('nobody', 'ops-pw-1'),
      await anonymous.login('mqttonly', 'mqtt-only-pw'),
    ];
    for (const answer of answers) {
      assert.equal(answer.status, 401, answer.body);
      assert.equal(answer.headers['set-cookie'], undefined);
    }
    const messages = new Set(answers.map((answer) => json<{ error: string }>(answer).error));
    assert.equal(messages.size, 1, [...messages].join(' | '));
    assert.ok(!answers[0]!.body.includes('ops') && !answers[2]!.body.includes('mqttonly'), 'names no user');
  });

  it('after 5 failures from one address: 429 with Retry-After, a correct password refused too; another address still logs in', async () => {
    const attacker = new ConsoleClient(base, { localAddress: '127.0.0.3' });
    for (let attempt = 1; attempt <= 5; attempt++) {
      const answer = await attacker.login('ops', `guess-${attempt}`);
      assert.equal(answer.status, 401, `attempt ${attempt}: ${answer.body}`);
    }
    const limited = await attacker.login('ops', 'guess-6');
    assert.equal(limited.status, 429, limited.body);
    const retryAfter = Number(limited.headers['retry-after']);
    assert.ok(
      Number.isInteger(retryAfter) && retryAfter > 0 && retryAfter <= 300,
      `Retry-After: ${String(limited.headers['retry-after'])}`,
    );
    const correct = await attacker.login('ops', 'ops-pw-1');
    assert.equal(correct.status, 429, 'the right password is refused while limited');
    assert.equal(correct.headers['set-cookie'], undefined);
    const elsewhere = new ConsoleClient(base, { localAddress: '127.0.0.4' });
    assert.equal((await elsewhere.login('ops', 'ops-pw-1')).status, 200);
    assert.ok(gateway.logs().some((line: LogLine) => line.msg === 'console login refused' && line.status === 429));
  });

  it('the rate limit holds for logins sent at the same time: of 20 parallel wrong guesses at most 5 are checked', async () => {
    const attacker = new ConsoleClient(base, { localAddress: '127.0.0.5' });
    const answers = await Promise.all(Array.from({ length: 20 }, (_, index) => attacker.login('ops', `parallel-guess-${index}`)));
    const statuses = answers.map((answer) => answer.status);
    assert.ok(
      statuses.every((status) => status === 401 || status === 429),
      statuses.join(','),
    );
    // Attempts are counted before the (async) scrypt check, and only a few checks run at once:
    // parallel guesses are limited too. Then one after the other until the address is limited.
    let checked = statuses.filter((status) => status === 401).length;
    assert.ok(checked <= 5, `${checked} of 20 parallel guesses were checked (401), ${20 - checked} refused (429)`);
    let after = 0;
    for (let attempt = 0; attempt < 6 && after !== 429; attempt++) {
      after = (await attacker.login('ops', `one-more-guess-${attempt}`)).status;
      if (after === 401) checked++;
    }
    assert.equal(after, 429, 'the address is limited');
    assert.equal(checked, 5, 'five checked guesses in all');
  });

  it('a viewer logs in (HttpOnly, SameSite=Strict, Path=/ cookie; not Secure over HTTP), reads every page, and cannot write', async () => {
    const viewer = new ConsoleClient(base);
    const login = await viewer.login('viewer', 'viewer-pw-1');
    assert.equal(login.status, 200, login.body);
    const cookie = setCookie(login);
    const attributes = cookie
      .split(';')
      .slice(1)
      .map((part) => part.trim().toLowerCase());
    assert.match(cookie, /^plc2mqtt_session=[A-Za-z0-9_-]{32,};/);
    assert.ok(attributes.includes('httponly'), cookie);
    assert.ok(attributes.includes('samesite=strict'), cookie);
    assert.ok(attributes.includes('path=/'), cookie);
    assert.ok(!attributes.includes('secure'), `not Secure over plain HTTP: ${cookie}`);
    const session = await viewer.session();
    assert.deepEqual(
      { user: session.user, role: session.role, authenticated: session.authenticated },
      { user: 'viewer', role: 'viewer', authenticated: true },
    );
    for (const path of ['overview', 'devices', 'tags', 'broker', 'config', 'trend?device=plc&tag=level'])
      assert.equal((await viewer.get(`/api/console/${path}`)).status, 200, path);
    const tags = json<{ tags: TagRow[] }>(await viewer.get('/api/console/tags')).tags;
    assert.ok(tags.some((tag) => tag.device === 'plc' && tag.tag === 'level' && tag.writable));
    const validate = await viewer.post('/api/console/validate', '{ "devices": [] }');
    assert.equal(validate.status, 200, 'a viewer may validate');

    const writesBefore = modbus.writes.length;
    const write = await viewer.post('/api/console/write', { device: 'plc', tag: 'level', value: 999 });
    assert.equal(write.status, 403, write.body);
    assert.equal(modbus.writes.length, writesBefore, 'nothing written');
    assert.notEqual(modbus.holding[0], 999);
    assert.ok(!gateway.audits().some((line) => line.requested === 999), 'never reached the command handler');
  });

  it('an operator writes a writable tag: the Modbus server has it, the audit line names the user; a non-writable tag is refused and audited', async () => {
    const ops = new ConsoleClient(base);
    assert.equal((await ops.login('ops', 'ops-pw-1')).status, 200);
    const noCsrf = await ops.post('/api/console/write', { device: 'plc', tag: 'level', value: 2024 }, { csrf: false });
    assert.equal(noCsrf.status, 403);
    const otherToken = new ConsoleClient(base);
    await otherToken.login('ops', 'ops-pw-1');
    const crossed = await ops.post('/api/console/write', { device: 'plc', tag: 'level', value: 2024 }, { csrf: otherToken.csrf! });
    assert.equal(crossed.status, 403, "another session's token does not fit");
    assert.notEqual(modbus.holding[0], 2024);

    const answer = json<WriteAnswer>(await ops.post('/api/console/write', { device: 'plc', tag: 'level', value: 2024 }));
    assert.equal(answer.ok, true, answer.error);
    assert.equal(modbus.holding[0], 2024);
    const audit = await gateway.waitForLog((line) => line.audit === 'write' && line.requested === 2024, 5000);
    assert.deepEqual(
      { source: audit.source, username: audit.username, clientId: audit.clientId, result: audit.result },
      { source: 'console', username: 'ops', clientId: 'console:ops', result: 'written' },
    );
    const refused = json<WriteAnswer>(await ops.post('/api/console/write', { device: 'plc', tag: 'fixed', value: 1 }));
    assert.equal(refused.ok, false);
    assert.equal(modbus.holding[1], 77);
    const refusal = await gateway.waitForLog((line) => line.audit === 'write' && line.tag === 'fixed' && line.username === 'ops', 5000);
    assert.equal(refusal.result, 'rejected');
    assert.equal(refusal.source, 'console');
  });

  it('a live stream ends with its session (logout); /api/status needs a session off loopback', async () => {
    const ops = new ConsoleClient(base);
    const login = await ops.login('ops', 'ops-pw-1');
    assert.equal(login.status, 200);
    const events = await SseReader.open(`${base}/api/console/events`, { Cookie: sessionCookie(login) });
    try {
      await events.waitFor('the overview', (event) => event.event === 'overview', 5000);
      assert.equal((await send(`${base}/api/status`)).status, 401, 'anonymous: no tag values');
      assert.equal((await ops.get('/api/status')).status, 200, 'with the console session');
      assert.equal((await ops.post('/api/console/logout', '')).status, 204);
      await waitFor(() => events.ended, 5000, 'the stream to end with the session');
    } finally {
      events.close();
    }
  });

  it('logout ends the session (and needs the CSRF token)', async () => {
    const ops = new ConsoleClient(base);
    assert.equal((await ops.login('ops', 'ops-pw-1')).status, 200);
    assert.equal((await ops.post('/api/console/logout', '', { csrf: false })).status, 403);
    assert.equal((await ops.get('/api/console/overview')).status, 200);
    const logout = await ops.post('/api/console/logout', '');
    assert.equal(logout.status, 204);
    assert.match(setCookie(logout), /^plc2mqtt_session=;.*Max-Age=0/);
    assert.equal((await ops.get('/api/console/overview')).status, 401);
    assert.equal((await ops.session()).authenticated, false);
  });

  it('a reload (SIGHUP) that removes a user or changes a role ends their sessions', async () => {
    const ops = new ConsoleClient(base);
    const viewer = new ConsoleClient(base);
    assert.equal((await ops.login('ops', 'ops-pw-1')).status, 200);
    assert.equal((await viewer.login('viewer', 'viewer-pw-1')).status, 200);
    const events = await SseReader.open(`${base}/api/console/events`, { Cookie: viewer.cookie! });
    assert.equal(events.status, 200);
    events.close();
    users = [{ username: 'ops', passwordHash: users[0]!.passwordHash, console: 'viewer' }, users[2]!];
    writeConfig(dir, config());
    const mark = gateway.logs().length;
    gateway.child.kill('SIGHUP');
    await gateway.waitForLog('config reloaded', 15_000, mark);
    assert.equal((await viewer.get('/api/console/overview')).status, 401, 'the removed user');
    assert.equal((await ops.get('/api/console/overview')).status, 401, 'the user whose role changed');
    const writesBefore = modbus.writes.length;
    assert.equal((await ops.post('/api/console/write', { device: 'plc', tag: 'level', value: 7 })).status, 401);
    assert.equal(modbus.writes.length, writesBefore);
    assert.equal((await new ConsoleClient(base).login('viewer', 'viewer-pw-1')).status, 401);
    const again = new ConsoleClient(base);
    assert.equal((await again.login('ops', 'ops-pw-1')).status, 200);
    assert.equal((await again.session()).role, 'viewer');
    assert.equal((await again.post('/api/console/write', { device: 'plc', tag: 'level', value: 7 })).status, 403);
  });
});

describe('web console API over HTTPS (http.tls)', () => {
  const dir = makeTempDir('plc2mqtt-console-tls-');
  let gateway: ConsoleGateway;
  let ca: Buffer;
  let httpPort = 0;

  before(async () => {
    const pki = makePki(dir);
    ca = readFileSync(pki.ca);
    httpPort = await freePort();
    const file = writeConfig(dir, {
      gateway: { name: 'tgw', dataDir: join(dir, 'data'), logLevel: 'info', shutdownTimeout: '10s' },
      broker: {
        listeners: [{ type: 'tcp', host: '127.0.0.1', port: await freePort() }],
        users: [{ username: 'ops', passwordHash: await hashOf('ops-pw-1'), console: 'operator' }],
      },
      http: { host: '0.0.0.0', port: httpPort, tls: { cert: pki.serverCert, key: pki.serverKey } },
    });
    gateway = new ConsoleGateway(file);
    const listening = await gateway.waitForLog('operations endpoint listening', 30_000);
    assert.match(String(listening.url), /^https:\/\//);
  });

  after(async () => {
    await gateway?.stop();
    await killAllChildren();
    removeDir(dir);
  });

  it('speaks HTTPS (not plain HTTP); the session cookie is Secure', async () => {
    const base = `https://127.0.0.1:${httpPort}`;
    assert.equal((await send(`${base}/healthz`, { ca })).status, 200);
    await assert.rejects(send(`${base}/healthz`), 'no CA: the certificate is not trusted');
    const plain = await send(`http://127.0.0.1:${httpPort}/healthz`).then(
      (answer) => answer.status,
      () => 'refused',
    );
    assert.notEqual(plain, 200, 'plain HTTP gets no health answer');
    const ops = new ConsoleClient(base, { ca });
    const login = await ops.login('ops', 'ops-pw-1');
    assert.equal(login.status, 200, login.body);
    const attributes = setCookie(login)
      .split(';')
      .map((part) => part.trim().toLowerCase());
    assert.ok(attributes.includes('secure'), setCookie(login));
    assert.ok(attributes.includes('httponly'));
    const session: SessionInfo = await ops.session();
    assert.equal(session.role, 'operator');
    assert.equal((await ops.get('/api/console/overview')).status, 200);
  });
});
