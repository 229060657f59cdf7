// Serial-line devices through the whole gateway: samples of a scale (request/response, on a socat
// pty) and of a GPS receiver (streamed, behind an emulated device server) arrive on the
// integrated broker with their quality; writes from MQTT go through the command path (checks,
// answers, audit lines) to the instrument. Instruments: test/helpers/serial-instrument.py.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import mqtt, { type MqttClient } from 'mqtt';
import { parseConfigText } from '../src/config/load.js';
import { Gateway } from '../src/gateway.js';
import { CapturedLog } from './helpers/broker-harness.js';
import { freePort, waitFor } from './helpers/net.js';
import { startInstrument, startSerialLine, type Instrument, type SerialLine } from './helpers/serial-instrument.js';

interface Payload {
  value: unknown;
  quality: string;
  reason?: string;
  unit?: string;
}

interface Answer {
  ok: boolean;
  error?: string;
}

describe('serial devices through the gateway', () => {
  const folder = mkdtempSync(join(tmpdir(), 'plc2mqtt-serial-gw-'));
  const logs = new CapturedLog('info');
  let line: SerialLine;
  let scale: Instrument;
  let gps: Instrument;
  let gateway: Gateway;
  let client: MqttClient;
  const messages: { topic: string; payload: string }[] = [];

  before(async () => {
    line = await startSerialLine(folder);
    scale = await startInstrument({ kind: 'scale', pty: line.device });
    gps = await startInstrument({ kind: 'nmea', tcp: 0, period: 100 });
    const config = {
      gateway: { name: 'gw', dataDir: join(folder, 'data') },
      broker: { listeners: [{ type: 'tcp', host: '127.0.0.1', port: 0 }], allowAnonymous: true },
      devices: [
        {
          name: 'scale',
          driver: 'serial',
          connection: { transport: 'serial', path: line.gateway, baudRate: 9600, timeout: '500ms' },
          request: 'SI\r\n',
          pollInterval: '100ms',
          tags: [
            {
              name: 'weight',
              regex: '^S (?<status>[SD]) +(?<value>-?[0-9.]+) kg$',
              unit: 'kg',
              quality: { capture: 'status', good: ['S'], uncertain: ['D'] },
            },
            { name: 'tare', type: 'bool', read: false, writable: true, command: 'T\r\n', ack: '^T S', write: { allowed: [true] } },
          ],
        },
        {
          name: 'gps',
          driver: 'serial',
          connection: { transport: 'tcp', host: '127.0.0.1', port: gps.port },
          framing: { type: 'stx-etx', start: '$', end: '*', checksum: { type: 'xor', format: 'hex', over: 'body' } },
          tags: [{ name: 'fix', match: '^GPGGA,', split: ',', index: 6, type: 'int32' }],
        },
        {
          // Nothing listens there: its tags go bad, its command-only tag is not published at all.
          name: 'absent',
          driver: 'serial',
          connection: { transport: 'tcp', host: '127.0.0.1', port: await freePort() },
          request: 'RD\r',
          pollInterval: '100ms',
          tags: [
            { name: 'level', regex: '(?<value>\\d+)' },
            { name: 'reset', type: 'bool', read: false, writable: true, command: 'R\r' },
          ],
        },
      ],
    };
    const parsed = parseConfigText(JSON.stringify(config));
    gateway = await Gateway.start({ file: '<test>', config: parsed, dataDir: parsed.gateway.dataDir }, logs.log);
    client = await mqtt.connectAsync(gateway.broker.addresses()[0]!.url, { reconnectPeriod: 0 });
    client.on('message', (topic, payload) => messages.push({ topic, payload: payload.toString() }));
    await client.subscribeAsync('plc2mqtt/gw/#', { qos: 1 });
  });

  after(async () => {
    await client?.endAsync(true);
    await gateway?.stop();
    await scale?.stop();
    await gps?.stop();
    await line?.stop();
    rmSync(folder, { recursive: true, force: true });
  });

  const samplesOf = (topic: string): Payload[] =>
    messages.filter((message) => message.topic === topic).map((message) => JSON.parse(message.payload) as Payload);

  /** The first sample on `topic` from message `from` on (default: from now) that passes `check`. */
  async function sample(topic: string, check: (payload: Payload) => boolean, from = messages.length): Promise<Payload> {
    let found: Payload | undefined;
    await waitFor(
      () =>
        (found = messages
          .slice(from)
          .filter((message) => message.topic === topic)
          .map((message) => JSON.parse(message.payload) as Payload)
          .find(check)) !== undefined,
      10_000,
      () => `a sample on ${topic}; last: ${JSON.stringify(samplesOf(topic).at(-1))}`,
    );
    return found!;
  }

  it('publishes the weight with its unit and quality (good when stable, uncertain when moving), and the streamed GPS fix', async () => {
    const stable = await sample('plc2mqtt/gw/scale/weight', (payload) => payload.quality === 'good');
    assert.equal(stable.value, 12.345);
    assert.equal(stable.unit, 'kg');
    await scale.control({ set: { stable: false } });
    const moving = await sample('plc2mqtt/gw/scale/weight', (payload) => payload.quality === 'uncertain');
    assert.match(moving.reason ?? '', /status "D"/);
    await scale.control({ set: { stable: true } });
    assert.equal((await sample('plc2mqtt/gw/gps/fix', (payload) => payload.quality === 'good')).value, 1);
    await gps.control({ set: { fix: 2 } });
    assert.equal((await sample('plc2mqtt/gw/gps/fix', (payload) => payload.value === 2)).quality, 'good');
    // A command-only tag is never published, also while its device is unreachable.
    assert.equal(samplesOf('plc2mqtt/gw/scale/tare').length, 0);
    assert.equal((await sample('plc2mqtt/gw/absent/level', () => true, 0)).quality, 'bad');
    assert.equal(samplesOf('plc2mqtt/gw/absent/reset').length, 0);
  });

  it('a tare from MQTT reaches the scale, is answered ok and audited; a refused one changes nothing', async () => {
    const answers: Answer[] = [];
    client.on('message', (topic, payload) => {
      if (topic === 'plc2mqtt/gw/scale/tare/set/result') answers.push(JSON.parse(payload.toString()) as Answer);
    });
    const sent = messages.length;
    await client.publishAsync('plc2mqtt/gw/scale/tare/set', 'true', { qos: 1 });
    await waitFor(() => answers.length === 1, 10_000, 'the answer to the tare');
    assert.equal(answers[0]!.ok, true, answers[0]!.error);
    await scale.waitForRequest((request) => request === 'T\r\n');
    // Net weight after the tare (published once: report by exception).
    await sample('plc2mqtt/gw/scale/weight', (payload) => payload.quality === 'good' && payload.value === 0, sent);
    const tares = () => scale.requests().filter((request) => request === 'T\r\n').length;
    const before = tares();
    await client.publishAsync('plc2mqtt/gw/scale/tare/set', 'false', { qos: 1 });
    await waitFor(() => answers.length === 2, 10_000, 'the answer to the refused tare');
    assert.equal(answers[1]!.ok, false);
    assert.match(answers[1]!.error ?? '', /not one of the allowed values/);
    assert.equal(tares(), before, 'nothing sent');
    const audits = logs.records().filter((record) => record.audit === 'write' && record.device === 'scale' && record.tag === 'tare');
    assert.equal(audits.length, 2);
  });
});
