// What the integrated broker logs when clients misbehave, read from its captured log: failed
// logins with the remote address, client id and user (never the password); TLS handshake
// failures with address and cause, once per address and cause; connection-limit refusals as
// episodes (a warning when one starts, the count when it ends); malformed packets at warn, once
// per address, random bytes not mistaken for an oversize packet; and the per-client subscription
// limit (broker.limits.maxSubscriptions), logged once per client.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { connect as connectTcp, type Socket } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { connect as connectTls, type ConnectionOptions } from 'node:tls';
import type { MqttClient } from 'mqtt';
import { generate } from 'mqtt-packet';
import { invalidHeaderByte, PacketSizeGuard } from '../src/broker/packet-guard.js';
import { hashPassword } from '../src/broker/security.js';
import { brokerSection } from '../src/config/schema.js';
import {
  BrokerUnderTest,
  connectClient,
  endAll,
  RawClient,
  MOSQUITTO_SUB,
  removeDir,
  run,
  subscribeGranted,
  tempDir,
  tryConnect,
  type LogRecord,
} from './helpers/broker-harness.js';
import { makePki, type Pki } from './helpers/cloud-broker.js';
import { waitFor } from './helpers/net.js';

const TCP = [{ type: 'tcp' as const, host: '127.0.0.1', port: 0 }];
const MALFORMED = 'malformed mqtt packet: client disconnected';
const OVERSIZE = 'mqtt packet larger than broker.limits.maxPacketSize: client disconnected';

/** A raw TCP connection that writes `bytes` and resolves once the broker closed it (bounded). */
function sendAndWaitForClose(port: number, bytes: Buffer): Promise<{ localPort: number; closed: boolean }> {
  return new Promise((resolve) => {
    const socket: Socket = connectTcp(port, '127.0.0.1');
    let localPort = 0;
    const timer = setTimeout(() => {
      socket.destroy();
      resolve({ localPort, closed: false });
    }, 5000);
    socket.on('error', () => undefined);
    socket.once('connect', () => {
      localPort = socket.localPort ?? 0;
      socket.write(bytes);
    });
    socket.once('close', () => {
      clearTimeout(timer);
      resolve({ localPort, closed: true });
    });
    socket.on('data', () => undefined);
  });
}

const connectBytes = (fields: Record<string, unknown> = {}) =>
  generate({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clean: true, keepalive: 30, clientId: 'raw', ...fields } as never);

describe('failed logins in the log', () => {
  let broker: BrokerUnderTest;

  before(async () => {
    broker = await BrokerUnderTest.start({
      listeners: TCP,
      users: [{ username: 'hmi', passwordHash: await hashPassword('s3cret-right') }],
    });
  });

  after(async () => {
    await broker?.close();
  });

  it('name the remote address (ip:port), the client id and the user, never the password', async () => {
    const raw = await RawClient.connect(broker.port(), {
      clientId: 'panel-7',
      username: 'hmi',
      password: Buffer.from('Hunter2-wrong-guess'),
    });
    const localPort = raw.socket.localPort;
    try {
      assert.equal((await raw.next('connack', 10_000)).returnCode, 4);
      const unknown = await RawClient.connect(broker.port(), {
        clientId: 'panel-8',
        username: 'nobody',
        password: Buffer.from('Other-secret-guess'),
      });
      assert.equal((await unknown.next('connack', 10_000)).returnCode, 4);
      unknown.destroy();
      const failures = broker.logs.withMessage('mqtt client authentication failed');
      const wrong = failures.find((record) => record.username === 'hmi');
      assert.ok(wrong, broker.logs.text());
      assert.equal(wrong.remote, `127.0.0.1:${localPort}`);
      assert.equal(wrong.clientId, 'panel-7');
      assert.equal(wrong.why, 'wrong password');
      assert.equal(wrong.level, 40);
      assert.ok(failures.some((record) => record.username === 'nobody' && record.clientId === 'panel-8'));
      for (const secret of ['Hunter2-wrong-guess', 'Other-secret-guess', 's3cret-right'])
        assert.ok(!broker.logs.text().includes(secret), `the log contains ${secret}`);
    } finally {
      raw.destroy();
    }
  });
});

describe('TLS handshake failures in the log', () => {
  const dir = tempDir('plc2mqtt-broker-logging-');
  let pki: Pki;
  let broker: BrokerUnderTest;

  before(async () => {
    pki = makePki(dir);
    broker = await BrokerUnderTest.start({
      listeners: [
        {
          type: 'tls',
          host: '127.0.0.1',
          port: 0,
          cert: pki.serverCert,
          key: pki.serverKey,
          ca: pki.ca,
          requireClientCertificate: true,
        },
      ],
      allowAnonymous: true,
    });
  });

  after(async () => {
    await broker?.close();
    removeDir(dir);
  });

  const failed = () => broker.logs.withMessage('TLS handshake failed');
  /** A TLS handshake with these options; resolves once the connection is over, whatever happened. */
  const handshake = (options: ConnectionOptions) =>
    new Promise<void>((resolve) => {
      const socket = connectTls({ host: '127.0.0.1', port: broker.port('tls'), servername: 'localhost', ...options });
      socket.on('error', () => resolve());
      socket.on('close', () => resolve());
      socket.on('secureConnect', () => {
        // TLS 1.3: the server refuses the client certificate after the client's side completed.
        socket.write(connectBytes());
        setTimeout(() => socket.destroy(), 1000);
      });
    });

  it('name the remote address and the cause, one line per address and cause', async () => {
    const ca = readFileSync(pki.ca);
    // Twice each: deduplicated.
    for (let round = 0; round < 2; round++) {
      await handshake({ ca }); // no client certificate
      // A client that does not know the broker's CA: mosquitto says so (alert unknown CA).
      await run(MOSQUITTO_SUB, [
        '-h',
        '127.0.0.1',
        '-p',
        String(broker.port('tls')),
        '--cafile',
        pki.otherCa,
        '-t',
        'x',
        '-C',
        '1',
        '-W',
        '3',
      ]);
      const plain = await sendAndWaitForClose(broker.port('tls'), connectBytes()); // plain MQTT on the TLS port
      assert.equal(plain.closed, true);
    }
    await waitFor(
      () => failed().length >= 3,
      5000,
      () => `3 causes logged: ${JSON.stringify(failed())}`,
    );
    await new Promise((resolve) => setTimeout(resolve, 300));
    const causes = failed().map((record) => String(record.cause));
    assert.equal(causes.length, new Set(causes).size, `one line per cause: ${JSON.stringify(failed())}`);
    const byCause = (pattern: RegExp) => {
      const found = failed().find((record) => pattern.test(String(record.cause)));
      assert.ok(found, `${pattern}: ${JSON.stringify(failed())}`);
      return found;
    };
    for (const record of [byCause(/^no client certificate$/), byCause(/certificate unknown/), byCause(/wrong version/)]) {
      assert.match(String(record.remote), /^127\.0\.0\.1:\d+$/);
      assert.equal(record.level, 40);
      assert.equal(typeof record.error, 'string');
    }
  });
});

describe('connection-limit refusals in the log, by episode', () => {
  const MAX = 2;
  let broker: BrokerUnderTest;
  const clients: MqttClient[] = [];

  before(async () => {
    broker = await BrokerUnderTest.start({ listeners: TCP, allowAnonymous: true, limits: { maxConnections: MAX } });
  });

  after(async () => {
    await endAll(clients);
    await broker?.close();
  });

  const warned = () => broker.logs.withMessage('connection refused: broker.limits.maxConnections reached');
  const ended = () => broker.logs.withMessage('connections refused for broker.limits.maxConnections: the episode ended');

  it('one warning when an episode starts, one info line with its count when it ends; a new episode warns again', async () => {
    for (let index = 0; index < MAX; index++) clients.push(await connectClient(broker.url()));
    for (let index = 0; index < 3; index++) {
      const refused = await tryConnect(broker.url(), { connectTimeout: 2000 });
      if (refused.ok) clients.push(refused.client);
      assert.equal(refused.ok, false);
    }
    assert.equal(warned().length, 1, broker.logs.text());
    assert.equal(warned()[0]!.max, MAX);
    assert.match(String(warned()[0]!.remote), /^127\.0\.0\.1:\d+$/);
    assert.equal(ended().length, 0);

    // A slot frees, a connection is accepted: the episode is over.
    await clients.pop()!.endAsync();
    let next: MqttClient | undefined;
    await waitFor(
      async () => {
        const outcome = await tryConnect(broker.url(), { connectTimeout: 1000 });
        if (outcome.ok) next = outcome.client;
        return outcome.ok;
      },
      5000,
      'a connection in the freed slot',
    );
    clients.push(next!);
    assert.equal(ended().length, 1, broker.logs.text());
    const episode = ended()[0]! as LogRecord & { refused: number };
    assert.ok(episode.refused >= 3, JSON.stringify(episode));
    assert.equal(episode.level, 30);

    // Full again: a new episode, a new warning.
    const again = await tryConnect(broker.url(), { connectTimeout: 2000 });
    if (again.ok) clients.push(again.client);
    assert.equal(again.ok, false);
    assert.equal(warned().length, 2, broker.logs.text());
  });
});

describe('malformed packets in the log', () => {
  const MAX = 1024;
  let broker: BrokerUnderTest;

  before(async () => {
    broker = await BrokerUnderTest.start({ listeners: TCP, allowAnonymous: true, limits: { maxPacketSize: MAX } });
  });

  after(async () => {
    await broker?.close();
  });

  const malformed = () => broker.logs.withMessage(MALFORMED);

  it("a packet the parser refuses: a warning with the remote address and the parser's message, once per address", async () => {
    // Passes the framing guard (a CONNECT), but the protocol name is wrong.
    const bad = connectBytes({ protocolId: 'MQTX' });
    const first = await sendAndWaitForClose(broker.port(), bad);
    assert.equal(first.closed, true);
    await waitFor(() => malformed().length > 0, 3000, 'the warning');
    const record = malformed()[0]!;
    assert.equal(record.level, 40);
    assert.equal(record.remote, `127.0.0.1:${first.localPort}`);
    assert.match(String(record.error), /Invalid protocolId/);
    const second = await sendAndWaitForClose(broker.port(), bad);
    assert.equal(second.closed, true);
    await new Promise((resolve) => setTimeout(resolve, 200));
    assert.equal(malformed().length, 1, 'deduplicated per address');
  });

  it('random bytes are malformed, not "larger than maxPacketSize"; a real oversize PUBLISH still is', async () => {
    const before = broker.logs.withMessage(OVERSIZE).length;
    // Each would announce a huge packet if read as a header: PUBLISH before CONNECT, reserved type 0,
    // an HTTP request, a TLS ClientHello, SUBSCRIBE with wrong flags after a CONNECT.
    const garbage = [
      Buffer.from([0x30, 0xff, 0xff, 0xff, 0x7f]),
      Buffer.from([0x00, 0xff, 0xff, 0xff, 0x7f]),
      Buffer.from('GET /mqtt HTTP/1.1\r\nHost: x\r\n\r\n'),
      Buffer.from([0x16, 0x03, 0x01, 0xff, 0xff, 0x01]),
      Buffer.concat([connectBytes({ clientId: 'then-garbage' }), Buffer.from([0x80, 0xff, 0xff, 0x7f])]),
    ];
    for (const bytes of garbage) assert.equal((await sendAndWaitForClose(broker.port(), bytes)).closed, true, bytes.toString('hex'));
    await new Promise((resolve) => setTimeout(resolve, 200));
    assert.equal(broker.logs.withMessage(OVERSIZE).length, before, broker.logs.text());
    // (Logged once per address: the first test's line stands for these too.)
    assert.equal(malformed().length, 1);
    assert.ok(broker.broker.stats.denied >= garbage.length + 2, `denied = ${broker.broker.stats.denied}: ${broker.logs.text()}`);

    const raw = await RawClient.connect(broker.port());
    try {
      assert.equal((await raw.next('connack')).returnCode, 0);
      raw.send({ cmd: 'publish', topic: 'big', payload: Buffer.alloc(MAX * 2), qos: 0, retain: false, dup: false });
      assert.equal(await raw.closedWithin(3000), true);
      await waitFor(() => broker.logs.withMessage(OVERSIZE).length > before, 3000, 'the size warning');
    } finally {
      raw.destroy();
    }
  });

  it('the guard tells a malformed fixed header from an oversize one (strict), and stays lenient for feed()', () => {
    const strict = () => new PacketSizeGuard(100, { strict: true });
    const connect = connectBytes();
    assert.equal(strict().check(connect), undefined);
    assert.deepEqual(strict().check(Buffer.concat([connect, Buffer.from([0x30, 0xff, 0x7f])])), { problem: 'size', bytes: 16383 });
    const reasonOf = (bytes: Buffer) => {
      const verdict = strict().check(bytes);
      assert.equal(verdict?.problem, 'malformed', bytes.toString('hex'));
      return verdict.problem === 'malformed' ? verdict.reason : '';
    };
    assert.match(reasonOf(Buffer.from([0x30, 0x05])), /first packet is not CONNECT/);
    assert.equal(strict().check(Buffer.concat([connect, Buffer.from([0x62, 0x02, 0, 1])])), undefined, 'PUBREL, flags 2');
    assert.match(reasonOf(Buffer.concat([connect, Buffer.from([0x60, 0x02, 0, 1])])), /0x60/);
    assert.match(reasonOf(Buffer.concat([connect, Buffer.from([0x80, 0x05])])), /flags 2, not 0/);
    assert.match(reasonOf(Buffer.concat([connect, Buffer.from([0x36, 0x05])])), /QoS 3/);
    assert.match(reasonOf(Buffer.concat([connect, Buffer.from([0x30, 0xff, 0xff, 0xff, 0xff, 0x01])])), /longer than 4 bytes/);
    // Byte by byte: the same verdict on the byte that shows it.
    const guard = strict();
    const stream = Buffer.concat([connect, Buffer.from([0xa0])]);
    const verdicts = [...stream].map((byte) => guard.check(Buffer.from([byte])));
    assert.deepEqual(
      verdicts.map((verdict, index) => (verdict ? index : -1)).filter((index) => index >= 0),
      [stream.length - 1],
    );
    // Lenient (the default): only sizes, as before.
    assert.equal(new PacketSizeGuard(100).feed(Buffer.from([0x00, 0x05])), undefined);
  });

  const valid: Array<[byte: number, what: string]> = [
    [0x10, 'CONNECT'],
    [0x30, 'PUBLISH QoS 0'],
    [0x3d, 'PUBLISH DUP QoS 2 retained'],
    [0x40, 'PUBACK'],
    [0x62, 'PUBREL'],
    [0x82, 'SUBSCRIBE'],
    [0xa2, 'UNSUBSCRIBE'],
    [0xc0, 'PINGREQ'],
    [0xe0, 'DISCONNECT'],
    [0xf0, 'AUTH (MQTT 5)'],
  ];
  const invalid: Array<[byte: number, what: string]> = [
    [0x00, 'reserved type 0'],
    [0x0f, 'reserved type 0 with flags'],
    [0x11, 'CONNECT with flags'],
    [0x36, 'PUBLISH QoS 3'],
    [0x60, 'PUBREL without its flag'],
    [0x80, 'SUBSCRIBE without its flag'],
    [0xa0, 'UNSUBSCRIBE without its flag'],
    [0xc1, 'PINGREQ with flags'],
    [0xf1, 'AUTH with flags'],
  ];
  it('fixed header bytes: the ones a client may send pass, the others are named', () => {
    for (const [byte, what] of valid) assert.equal(invalidHeaderByte(byte), undefined, what);
    for (const [byte, what] of invalid) assert.equal(typeof invalidHeaderByte(byte), 'string', what);
  });
});

describe('limits.maxSubscriptions', () => {
  const MAX = 5;
  let broker: BrokerUnderTest;
  const clients: MqttClient[] = [];

  before(async () => {
    broker = await BrokerUnderTest.start({ listeners: TCP, allowAnonymous: true, limits: { maxSubscriptions: MAX } });
  });

  after(async () => {
    await endAll(clients);
    await broker?.close();
  });

  const refusedLog = () => broker.logs.withMessage('subscription refused: the client has broker.limits.maxSubscriptions subscriptions');

  it('defaults to 1000 and is documented', () => {
    const limits = brokerSection.parse({}).limits;
    assert.equal(limits.maxSubscriptions, 1000);
  });

  for (const clean of [true, false]) {
    it(`10 filters in one SUBSCRIBE with room for 3 grant exactly 3 (${clean ? 'clean' : 'persistent'} session); the client stays`, async () => {
      const client = await connectClient(broker.url(), { clientId: `subs-${clean}`, clean });
      clients.push(client);
      assert.deepEqual(await subscribeGranted(client, ['a/1', 'a/2']), [1, 1]);
      const filters = Array.from({ length: 10 }, (_, index) => `b/${index}`);
      const granted = await subscribeGranted(client, filters);
      assert.deepEqual(granted, [1, 1, 1, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80]);
      assert.equal(client.connected, true);
      const listed = broker.broker.clients().find((entry) => entry.id === `subs-${clean}`);
      assert.equal(listed?.subscriptions, MAX);
      // Subscribing again to filters it has is no new subscription: granted at the limit.
      assert.deepEqual(await subscribeGranted(client, ['a/1', 'b/2', 'c/new']), [1, 1, 0x80]);
      // Room again after an unsubscribe.
      await client.unsubscribeAsync('a/1');
      assert.deepEqual(await subscribeGranted(client, ['c/new', 'c/other']), [1, 0x80]);
      assert.equal(client.connected, true);
      const logged = refusedLog().filter((record) => record.clientId === `subs-${clean}`);
      assert.equal(logged.length, 1, 'once per client');
      assert.equal(logged[0]!.max, MAX);
    });
  }
});
