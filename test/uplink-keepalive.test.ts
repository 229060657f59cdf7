// The cloud connection's keep-alive on a slow link: PUBACKs that keep coming prove the link, so a
// window that takes longer than the keep-alive to acknowledge must not drop the connection.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { createRequire } from 'node:module';
import { pino } from 'pino';
import { CloudConnection } from '../src/cloud/connection.js';
import type { UplinkConfig } from '../src/cloud/bridge-rules.js';

const require = createRequire(import.meta.url);
const mqttPacket = require('mqtt-packet') as {
  parser(opts: object): { on(event: string, fn: (packet: { cmd: string; messageId?: number }) => void): void; parse(buf: Buffer): void };
  generate(packet: object): Buffer;
};

/**
 * A cloud broker behind a slow link: it answers every packet, in order, but gets to one packet
 * every `perPacketMs` (like a link that carries ~100 small packets/s). CONNECT is answered at once.
 */
function slowBroker(perPacketMs: number): Promise<{ server: Server; port: number; pings: number[] }> {
  const pings: number[] = [];
  const server = createServer((socket: Socket) => {
    const parser = mqttPacket.parser({ protocolVersion: 4 });
    const backlog: Array<{ cmd: string; messageId?: number }> = [];
    const timer = setInterval(() => {
      const packet = backlog.shift();
      if (!packet || socket.destroyed) return;
      if (packet.cmd === 'publish' && packet.messageId) socket.write(mqttPacket.generate({ cmd: 'puback', messageId: packet.messageId }));
      if (packet.cmd === 'pingreq') {
        pings.push(Date.now());
        socket.write(mqttPacket.generate({ cmd: 'pingresp' }));
      }
    }, perPacketMs);
    socket.on('close', () => clearInterval(timer));
    socket.on('error', () => undefined);
    parser.on('packet', (packet) => {
      if (packet.cmd === 'connect') socket.write(mqttPacket.generate({ cmd: 'connack', returnCode: 0, sessionPresent: false }));
      else backlog.push(packet);
    });
    socket.on('data', (data: Buffer) => parser.parse(data));
  });
  return new Promise((resolve) =>
    server.listen(0, '127.0.0.1', () => resolve({ server, port: (server.address() as AddressInfo).port, pings })),
  );
}

/**
 * A cloud connection with a 2 s keep-alive (ping after 2 s without a packet, "dead" 1 s later) to
 * `port` for 6 s; `connected` starts its traffic. Returns how often the connection closed.
 */
async function runLink(port: number, clientId: string, connected: (connection: CloudConnection) => void): Promise<number> {
  let closes = 0;
  const config = {
    url: `mqtt://127.0.0.1:${port}`,
    reconnect: { initial: 60_000, max: 60_000 },
    protocolVersion: 4,
    cleanSession: true,
    sessionExpiry: 0,
    keepalive: 2000,
  } as unknown as UplinkConfig;
  const connection: CloudConnection = new CloudConnection(
    config,
    { clientId, will: () => ({ topic: 'w', payload: Buffer.from('x'), qos: 0, retain: false }), tls: {} },
    pino({ level: 'silent' }),
    {
      connected: () => connected(connection),
      closed: () => closes++,
      message: () => undefined,
      stable: () => undefined,
    },
  );
  connection.start();
  await new Promise((resolve) => setTimeout(resolve, 6000));
  await connection.stop(500, undefined);
  return closes;
}

async function runSlowLink(): Promise<{ closes: number; acked: number }> {
  const { server, port } = await slowBroker(10);
  let acked = 0;
  const closes = await runLink(port, 'slow-link', (connection) => {
    // A sender keeping a window of 150 QoS 1 messages on the link: each PUBACK sends the next.
    const send = (): void =>
      connection.publish('t', Buffer.from('v'), { qos: 1, retain: false }, (error) => {
        if (error) return;
        acked++;
        send();
      });
    for (let i = 0; i < 150; i++) send();
  });
  server.close();
  return { closes, acked };
}

test('a slow but working cloud link (PUBACKs flowing, a window that takes longer than the keep-alive) stays connected', async () => {
  const result = await runSlowLink();
  assert.ok(result.acked > 300, `the link carried ${result.acked} PUBACKs`);
  assert.equal(
    result.closes,
    0,
    `connection dropped ${result.closes} time(s) by mqtt.js's keep-alive while PUBACKs arrived (acked ${result.acked})`,
  );
});

test('after a burst of PUBACKs, a quiet link still gets its PINGREQ and stays connected', async () => {
  const { server, port, pings } = await slowBroker(1);
  let acked = 0;
  let lastAck = 0;
  const closes = await runLink(port, 'quiet-link', (connection) => {
    // 300 messages acknowledged as fast as the broker answers, then nothing.
    for (let i = 0; i < 300; i++)
      connection.publish('t', Buffer.from('v'), { qos: 1, retain: false }, (error) => {
        if (error) return;
        acked++;
        lastAck = Date.now();
      });
  });
  server.close();
  assert.equal(acked, 300);
  const after = pings.filter((at) => at > lastAck);
  // mqtt.js pings once a keep-alive passes without a packet; 2 s of keep-alive in 5 s of quiet.
  assert.ok(after.length >= 1, `PINGREQs after the burst: ${after.length}`);
  assert.equal(closes, 0, 'the quiet link stayed connected');
});
