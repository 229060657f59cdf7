// The northbound format seam (src/northbound/format.ts), as the cloud leg must carry it for any
// format: births after every connect before the backlog, the will registered with every CONNECT,
// records encoded at send time in the connection's session (sequence numbers, replayed history),
// finished messages passed through untouched, a goodbye at stop. A fake format that stamps all of
// that into its payloads runs through the real uplink, outbox and mosquitto, across a real
// reconnect. Then the JSON format: its bytes are those of before the seam.
import assert from 'node:assert/strict';
import { createServer, connect, type Socket } from 'node:net';
import { describe, it, type TestContext } from 'node:test';
import { pino } from 'pino';
import { IntegratedBroker } from '../src/broker/broker.js';
import type { StoredMessage } from '../src/cloud/buffer.js';
import { Outbox } from '../src/cloud/outbox.js';
import { Uplink } from '../src/cloud/uplink.js';
import { brokerSection, topicsSection, uplinkSection } from '../src/config/schema.js';
import type {
  CloudMessage,
  CloudSubscriptions,
  DownlinkAction,
  FormatSession,
  NorthboundFormat,
  Recorder,
} from '../src/northbound/format.js';
import { JsonFormat } from '../src/northbound/json/format.js';
import { encodeAnswer, encodeBatchPayload, encodeTagPayload } from '../src/northbound/json/payload.js';
import { GatewayTopics } from '../src/northbound/json/topics.js';
import type { Sample } from '../src/pipeline/normalize.js';
import { killAllChildren, makeTempDir, Mosquitto, removeDir } from './helpers/cloud-broker.js';
import { subscriber } from './helpers/cloud-clients.js';
import { waitFor } from './helpers/net.js';

const log = pino({ level: 'silent' });

/** The fake format's own record kinds: one it encodes, one it cannot (a row of another format). */
const FAKE = 99;
const FOREIGN = 98;

/** Stamps the session's attempt, sequence number and history flag into every message it encodes. */
class StampingFormat implements NorthboundFormat {
  readonly name = 'stamping';
  readonly session = 'configured';
  readonly disconnectReason = undefined;

  recorder(localTopic: string): Recorder | undefined {
    if (!localTopic.startsWith('line/')) return undefined;
    return (report) => ({
      kind: report.local.topic === 'line/foreign' ? FOREIGN : FAKE,
      topic: 'fake/data',
      payload: report.local.payload,
      qos: 1,
      retain: false,
    });
  }

  encode(stored: StoredMessage, session: FormatSession): CloudMessage | undefined {
    if (stored.kind !== FAKE) return undefined;
    const { value } = JSON.parse(stored.payload.toString()) as { value: number };
    const stamped = { value, seq: session.nextSeq(), historical: session.historical(stored), attempt: session.attempt };
    return { topic: stored.topic, payload: Buffer.from(JSON.stringify(stamped)), qos: 1, retain: false };
  }

  will(session: FormatSession): CloudMessage {
    return { topic: 'fake/death', payload: Buffer.from(JSON.stringify({ attempt: session.attempt })), qos: 1, retain: false };
  }

  births(session: FormatSession): CloudMessage[] {
    return [
      {
        topic: 'fake/birth',
        payload: Buffer.from(JSON.stringify({ attempt: session.attempt, seq: session.nextSeq() })),
        qos: 1,
        retain: false,
      },
    ];
  }

  goodbye(session: FormatSession): CloudMessage {
    return { topic: 'fake/bye', payload: Buffer.from(JSON.stringify({ attempt: session.attempt })), qos: 1, retain: false };
  }

  subscriptions(): CloudSubscriptions {
    return {};
  }

  decodeDownlink(): DownlinkAction[] {
    return [];
  }
}

/** A TCP relay to mosquitto that can drop its connections (the broker sees them die: no DISCONNECT) and refuse new ones. */
async function relayTo(t: TestContext, port: number) {
  const sockets = new Set<Socket>();
  let open = true;
  const server = createServer((client) => {
    if (!open) return void client.destroy();
    const upstream = connect(port, '127.0.0.1');
    for (const socket of [client, upstream]) {
      sockets.add(socket);
      socket
        .on('error', () => undefined)
        .on('close', () => {
          sockets.delete(socket);
          client.destroy();
          upstream.destroy();
        });
    }
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const relay = {
    port: (server.address() as { port: number }).port,
    /** Drops every connection and refuses new ones. */
    cut(): void {
      open = false;
      for (const socket of sockets) socket.destroy();
    },
    restore(): void {
      open = true;
    },
  };
  t.after(() => {
    relay.cut();
    server.close();
  });
  return relay;
}

const report = (value: number, topic = 'line/a'): Parameters<Recorder>[0] => ({
  kind: 'tag',
  device: 'd',
  group: 'default',
  tag: 'a',
  sample: { device: 'd', group: 'default', tag: 'a', value, quality: 'good', ts: 0 },
  local: { topic, payload: Buffer.from(JSON.stringify({ value })), retain: false },
});

interface Stamped {
  value: number;
  seq: number;
  historical: boolean;
  attempt: number;
}

describe('the format seam through the uplink, against mosquitto', () => {
  it('births on every connect before the backlog, the will of each CONNECT, encode at send time in the session, pass-through untouched, goodbye at stop', async (t) => {
    const dir = makeTempDir('plc2mqtt-format-');
    t.after(async () => {
      await killAllChildren();
      removeDir(dir);
    });
    const cloud = await Mosquitto.startNew(dir);
    const relay = await relayTo(t, cloud.port);
    const watcher = await subscriber(cloud.url, ['fake/#']);
    t.after(() => watcher.client.endAsync(true));
    const arrivals = watcher.messages;
    const data = (): Stamped[] =>
      arrivals.filter((arrival) => arrival.topic === 'fake/data').map((arrival) => JSON.parse(arrival.payload) as Stamped);
    const of = (topic: string): Array<{ attempt: number; seq?: number }> =>
      arrivals
        .filter((arrival) => arrival.topic === topic)
        .map((arrival) => JSON.parse(arrival.payload) as { attempt: number; seq?: number });

    const config = uplinkSection.parse({
      url: `mqtt://127.0.0.1:${relay.port}`,
      inFlight: 10,
      keepalive: 5000,
      reconnect: { initial: 100, max: 200 },
      outbox: { commitInterval: 5 },
    });
    const outbox = Outbox.open(`${dir}/outbox.db`, config.outbox, log);
    const broker = await IntegratedBroker.start(
      brokerSection.parse({ listeners: [{ type: 'tcp', port: 0 }], persistRetained: false }),
      log,
      dir,
    );
    const format = new StampingFormat();
    const uplink = new Uplink(config, 'gw', format, outbox, broker, log);
    t.after(async () => {
      await uplink.stop(500);
      await broker.close();
      outbox.close();
    });
    const recorder = uplink.recorder('line/a')!;
    assert.equal(uplink.recorder('elsewhere'), undefined, 'the format decides what is recorded');

    // History: recorded while there was no connection yet. A row the format cannot encode is refused, never sent.
    for (const value of [0, 1, 2]) uplink.record(recorder, report(value));
    uplink.record(uplink.recorder('line/foreign')!, report(-1, 'line/foreign'));
    // A local client's message: a finished message, passed through as it is.
    uplink.enqueue({ topic: 'fake/raw', qos: 1 }, Buffer.from('raw bytes'), false);
    outbox.commit();
    uplink.start();
    await waitFor(
      () => data().length === 3 && arrivals.some((arrival) => arrival.topic === 'fake/raw'),
      10_000,
      'the history of before the first connection',
    );
    // Live data of the first session.
    await new Promise((resolve) => setTimeout(resolve, 20));
    for (const value of [3, 4]) uplink.record(recorder, report(value));
    // (Every PUBACK settled first: QoS 1 would send an unsettled one again, in the next session.)
    await waitFor(() => data().length === 5 && outbox.stats.messages === 0, 10_000, 'live data, acknowledged');

    // The link dies under the first session: the broker publishes that session's will.
    relay.cut();
    await waitFor(() => of('fake/death').length === 1 && !uplink.stats.connected, 10_000, "the first session's will");
    for (const value of [5, 6]) uplink.record(recorder, report(value));
    outbox.commit();
    await new Promise((resolve) => setTimeout(resolve, 300)); // attempts refused meanwhile: each with a session (and a will) of its own
    relay.restore();
    await waitFor(
      () => data().length === 7,
      10_000,
      () => `the backlog after the reconnect: ${JSON.stringify({ arrivals, stats: uplink.stats, outbox: outbox.stats })}`,
    );
    await new Promise((resolve) => setTimeout(resolve, 20));
    uplink.record(recorder, report(7));
    await waitFor(() => data().length === 8, 10_000, 'live data of the second session');
    await uplink.stop(2000);
    await waitFor(() => of('fake/bye').length === 1, 10_000, 'the goodbye');

    const births = of('fake/birth');
    assert.equal(births.length, 2, 'one birth per connection');
    const [first, second] = [births[0]!.attempt, births[1]!.attempt];
    assert.ok(second > first, `a new session per connect attempt (${first}, then ${second})`);
    assert.deepEqual(
      births.map((birth) => birth.seq),
      [0, 0],
      "each birth takes its session's first sequence number",
    );
    assert.deepEqual(of('fake/death'), [{ attempt: first }], "the will is the one registered with the first session's CONNECT");
    assert.deepEqual(of('fake/bye'), [{ attempt: second }]);
    assert.deepEqual(
      arrivals.filter((arrival) => arrival.topic === 'fake/raw').map((arrival) => arrival.payload),
      ['raw bytes'],
      'a finished message passes through untouched',
    );
    assert.deepEqual(data(), [
      { value: 0, seq: 1, historical: true, attempt: first },
      { value: 1, seq: 2, historical: true, attempt: first },
      { value: 2, seq: 3, historical: true, attempt: first },
      { value: 3, seq: 4, historical: false, attempt: first },
      { value: 4, seq: 5, historical: false, attempt: first },
      { value: 5, seq: 1, historical: true, attempt: second },
      { value: 6, seq: 2, historical: true, attempt: second },
      { value: 7, seq: 3, historical: false, attempt: second },
    ]);
    // In arrival order too: each session's birth before any of its data.
    const order = arrivals
      .filter((arrival) => arrival.topic === 'fake/birth' || arrival.topic === 'fake/data')
      .map((arrival) => (arrival.topic === 'fake/birth' ? 'birth' : (JSON.parse(arrival.payload) as Stamped).value));
    assert.deepEqual(order, ['birth', 0, 1, 2, 3, 4, 'birth', 5, 6, 7]);
    assert.equal(uplink.stats.rejected, 1, 'the row the format could not encode was refused');
    assert.equal(outbox.stats.messages, 0);
  });
});

describe('the JSON format: the bytes of before the seam', () => {
  const sample: Sample = { device: 'press1', group: 'default', tag: 'speed', value: 21.5, quality: 'good', ts: 1732345678901, unit: '°C' };

  it('tag and batch payloads', () => {
    assert.equal(encodeTagPayload(sample, 'ms'), '{"value":21.5,"quality":"good","ts":1732345678901,"unit":"°C"}');
    assert.equal(
      encodeTagPayload(
        { device: 'press1', group: 'default', tag: 'speed', value: 2n ** 60n, quality: 'bad', reason: 'timeout', ts: 1732345678901 },
        'iso',
      ),
      '{"value":"1152921504606846976","quality":"bad","ts":"2024-11-23T07:07:58.901Z","reason":"timeout"}',
    );
    assert.equal(
      encodeBatchPayload('press1', 'default', 1732345678900, [sample], 'ms'),
      '{"device":"press1","group":"default","ts":1732345678900,"values":{"speed":{"value":21.5,"quality":"good","ts":1732345678901,"unit":"°C"}}}',
    );
  });

  it('status (birth, will, goodbye) and the answer to a write', () => {
    const format = new JsonFormat({ forward: [], receive: [] }, 'gw1', 'plc2mqtt/{gateway}/status');
    const status = (payload: string): CloudMessage => ({
      topic: 'plc2mqtt/gw1/status',
      payload: Buffer.from(payload),
      qos: 1,
      retain: true,
    });
    assert.deepEqual(format.births(), [status('online')]);
    assert.deepEqual(format.will(), status('offline'));
    assert.deepEqual(format.goodbye(), status('offline'));
    assert.equal(
      new JsonFormat({ forward: [], receive: [], statusTopic: 'site/{gateway}/up' }, 'gw1', 'plc2mqtt/{gateway}/status').births()[0]!.topic,
      'site/gw1/up',
    );
    assert.equal(format.encode(), undefined, 'JSON stores finished messages only');
    assert.equal(
      encodeAnswer({ ok: true, device: 'press1', tag: 'speed', value: 2n ** 60n, ts: 5 }),
      '{"ok":true,"device":"press1","tag":"speed","value":"1152921504606846976","ts":5}',
    );
  });

  it('records the local message itself on the forward rule’s topic and QoS; receive rules come down as local publishes', () => {
    const format = new JsonFormat(
      {
        forward: [{ topic: '#', localPrefix: 'plant/', remotePrefix: 'cloud/', qos: 0 }],
        receive: [{ topic: '+/set', localPrefix: 'plant/', remotePrefix: 'cloud/', qos: 1 }],
      },
      'gw1',
      'plc2mqtt/{gateway}/status',
    );
    assert.equal(format.recorder('other/x'), undefined);
    const payload = Buffer.from('{"value":1}');
    const record = format.recorder('plant/speed')!({
      kind: 'tag',
      device: 'd',
      group: 'default',
      tag: 'speed',
      sample,
      local: { topic: 'plant/speed', payload, retain: true },
    });
    assert.deepEqual(record, { topic: 'cloud/speed', payload, qos: 0, retain: true });
    assert.equal(record!.payload, payload, 'the very bytes published locally');
    assert.equal(record!.kind, undefined, 'a finished message: nothing to encode at send time');
    assert.deepEqual(format.decodeDownlink('cloud/speed/set', Buffer.from('5'), false), [
      { kind: 'local', topic: 'plant/speed/set', payload: Buffer.from('5'), retain: false },
    ]);
    assert.deepEqual(format.decodeDownlink('cloud/elsewhere', Buffer.from('5'), false), []);
    assert.deepEqual(format.subscriptions(5), { 'cloud/+/set': { qos: 1, nl: true } });
  });

  it('the topics: tag, batch, status, command, result, and the filter of unknown tags', () => {
    const topics = new GatewayTopics(
      topicsSection.parse({ tag: 'acme/{site}/{device}/{tag}', batch: 'acme/{site}/{device}/{group}' }),
      'gw1',
    );
    const device = { name: 'press1', meta: { site: 'lyon' } };
    assert.equal(topics.tag(device, 'default', { name: 'speed' }), 'acme/lyon/press1/speed');
    assert.equal(topics.tag(device, 'default', { name: 'speed', topic: 'own/{gateway}/{tag}' }), 'own/gw1/speed');
    assert.equal(topics.batch(device, 'fast'), 'acme/lyon/press1/fast');
    assert.equal(topics.status, 'plc2mqtt/gw1/status');
    assert.equal(topics.command('acme/lyon/press1/speed'), 'acme/lyon/press1/speed/set');
    assert.equal(topics.result('acme/lyon/press1/speed/set'), 'acme/lyon/press1/speed/set/result');
    assert.equal(topics.commandOfResult('acme/lyon/press1/speed/set/result'), 'acme/lyon/press1/speed/set');
    assert.equal(topics.commandOfResult('acme/lyon/press1/speed'), undefined);
    assert.equal(topics.anyTagFilter(), 'acme/+/+/+');
  });
});
