// The write path end to end: a real MQTT client publishes on command topics of the integrated
// broker, the gateway writes to a real Modbus server (modbus-serial's ServerTCP, whose registers
// the test reads directly) and a real OPC UA server (node-opcua), and answers on the result
// topic or the MQTT 5 response topic.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import mqtt, { type MqttClient } from 'mqtt';
import { Gateway } from '../src/gateway.js';
import { parseConfigText } from '../src/config/load.js';
import { hashPassword } from '../src/broker/security.js';
import { CapturedLog, RawClient } from './helpers/broker-harness.js';
import { killAllChildren, makeTempDir, Mosquitto, removeDir } from './helpers/cloud-broker.js';
import { TcpTestServer } from './helpers/modbus-servers.js';
import { startTestServer, type RunningTestServer } from './helpers/opcua-server.js';
import { waitFor } from './helpers/net.js';

const PREFIX = 'plc2mqtt/gw';

interface Answer {
  ok: boolean;
  error?: string;
  value?: unknown;
  readBack?: unknown;
  device?: string;
  tag?: string;
  ts: number;
}

describe('writes from MQTT', () => {
  const folder = mkdtempSync(join(tmpdir(), 'plc2mqtt-writes-'));
  const modbus = new TcpTestServer();
  let opcua: RunningTestServer;
  let gateway: Gateway;
  const logs = new CapturedLog('info');
  let operator: MqttClient;
  const answers: Array<{ topic: string; answer: Answer; correlation?: string }> = [];

  before(async () => {
    await modbus.start();
    modbus.holding[20] = 55;
    opcua = await startTestServer({ pkiDir: join(folder, 'opcua') });
    const config = {
      gateway: { name: 'gw', dataDir: join(folder, 'data') },
      broker: {
        listeners: [{ type: 'tcp', host: '127.0.0.1', port: 0 }],
        users: [
          { username: 'operator', passwordHash: await hashPassword('op-secret') },
          { username: 'viewer', passwordHash: await hashPassword('view-secret') },
          { username: 'panel', passwordHash: await hashPassword('panel-secret') },
        ],
        acl: [
          { user: 'operator', publish: [`${PREFIX}/#`, 'replies/#'], subscribe: ['#'] },
          { user: 'viewer', publish: [], subscribe: ['#'] },
          { user: 'panel', publish: [`${PREFIX}/#`], subscribe: [`${PREFIX}/#`] },
        ],
      },
      devices: [
        {
          name: 'plc',
          driver: 'modbus',
          connection: { transport: 'tcp', host: '127.0.0.1', port: modbus.port, unitId: 1, timeout: '1s' },
          pollInterval: '200ms',
          tags: [
            { name: 'i16', area: 'holding', address: 0, type: 'int16', writable: true },
            { name: 'i32', area: 'holding', address: 2, type: 'int32', writable: true },
            { name: 'i32swap', area: 'holding', address: 4, type: 'int32', byteOrder: 'CDAB', writable: true },
            { name: 'f32', area: 'holding', address: 6, type: 'float32', writable: true },
            { name: 'coil', area: 'coil', address: 3, type: 'bool', writable: true },
            { name: 'bit5', area: 'holding', address: 10, bit: 5, type: 'bool', writable: true },
            {
              name: 'temp',
              area: 'holding',
              address: 12,
              type: 'int16',
              scale: 0.1,
              unit: '°C',
              writable: true,
              write: { min: 5, max: 40, readBack: true },
            },
            {
              name: 'mode',
              area: 'holding',
              address: 14,
              type: 'uint16',
              writable: true,
              write: { allowed: [0, 1, 2], minInterval: '1h' },
            },
            { name: 'label', area: 'holding', address: 30, type: 'string', length: 4, writable: true },
            { name: 'pulses', area: 'holding', address: 40, type: 'uint16', writable: true },
            { name: 'flow', area: 'holding', address: 42, type: 'float32', writable: true },
            { name: 'fixed', area: 'holding', address: 20, type: 'int16' },
          ],
        },
        {
          name: 'ua',
          driver: 'opcua',
          connection: { endpointUrl: opcua.endpointUrl },
          pollInterval: '200ms',
          tags: [
            { name: 'double', nodeId: 'ns=1;s=Line1.W.Double', writable: true, write: { readBack: true } },
            { name: 'int16', nodeId: 'ns=1;s=Line1.W.Int16', writable: true },
            { name: 'readonly', nodeId: 'ns=1;s=Line1.ReadOnly', writable: true },
          ],
        },
      ],
    };
    const parsed = parseConfigText(JSON.stringify(config));
    gateway = await Gateway.start({ file: '<test>', config: parsed, dataDir: parsed.gateway.dataDir }, logs.log);
    const url = gateway.broker.addresses()[0]!.url;
    operator = await mqtt.connectAsync(url, { username: 'operator', password: 'op-secret', clientId: 'hmi-1', reconnectPeriod: 0 });
    operator.on('message', (topic, payload, packet) => {
      if (topic.endsWith('/result') || topic.startsWith('replies/')) {
        answers.push({
          topic,
          answer: JSON.parse(payload.toString()) as Answer,
          correlation: packet.properties?.correlationData?.toString(),
        });
      }
    });
    await operator.subscribeAsync([`${PREFIX}/+/+/set/result`, 'replies/#'], { qos: 1 });
    // Both devices connected: a good value from each.
    await waitFor(() => modbus.connections > 0 && modbus.requests.length > 0, 10_000, 'the Modbus device polled');
  });

  after(async () => {
    await operator?.endAsync(true);
    await gateway?.stop();
    await modbus.stop();
    await opcua?.stop();
    rmSync(folder, { recursive: true, force: true });
  });

  /** Publishes a command and waits for its answer on the result topic. */
  async function command(device: string, tag: string, payload: string): Promise<Answer> {
    const resultTopic = `${PREFIX}/${device}/${tag}/set/result`;
    const before = answers.filter((entry) => entry.topic === resultTopic).length;
    await operator.publishAsync(`${PREFIX}/${device}/${tag}/set`, payload, { qos: 1 });
    await waitFor(() => answers.filter((entry) => entry.topic === resultTopic).length > before, 10_000, `the answer on ${resultTopic}`);
    return answers.filter((entry) => entry.topic === resultTopic).at(-1)!.answer;
  }

  const registers = (start: number, count: number) => modbus.holding.slice(start, start + count);

  it('Modbus: int16, int32 in both word orders, float32, a coil and a register bit', async () => {
    assert.deepEqual(await command('plc', 'i16', '-1234'), {
      ok: true,
      device: 'plc',
      tag: 'i16',
      value: -1234,
      ts: answers.at(-1)!.answer.ts,
    });
    assert.equal(registers(0, 1)[0], 0x10000 - 1234);

    assert.equal((await command('plc', 'i32', '{"value": 305419896}')).ok, true);
    assert.deepEqual(registers(2, 2), [0x1234, 0x5678]);
    assert.equal((await command('plc', 'i32swap', '305419896')).ok, true);
    assert.deepEqual(registers(4, 2), [0x5678, 0x1234]);

    assert.equal((await command('plc', 'f32', '{"value": 1.5}')).ok, true);
    assert.deepEqual(registers(6, 2), [0x3fc0, 0x0000]);

    assert.equal((await command('plc', 'coil', 'true')).ok, true);
    assert.equal(modbus.coils[3], true);
    assert.equal((await command('plc', 'coil', '{"value": 0}')).ok, true);
    assert.equal(modbus.coils[3], false);

    modbus.holding[10] = 0b1000_0000_0000_0001;
    assert.equal((await command('plc', 'bit5', 'true')).ok, true);
    assert.equal(modbus.holding[10], 0b1000_0000_0010_0001, 'only bit 5 changed');

    assert.equal((await command('plc', 'label', 'ABCD')).ok, true);
    assert.deepEqual(registers(30, 2), [0x4142, 0x4344]);
  });

  it('scaled tags take engineering units, are range-checked and read back', async () => {
    const answer = await command('plc', 'temp', '21.5');
    assert.equal(answer.ok, true, answer.error ?? '');
    assert.equal(modbus.holding[12], 215, '21.5 °C with scale 0.1 is register 215');
    assert.equal(answer.readBack, 21.5);
  });

  it('rejected writes answer the reason and change nothing', async () => {
    const writesBefore = modbus.writes.length;
    const holdingBefore = [...modbus.holding];
    const coilsBefore = [...modbus.coils];
    const cases: Array<[string, string, RegExp]> = [
      ['fixed', '1', /not writable/],
      ['temp', '45', /above the tag's maximum 40/],
      ['temp', '4.9', /below the tag's minimum 5/],
      ['i16', '40000', /out of range for int16/],
      ['i16', '"twelve"', /expected a number/],
      ['i16', '{"value": 1', /malformed JSON/],
      ['i16', '{"val": 1}', /needs a "value" field/],
      ['i16', '', /empty payload/],
      ['coil', '2', /expected a bool/],
      ['mode', '7', /not one of the allowed values \[0,1,2\]/],
      ['nope', '1', /unknown tag/],
    ];
    for (const [tag, payload, reason] of cases) {
      const answer = await command('plc', tag, payload);
      assert.equal(answer.ok, false, `${tag} ${payload}`);
      assert.match(answer.error ?? '', reason, `${tag} ${payload}`);
    }
    assert.equal(modbus.writes.length, writesBefore, 'no register write reached the device');
    assert.deepEqual(modbus.holding, holdingBefore);
    assert.deepEqual(modbus.coils, coilsBefore);
  });

  it('the rate limit refuses a second write within minInterval', async () => {
    assert.equal((await command('plc', 'mode', '2')).ok, true);
    assert.equal(modbus.holding[14], 2);
    const second = await command('plc', 'mode', '1');
    assert.equal(second.ok, false);
    assert.match(second.error ?? '', /rate limited/);
    assert.equal(modbus.holding[14], 2);
  });

  it('a retained command is refused (it would be written again at every reconnect)', async () => {
    const resultTopic = `${PREFIX}/plc/i16/set/result`;
    const before = answers.filter((entry) => entry.topic === resultTopic).length;
    await operator.publishAsync(`${PREFIX}/plc/i16/set`, '7', { qos: 1, retain: true });
    await waitFor(() => answers.filter((entry) => entry.topic === resultTopic).length > before, 10_000, 'the answer');
    assert.match(answers.at(-1)!.answer.error ?? '', /retained commands are refused/);
    assert.notEqual(modbus.holding[0], 7);
    await operator.publishAsync(`${PREFIX}/plc/i16/set`, '', { qos: 1, retain: true }); // clear it
  });

  it('OPC UA: the Write service, read back; a read-only node is refused by the server', async () => {
    let answer: Answer | undefined;
    await waitFor(
      async () => {
        answer = await command('ua', 'double', '3.25');
        return answer.ok || !/not connected/.test(answer.error ?? '');
      },
      20_000,
      'the OPC UA device to connect',
    );
    assert.equal(answer!.ok, true, answer!.error ?? '');
    assert.equal(answer!.readBack, 3.25);
    const int16 = await command('ua', 'int16', '-7');
    assert.equal(int16.ok, true, int16.error ?? '');
    const readonly = await command('ua', 'readonly', '1');
    assert.equal(readonly.ok, false);
    assert.match(readonly.error ?? '', /BadNotWritable|BadUserAccessDenied/);
  });

  it('MQTT 3.1.1 and 5: the answer goes to the response topic with the correlation data when one is given', async () => {
    const v5 = await mqtt.connectAsync(gateway.broker.addresses()[0]!.url, {
      username: 'operator',
      password: 'op-secret',
      protocolVersion: 5,
      reconnectPeriod: 0,
    });
    const replies: Array<{ payload: Answer; correlation: string | undefined }> = [];
    v5.on('message', (_topic, payload, packet) =>
      replies.push({ payload: JSON.parse(payload.toString()) as Answer, correlation: packet.properties?.correlationData?.toString() }),
    );
    await v5.subscribeAsync('replies/hmi-5', { qos: 1 });
    await v5.publishAsync(`${PREFIX}/plc/i16/set`, '321', {
      qos: 1,
      properties: { responseTopic: 'replies/hmi-5', correlationData: Buffer.from('req-42') },
    });
    await waitFor(() => replies.length > 0, 10_000, 'the MQTT 5 response');
    assert.deepEqual([replies[0]!.payload.ok, replies[0]!.correlation], [true, 'req-42']);
    assert.equal(modbus.holding[0], 321);
    await v5.endAsync(true);

    // A response topic the client may not read is not used: the gateway must not publish where
    // the ACL keeps this client out. The answer goes to the result topic instead.
    const panel = await mqtt.connectAsync(gateway.broker.addresses()[0]!.url, {
      username: 'panel',
      password: 'panel-secret',
      protocolVersion: 5,
      reconnectPeriod: 0,
    });
    const resultTopic = `${PREFIX}/plc/i16/set/result`;
    const before = answers.filter((entry) => entry.topic === resultTopic).length;
    const elsewhere = answers.filter((entry) => entry.topic === 'replies/not-mine').length;
    await panel.publishAsync(`${PREFIX}/plc/i16/set`, '322', {
      qos: 1,
      properties: { responseTopic: 'replies/not-mine', correlationData: Buffer.from('req-43') },
    });
    await waitFor(() => answers.filter((entry) => entry.topic === resultTopic).length > before, 10_000, 'the answer on the result topic');
    assert.equal(answers.filter((entry) => entry.topic === 'replies/not-mine').length, elsewhere);
    assert.equal(modbus.holding[0], 322);
    await panel.endAsync(true);
  });

  it('a QoS 2 command sent again before its PUBREL (DUP) is written once', async () => {
    const raw = await RawClient.connect(gateway.broker.addresses()[0]!.port, {
      clientId: 'raw-qos2',
      username: 'operator',
      password: Buffer.from('op-secret'),
    });
    try {
      assert.equal((await raw.next('connack')).returnCode, 0);
      const writesBefore = modbus.writes.filter((write) => write.address === 40).length;
      const publish = {
        cmd: 'publish' as const,
        topic: `${PREFIX}/plc/pulses/set`,
        payload: Buffer.from('5'),
        qos: 2 as const,
        messageId: 7,
        retain: false,
        dup: false,
      };
      raw.send(publish);
      await raw.next('pubrec');
      raw.send({ ...publish, dup: true });
      await waitFor(() => raw.of('pubrec').length === 2, 5000, 'the second PUBREC');
      raw.send({ cmd: 'pubrel', messageId: 7 });
      await raw.next('pubcomp');
      await waitFor(() => modbus.holding[40] === 5, 5000, 'the write');
      await new Promise((resolve) => setTimeout(resolve, 500));
      assert.equal(modbus.writes.filter((write) => write.address === 40).length - writesBefore, 1, 'written once');
    } finally {
      raw.destroy();
    }
  });

  it('a QoS 2 command resent by a persistent session after a reconnect (before PUBREL) is written once', async () => {
    const port = gateway.broker.addresses()[0]!.port;
    const session = { clientId: 'raw-persistent', clean: false, username: 'operator', password: Buffer.from('op-secret') };
    const before = modbus.writes.filter((write) => write.address === 40).length;
    const publish = {
      cmd: 'publish' as const,
      topic: `${PREFIX}/plc/pulses/set`,
      payload: Buffer.from('9'),
      qos: 2 as const,
      messageId: 11,
      retain: false,
      dup: false,
    };
    const first = await RawClient.connect(port, session);
    await first.next('connack');
    first.send(publish);
    await first.next('pubrec');
    first.destroy(); // the PUBREL never went out
    await waitFor(() => modbus.holding[40] === 9, 5000, 'the write');
    const again = await RawClient.connect(port, session);
    try {
      assert.equal((await again.next('connack')).returnCode, 0);
      again.send({ ...publish, dup: true });
      await again.next('pubrec');
      again.send({ cmd: 'pubrel', messageId: 11 });
      await again.next('pubcomp');
      await new Promise((resolve) => setTimeout(resolve, 500));
      assert.equal(modbus.writes.filter((write) => write.address === 40).length - before, 1, 'written once');
    } finally {
      again.destroy();
    }
  });

  it("an MQTT 5 response topic that is one of the gateway's own topics is not used: the answer goes to the result topic", async () => {
    const v5 = await mqtt.connectAsync(gateway.broker.addresses()[0]!.url, {
      username: 'operator',
      password: 'op-secret',
      protocolVersion: 5,
      reconnectPeriod: 0,
    });
    const dataTopic = `${PREFIX}/plc/i32`;
    const onData: string[] = [];
    v5.on('message', (topic, payload) => {
      if (topic === dataTopic) onData.push(payload.toString());
    });
    await v5.subscribeAsync(dataTopic, { qos: 1 });
    const resultTopic = `${PREFIX}/plc/i16/set/result`;
    const before = answers.filter((entry) => entry.topic === resultTopic).length;
    await v5.publishAsync(`${PREFIX}/plc/i16/set`, '99999', {
      qos: 1,
      properties: { responseTopic: dataTopic, correlationData: Buffer.from('spoof') },
    });
    await waitFor(() => answers.filter((entry) => entry.topic === resultTopic).length > before, 10_000, 'the answer on the result topic');
    await new Promise((resolve) => setTimeout(resolve, 300));
    assert.ok(!onData.some((payload) => payload.includes('"ok"')), `an answer landed on the data topic: ${onData.join(' | ')}`);
    await v5.endAsync(true);
  });

  it('a stale command (its "ts" older than writes.maxAge) and a non-finite number are refused', async () => {
    const stale = await command('plc', 'flow', JSON.stringify({ value: 2.5, ts: Date.now() - 120_000 }));
    assert.equal(stale.ok, false);
    assert.match(stale.error ?? '', /stale command: sent 1[12]\d s ago/);
    const iso = await command('plc', 'flow', JSON.stringify({ value: 2.5, ts: new Date(Date.now() - 5_000).toISOString() }));
    assert.equal(iso.ok, true, iso.error ?? '');
    assert.deepEqual(registers(42, 2), [0x4020, 0x0000]);
    const future = await command('plc', 'flow', JSON.stringify({ value: 3.5, ts: Date.now() + 120_000 }));
    assert.match(future.error ?? '', /"ts" is 1[12]\d s in the future/);
    const infinite = await command('plc', 'flow', '1e400');
    assert.match(infinite.error ?? '', /Infinity is not a finite number/);
    assert.deepEqual(registers(42, 2), [0x4020, 0x0000]);
  });

  it('a last will on a command topic is not a command', async () => {
    const writesBefore = modbus.writes.length;
    const received = gateway.commands.stats.received;
    const dying = await mqtt.connectAsync(gateway.broker.addresses()[0]!.url, {
      username: 'operator',
      password: 'op-secret',
      clientId: 'dying-hmi',
      reconnectPeriod: 0,
      will: { topic: `${PREFIX}/plc/pulses/set`, payload: Buffer.from('77'), qos: 1, retain: false },
    });
    const willSeen = new Promise<void>((resolve) =>
      operator.on('message', (topic, payload) => topic === `${PREFIX}/plc/pulses/set` && payload.toString() === '77' && resolve()),
    );
    await operator.subscribeAsync(`${PREFIX}/plc/pulses/set`, { qos: 1 });
    (dying as unknown as { stream: { destroy(): void } }).stream.destroy(); // dropped, not disconnected: the will goes out
    await willSeen;
    await new Promise((resolve) => setTimeout(resolve, 500));
    assert.equal(gateway.commands.stats.received, received);
    assert.equal(modbus.writes.length, writesBefore);
    assert.notEqual(modbus.holding[40], 77);
    dying.end(true);
  });

  it('a user the ACL does not allow to publish on the command topic cannot write', async () => {
    const viewer = await mqtt.connectAsync(gateway.broker.addresses()[0]!.url, {
      username: 'viewer',
      password: 'view-secret',
      clientId: 'viewer-1',
      reconnectPeriod: 0,
    });
    viewer.on('error', () => undefined);
    const closed = new Promise<void>((resolve) => viewer.once('close', () => resolve()));
    const received = gateway.commands.stats.received;
    viewer.publish(`${PREFIX}/plc/i16/set`, '999', { qos: 1 }, () => undefined);
    await closed; // MQTT 3.1.1: a denied publish disconnects the client
    assert.notEqual(modbus.holding[0], 999);
    assert.equal(gateway.commands.stats.received, received, 'the write path never saw it');
    viewer.end(true);
  });

  it('every attempt leaves one audit line: client, user, device, tag, requested and previous value, result', async () => {
    await waitFor(
      () => logs.records().some((record) => record.audit === 'write' && record.tag === 'i16' && record.requested === -1234),
      5000,
      'the audit line',
    );
    const line = logs.records().find((record) => record.audit === 'write' && record.tag === 'i16' && record.requested === -1234)!;
    assert.equal(line.clientId, 'hmi-1');
    assert.equal(line.username, 'operator');
    assert.equal(line.device, 'plc');
    assert.equal(line.result, 'written');
    assert.ok('previous' in line, 'the previous value is logged');
    const refused = logs.records().find((record) => record.audit === 'write' && record.tag === 'fixed')!;
    assert.equal(refused.result, 'rejected');
    assert.match(String(refused.error), /not writable/);
  });

  it('a direct write (no command topic: Sparkplug DCMD, the console) is checked, written, answered and audited with its source', async () => {
    const events: unknown[] = [];
    const unsubscribe = gateway.bus.on('write', (event) => events.push(event));
    const answer = await gateway.takeWrite('plc', 'pulses', 77, { source: 'console', clientId: 'console', username: 'alice' });
    assert.equal(answer.ok, true, answer.error ?? '');
    assert.equal(modbus.holding[40], 77);
    const refused = await gateway.takeWrite('plc', 'temp', 45, { source: 'console', clientId: 'console', username: 'alice' });
    assert.match(refused.error ?? '', /above the tag's maximum 40/);
    const lines = logs.records().filter((record) => record.audit === 'write' && record.source === 'console');
    assert.deepEqual(
      lines.map((line) => [line.tag, line.username, line.result]),
      [
        ['pulses', 'alice', 'written'],
        ['temp', 'alice', 'rejected'],
      ],
    );
    assert.equal(events.length, 2);
    unsubscribe();
  });
});

for (const protocolVersion of [4, 5] as const) {
  describe(`writes from the cloud (uplink MQTT ${protocolVersion === 5 ? '5' : '3.1.1'})`, () => {
    const dir = makeTempDir('plc2mqtt-cloud-writes-');
    const modbus = new TcpTestServer();
    let cloud: Mosquitto;
    let gateway: Gateway;
    const logs = new CapturedLog('info');

    before(async () => {
      await modbus.start();
      cloud = await Mosquitto.startNew(dir);
      const config = {
        gateway: { name: 'gw', dataDir: join(dir, 'data') },
        broker: { listeners: [{ type: 'tcp', host: '127.0.0.1', port: 0 }], allowAnonymous: true },
        uplink: {
          url: cloud.url,
          clientId: 'edge-7',
          protocolVersion,
          reconnect: { initial: 100, max: 400 },
          // Values and answers go up under acme/edge-7/; only command topics come down.
          forward: [{ topic: '#', localPrefix: 'plc2mqtt/gw/', remotePrefix: 'acme/edge-7/' }],
          receive: [{ topic: '+/+/set', localPrefix: 'plc2mqtt/gw/', remotePrefix: 'acme/edge-7/' }],
        },
        devices: [
          {
            name: 'plc',
            driver: 'modbus',
            connection: { transport: 'tcp', host: '127.0.0.1', port: modbus.port, unitId: 1, timeout: '1s' },
            pollInterval: '200ms',
            tags: [{ name: 'speed', area: 'holding', address: 1, type: 'uint16', writable: true, write: { max: 3000 } }],
          },
        ],
      };
      const parsed = parseConfigText(JSON.stringify(config));
      gateway = await Gateway.start({ file: '<test>', config: parsed, dataDir: parsed.gateway.dataDir }, logs.log);
    });

    after(async () => {
      await gateway?.stop();
      await modbus.stop();
      await killAllChildren();
      removeDir(dir);
    });

    it('a command published on the cloud broker is written, answered on the cloud and audited with its origin', async () => {
      const app = await mqtt.connectAsync(cloud.url, { clientId: 'cloud-app', reconnectPeriod: 0 });
      const answers: Answer[] = [];
      app.on('message', (_topic, payload) => answers.push(JSON.parse(payload.toString()) as Answer));
      await app.subscribeAsync('acme/edge-7/plc/speed/set/result', { qos: 1 });
      // The uplink subscribes once connected: repeat the command until the first answer comes.
      await waitFor(
        async () => {
          if (answers.length > 0) return true;
          await app.publishAsync('acme/edge-7/plc/speed/set', '1500', { qos: 1 });
          await new Promise((resolve) => setTimeout(resolve, 300));
          return answers.length > 0;
        },
        20_000,
        'an answer on the cloud',
      );
      assert.equal(answers[0]!.ok, true, answers[0]!.error ?? '');
      assert.equal(modbus.holding[1], 1500);

      await app.publishAsync('acme/edge-7/plc/speed/set', '5000', { qos: 1 });
      await waitFor(() => answers.some((answer) => !answer.ok), 10_000, 'the refusal on the cloud');
      assert.match(answers.find((answer) => !answer.ok)!.error ?? '', /above the tag's maximum 3000/);
      assert.equal(modbus.holding[1], 1500);
      const audit = logs.records().find((record) => record.audit === 'write' && record.result === 'written')!;
      assert.deepEqual([audit.source, audit.clientId], ['cloud', 'cloud:edge-7']);
      await app.endAsync(true);
    });

    it('a local command forwarded to the cloud and received back is written once (3.1.1: echo recognized; 5: No Local)', async () => {
      const watcher = await mqtt.connectAsync(cloud.url, { clientId: 'cloud-watcher', reconnectPeriod: 0 });
      const atCloud: string[] = [];
      watcher.on('message', (_topic, payload) => atCloud.push(payload.toString()));
      await watcher.subscribeAsync('acme/edge-7/plc/speed/set', { qos: 1 });
      const local = await mqtt.connectAsync(gateway.broker.addresses()[0]!.url, { clientId: 'local-hmi', reconnectPeriod: 0 });
      await local.publishAsync('plc2mqtt/gw/plc/speed/set', '1700', { qos: 1 });
      // The forwarded command reached the cloud, so the cloud has sent it back to the gateway too.
      await waitFor(() => atCloud.includes('1700'), 10_000, 'the command forwarded to the cloud');
      const writes = () => logs.records().filter((record) => record.audit === 'write' && record.requested === 1700);
      await waitFor(() => writes().length > 0, 5000, 'the write');
      await new Promise((resolve) => setTimeout(resolve, 1000));
      assert.equal(writes().length, 1, JSON.stringify(writes()));
      assert.equal(writes()[0]!.source, 'local');
      assert.equal(modbus.holding[1], 1700);

      // The same command twice in a row (a button pressed twice): two writes, both echoes recognized.
      await Promise.all([
        local.publishAsync('plc2mqtt/gw/plc/speed/set', '1800', { qos: 1 }),
        local.publishAsync('plc2mqtt/gw/plc/speed/set', '1800', { qos: 1 }),
      ]);
      await waitFor(() => atCloud.filter((payload) => payload === '1800').length === 2, 10_000, 'both forwarded to the cloud');
      const twice = () => logs.records().filter((record) => record.audit === 'write' && record.requested === 1800);
      await waitFor(() => twice().length >= 2, 5000, 'both writes');
      await new Promise((resolve) => setTimeout(resolve, 1000));
      assert.deepEqual(
        twice().map((record) => record.source),
        ['local', 'local'],
      );
      await local.endAsync(true);
      await watcher.endAsync(true);
    });
  });
}
