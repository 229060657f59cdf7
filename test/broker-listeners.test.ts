// The integrated broker's TLS and WebSocket listeners with a test CA made by openssl: mqtt.js
// with the CA, Debian's mosquitto_sub --cafile, mutual TLS (requireClientCertificate), MQTT over
// ws:// and wss://, and the packet size limit on the TLS and WebSocket paths.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { MqttClient } from 'mqtt';
import { generate } from 'mqtt-packet';
import { WebSocket } from 'ws';
import {
  BrokerUnderTest,
  closedWithin,
  connectClient,
  endAll,
  MOSQUITTO_PUB,
  MOSQUITTO_SUB,
  recordMessages,
  removeDir,
  roundTrip,
  run,
  subscribeGranted,
  tempDir,
  tryConnect,
} from './helpers/broker-harness.js';
import { makePki, type Pki } from './helpers/cloud-broker.js';
import { waitFor } from './helpers/net.js';

/** A client certificate signed by the unrelated CA of makePki ("other-ca"): must be refused. */
function rogueClientCertificate(pki: Pki): { cert: string; key: string } {
  const file = (name: string) => join(pki.dir, name);
  const openssl = (...args: string[]) => execFileSync('openssl', args, { cwd: pki.dir, stdio: ['ignore', 'pipe', 'pipe'] });
  openssl(
    'req',
    '-new',
    '-newkey',
    'ec',
    '-pkeyopt',
    'ec_paramgen_curve:prime256v1',
    '-nodes',
    '-keyout',
    file('rogue.key'),
    '-out',
    file('rogue.csr'),
    '-subj',
    '/CN=rogue',
  );
  writeFileSync(file('rogue.ext'), 'extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n');
  openssl(
    'x509',
    '-req',
    '-in',
    file('rogue.csr'),
    '-CA',
    file('other-ca.crt'),
    '-CAkey',
    file('other-ca.key'),
    '-CAcreateserial',
    '-out',
    file('rogue.crt'),
    '-days',
    '2',
    '-extfile',
    file('rogue.ext'),
  );
  return { cert: file('rogue.crt'), key: file('rogue.key') };
}

const MAX_PACKET = 64 * 1024;

describe('TLS and WebSocket listeners', () => {
  const dir = tempDir('plc2mqtt-broker-tls-');
  let pki: Pki;
  let ca: Buffer;
  let broker: BrokerUnderTest;
  let mutual: BrokerUnderTest;
  const clients: MqttClient[] = [];
  /** A plain TCP client subscribed to everything: the other side of every cross-listener round trip. */
  let tcp: MqttClient;
  let tcpSeen: ReturnType<typeof recordMessages>;

  const keep = (client: MqttClient) => {
    clients.push(client);
    return client;
  };

  before(async () => {
    pki = makePki(dir);
    ca = readFileSync(pki.ca);
    const tlsFiles = { cert: pki.serverCert, key: pki.serverKey };
    broker = await BrokerUnderTest.start({
      listeners: [
        { type: 'tcp', host: '127.0.0.1', port: 0 },
        { type: 'tls', host: '127.0.0.1', port: 0, ...tlsFiles },
        { type: 'ws', host: '127.0.0.1', port: 0 },
        { type: 'wss', host: '127.0.0.1', port: 0, path: '/secure-mqtt', ...tlsFiles },
      ],
      allowAnonymous: true,
      limits: { maxPacketSize: MAX_PACKET },
    });
    mutual = await BrokerUnderTest.start({
      listeners: [
        { type: 'tcp', host: '127.0.0.1', port: 0 },
        { type: 'tls', host: '127.0.0.1', port: 0, ...tlsFiles, ca: pki.ca, requireClientCertificate: true },
      ],
      allowAnonymous: true,
    });
    tcp = keep(await connectClient(broker.url('tcp')));
    tcpSeen = recordMessages(tcp);
    assert.deepEqual(await subscribeGranted(tcp, ['#']), [1]);
  });

  after(async () => {
    await endAll(clients);
    await broker?.close();
    await mutual?.close();
    removeDir(dir);
  });

  it('addresses() reports every listener with its real port and URL', () => {
    const addresses = broker.broker.addresses();
    assert.deepEqual(
      addresses.map((address) => address.type),
      ['tcp', 'tls', 'ws', 'wss'],
    );
    for (const address of addresses) assert.ok(address.port > 0 && address.host === '127.0.0.1', JSON.stringify(address));
    assert.equal(broker.url('tls'), `mqtts://127.0.0.1:${broker.port('tls')}`);
    assert.equal(broker.url('ws'), `ws://127.0.0.1:${broker.port('ws')}/mqtt`);
    assert.equal(broker.url('wss'), `wss://127.0.0.1:${broker.port('wss')}/secure-mqtt`);
  });

  describe('TLS', () => {
    it('mqtt.js with the test CA connects over mqtts:// and talks to a TCP client', async () => {
      const client = keep(await connectClient(broker.url('tls'), { ca }));
      const received = recordMessages(client);
      assert.deepEqual(await subscribeGranted(client, ['tls/in']), [1]);
      await roundTrip(client, tcpSeen, 'tls/out', 'over TLS');
      await roundTrip(tcp, received, 'tls/in', 'to the TLS client');
    });

    it('the certificate is really checked: without the CA, or with another CA, the client refuses the broker', async () => {
      for (const options of [{}, { ca: readFileSync(pki.otherCa) }]) {
        const outcome = await tryConnect(broker.url('tls'), options);
        assert.equal(outcome.ok, false);
        assert.match(
          !outcome.ok ? `${outcome.errorCode} ${outcome.message}` : '',
          /SELF_SIGNED|UNABLE_TO_VERIFY|unable to (get|verify)|self.signed/i,
        );
      }
    });

    it('plain MQTT on the TLS port does not get through', async () => {
      const outcome = await tryConnect(`mqtt://127.0.0.1:${broker.port('tls')}`, { connectTimeout: 2000 });
      assert.equal(outcome.ok, false);
    });

    it('mosquitto_sub --cafile receives a retained message over TLS', async () => {
      await tcp.publishAsync('tls/retained', 'retained over TLS', { qos: 1, retain: true });
      const result = await run(MOSQUITTO_SUB, [
        '-h',
        '127.0.0.1',
        '-p',
        String(broker.port('tls')),
        '--cafile',
        pki.ca,
        '-t',
        'tls/retained',
        '-C',
        '1',
        '-W',
        '10',
        '-v',
      ]);
      assert.equal(result.code, 0, result.stderr);
      assert.equal(result.stdout, 'tls/retained retained over TLS\n');
      await tcp.publishAsync('tls/retained', '', { qos: 1, retain: true });
    });

    it('mosquitto_pub --cafile publishes over TLS to a TCP subscriber', async () => {
      const result = await run(MOSQUITTO_PUB, [
        '-h',
        '127.0.0.1',
        '-p',
        String(broker.port('tls')),
        '--cafile',
        pki.ca,
        '-t',
        'tls/from-mosquitto',
        '-m',
        'hello from mosquitto_pub',
        '-q',
        '1',
      ]);
      assert.equal(result.code, 0, result.stderr);
      await waitFor(
        () => tcpSeen.some((message) => message.topic === 'tls/from-mosquitto' && message.payload === 'hello from mosquitto_pub'),
        3000,
        'the message',
      );
    });

    it('mosquitto_sub with another CA refuses the broker', async () => {
      const result = await run(MOSQUITTO_SUB, [
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
        '5',
      ]);
      assert.notEqual(result.code, 0);
      assert.match(result.stderr, /certificate verify failed|Protocol error|TLS|Error/i);
    });

    it('an oversize packet over TLS disconnects that client only', async () => {
      const big = keep(await connectClient(broker.url('tls'), { ca }));
      big.publish('tls/big', Buffer.alloc(MAX_PACKET + 1024, 0x61), { qos: 0 });
      assert.equal(await closedWithin(big, 3000), true);
      await roundTrip(tcp, tcpSeen, 'tls/after-big', 'still here');
      // Whether the oversize packet itself is delivered: broker-limits.test.ts (a known bug when it arrives in one read).
    });
  });

  describe('mutual TLS (requireClientCertificate)', () => {
    it('a client without a certificate is refused in the handshake, and the broker logs it', async () => {
      const outcome = await tryConnect(mutual.url('tls'), { ca });
      assert.equal(outcome.ok, false);
      assert.match(
        !outcome.ok ? `${outcome.errorCode} ${outcome.message}` : '',
        /certificate required|CERTIFICATE_REQUIRED|handshake|ECONNRESET|closed/i,
      );
      await waitFor(() => mutual.logs.withMessage('TLS handshake failed').length > 0, 3000, 'the log line');
      assert.match(String(mutual.logs.withMessage('TLS handshake failed')[0]!.error), /did not return a certificate/);
      assert.equal(mutual.broker.clientCount, 0);
    });

    it('a client certificate from another CA is refused', async () => {
      const rogue = rogueClientCertificate(pki);
      const outcome = await tryConnect(mutual.url('tls'), { ca, cert: readFileSync(rogue.cert), key: readFileSync(rogue.key) });
      assert.equal(outcome.ok, false, 'connected with a certificate the CA did not sign');
      assert.equal(mutual.broker.clientCount, 0);
    });

    it('a client with a certificate signed by the CA connects and talks', async () => {
      const client = keep(
        await connectClient(mutual.url('tls'), { ca, cert: readFileSync(pki.clientCert), key: readFileSync(pki.clientKey) }),
      );
      const plain = keep(await connectClient(mutual.url('tcp')));
      const received = recordMessages(plain);
      assert.deepEqual(await subscribeGranted(plain, ['mtls/#']), [1]);
      await roundTrip(client, received, 'mtls/hello', 'from a certified client');
    });

    it('mosquitto_sub with --cert/--key receives a retained message; without them it is refused', async () => {
      const plain = keep(await connectClient(mutual.url('tcp')));
      await plain.publishAsync('mtls/retained', 'retained for certified clients', { qos: 1, retain: true });
      const base = [
        '-h',
        '127.0.0.1',
        '-p',
        String(mutual.port('tls')),
        '--cafile',
        pki.ca,
        '-t',
        'mtls/retained',
        '-C',
        '1',
        '-W',
        '10',
        '-v',
      ];
      const withCert = await run(MOSQUITTO_SUB, [...base, '--cert', pki.clientCert, '--key', pki.clientKey]);
      assert.equal(withCert.code, 0, withCert.stderr);
      assert.equal(withCert.stdout, 'mtls/retained retained for certified clients\n');
      const withoutCert = await run(MOSQUITTO_SUB, base);
      assert.notEqual(withoutCert.code, 0);
      assert.equal(withoutCert.stdout, '');
    });
  });

  describe('WebSocket', () => {
    it('mqtt.js over ws://127.0.0.1:<port>/mqtt publishes and subscribes', async () => {
      const client = keep(await connectClient(broker.url('ws')));
      const received = recordMessages(client);
      assert.deepEqual(await subscribeGranted(client, ['ws/#']), [1]);
      await roundTrip(client, received, 'ws/echo', 'ws to ws');
      await roundTrip(client, tcpSeen, 'ws/to-tcp', 'ws to tcp');
      await roundTrip(tcp, received, 'ws/from-tcp', 'tcp to ws');
    });

    it('a retained message reaches a WebSocket subscriber', async () => {
      await tcp.publishAsync('ws/retained', 'retained for the dashboard', { qos: 1, retain: true });
      const client = keep(await connectClient(broker.url('ws')));
      const received = recordMessages(client);
      await client.subscribeAsync('ws/retained', { qos: 1 });
      await waitFor(
        () => received.some((message) => message.payload === 'retained for the dashboard' && message.retain),
        3000,
        'the retained message',
      );
      await tcp.publishAsync('ws/retained', '', { qos: 1, retain: true });
    });

    it('another HTTP path is not an MQTT endpoint', async () => {
      const outcome = await tryConnect(`ws://127.0.0.1:${broker.port('ws')}/not-mqtt`, { connectTimeout: 2000 });
      assert.equal(outcome.ok, false);
    });

    it('mqtt.js over wss:// with the test CA publishes and subscribes', async () => {
      const client = keep(await connectClient(broker.url('wss'), { ca }));
      const received = recordMessages(client);
      assert.deepEqual(await subscribeGranted(client, ['wss/#']), [1]);
      await roundTrip(client, received, 'wss/echo', 'wss to wss');
      await roundTrip(tcp, received, 'wss/from-tcp', 'tcp to wss');
      const untrusted = await tryConnect(broker.url('wss'), { connectTimeout: 2000 });
      assert.equal(untrusted.ok, false, 'wss without the CA must not connect');
    });

    it('an oversize packet over WebSocket disconnects that client only', async () => {
      const big = keep(await connectClient(broker.url('ws')));
      big.publish('ws/big', Buffer.alloc(MAX_PACKET + 1024, 0x61), { qos: 0 });
      assert.equal(await closedWithin(big, 3000), true);
      const small = keep(await connectClient(broker.url('ws')));
      await roundTrip(small, tcpSeen, 'ws/after-big', 'small is fine');
      // Whether the oversize packet itself is delivered: broker-limits.test.ts (a known bug when it arrives in one read).
    });

    it('an oversize MQTT packet split over several small WebSocket messages is refused too', async () => {
      const socket = new WebSocket(broker.url('ws'), 'mqtt');
      try {
        await new Promise<void>((resolve, reject) => {
          socket.once('open', () => resolve());
          socket.once('error', reject);
        });
        let closed = false;
        socket.on('close', () => (closed = true));
        socket.on('error', () => undefined);
        socket.send(generate({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clean: true, keepalive: 60, clientId: 'ws-split' }));
        const big = generate({
          cmd: 'publish',
          topic: 'ws/split-big',
          payload: Buffer.alloc(16 * MAX_PACKET, 0x62),
          qos: 0,
          retain: false,
          dup: false,
        });
        for (let offset = 0; offset < big.length && !closed; offset += MAX_PACKET / 2) {
          socket.send(big.subarray(offset, offset + MAX_PACKET / 2));
          await new Promise((resolve) => setImmediate(resolve));
        }
        await roundTrip(tcp, tcpSeen, 'ws/after-split', 'marker after the split packet');
        assert.ok(
          !tcpSeen.some((message) => message.topic === 'ws/split-big'),
          `a ${big.length}-byte packet went through a ${MAX_PACKET}-byte limit`,
        );
        await waitFor(() => closed, 3000, 'the WebSocket to be closed');
      } finally {
        socket.terminate();
      }
    });
  });
});
