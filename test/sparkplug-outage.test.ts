// A 60 s cloud outage of the Sparkplug B edge node, end to end: the real gateway CLI polls its
// simulated PLC (ramp +1 every 100 ms) every 200 ms while mosquitto is SIGKILLed and, 60 s later,
// started again on the same port; an independent Python Sparkplug host watches before and after.
// An MQTT client on the gateway's integrated broker records every ramp sample the gateway produced
// (its local JSON topic, value + ts): the reference the cloud's view is compared with. It proves:
//   - after the reconnect: NBIRTH with bdSeq + 1 (one new CONNECT), the DBIRTHs, then every cycle
//     buffered during the outage as DDATA with is_historical on every metric, in order, then live
//     DDATA only;
//   - no loss: every ramp sample (value and timestamp) the gateway produced appears at the host
//     (DDATA of the old or the new session, or carried by a DBIRTH);
//   - seq +1 mod 256 across more than 256 messages, with at least one wrap 255 → 0;
//   - no MUST (nor SHOULD) rule broken, no decode error, on either host.
// Bounded waits only; no timing assertions.
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, it } from 'node:test';
import mqtt from 'mqtt';
import { waitFor } from './helpers/net.js';
import { type HostMessage, type SparkplugHost, startSparkplugHost } from './helpers/sparkplug-host.js';
import { assertSeqChain, bdSeqOf, edgeMessages, GROUP, isData, more, NODE, rig, settled, WAIT } from './helpers/sparkplug-rig.js';

const OUTAGE_MS = 60_000;

interface Sample {
  value: unknown;
  ts: number;
}

/** "ts value" of every ramp sample the host saw: DDATA (live or historical) and DBIRTH of plc. */
function hostSamples(messages: readonly HostMessage[]): Set<string> {
  const seen = new Set<string>();
  for (const m of messages)
    if ((m.type === 'DDATA' || m.type === 'DBIRTH') && m.device === 'plc')
      for (const metric of m.metrics ?? [])
        if (metric.name === 'ramp' && !metric.isNull) seen.add(`${String(metric.timestamp)} ${JSON.stringify(metric.value)}`);
  return seen;
}

/** Waits until the host's message count has not moved for `quietMs` (bounded by WAIT). */
async function quiet(host: SparkplugHost, quietMs: number): Promise<void> {
  let last = -1;
  let since = Date.now();
  await waitFor(
    () => {
      const now = host.messages().length;
      if (now !== last) [last, since] = [now, Date.now()];
      return Date.now() - since >= quietMs;
    },
    WAIT,
    'the host to have read everything mosquitto forwarded',
  );
}

describe('Sparkplug B edge node: a 60 s cloud outage', () => {
  it('reconnect: NBIRTH bdSeq + 1, DBIRTHs, every buffered cycle as is_historical DDATA in order, then live; no sample lost; seq wraps 255 → 0 unbroken', async (t) => {
    const { host, cloud, gateway, setup } = await rig(t);
    const baseline = await settled(host);
    // The reference: every ramp sample the gateway publishes on its own broker.
    const local: Sample[] = [];
    const client = await mqtt.connectAsync(setup.brokerUrl, { reconnectPeriod: 0, connectTimeout: 5000 });
    t.after(() => client.endAsync(true));
    client.on('message', (_topic, payload) => {
      const parsed = JSON.parse(payload.toString()) as { value: unknown; ts: number; quality: string };
      if (parsed.quality === 'good') local.push({ value: parsed.value, ts: parsed.ts });
    });
    await client.subscribeAsync(`plc2mqtt/gw/plc/ramp`, { qos: 1 });
    await more(host, isData('plc'), 5, 'live DDATA of plc');
    const bdSeq = bdSeqOf(edgeMessages(host).findLast((m) => m.type === 'NBIRTH')!);

    // Nothing in flight when the cloud dies: the gateway stopped, mosquitto has read (and forwarded)
    // everything. What mosquitto took and did not forward is the cloud's loss, not the gateway's.
    gateway.freeze();
    await waitFor(() => cloud.inputDrained(), WAIT, 'mosquitto to read everything sent to it');
    await quiet(host, 500);
    await cloud.kill();
    gateway.thaw();
    await gateway.waitForLog('disconnected from the cloud broker', WAIT);
    const before = edgeMessages(host);
    assert.deepEqual(host.violations().slice(baseline), []);
    await host.kill();
    const outageStart = local.length;
    await sleep(OUTAGE_MS);
    const buffered = (await gateway.outboxStatus()).messages;
    assert.ok(buffered >= 260, `the outage's cycles buffered (${buffered}): more than 256 messages to send after it`);
    assert.ok(local.length - outageStart >= 200, `the ramp went on during the outage (${local.length - outageStart} samples)`);

    // Same port; a new host subscribed before the gateway may reconnect (it is frozen meanwhile).
    gateway.freeze();
    const outageEnd = local.length;
    await cloud.start();
    const fresh = await startSparkplugHost({ url: cloud.url, group: GROUP, node: NODE, clientId: 'spb-host-2' });
    t.after(() => fresh.kill());
    gateway.thaw();
    await fresh.waitFor(
      () => edgeMessages(fresh).some((m) => isData('plc')(m) && m.metrics!.some((x) => !x.isHistorical)),
      WAIT * 2,
      'live DDATA after the reconnect',
    );
    // Every sample produced so far must reach the host: wait (bounded) until the host is past the last one.
    const reference = [...local];
    const lastTs = Math.max(...reference.map((s) => s.ts));
    await fresh.waitFor(
      () =>
        edgeMessages(fresh).some(
          (m) => isData('plc')(m) && m.metrics!.some((x) => x.name === 'ramp' && !x.isHistorical && Number(x.timestamp) >= lastTs),
        ),
      WAIT,
      `a live ramp sample at or after ${lastTs}`,
    );
    const after = edgeMessages(fresh);

    // Births first, with a new bdSeq: one CONNECT since the last NBIRTH [tck-id-topics-nbirth-bdseq-increment].
    assert.deepEqual(
      after.slice(0, 3).map((m) => [m.type, m.device, m.seq]),
      [
        ['NBIRTH', null, 0],
        ['DBIRTH', 'plc', 1],
        ['DBIRTH', 'aux', 2],
      ],
    );
    assert.ok(
      after.slice(3).every((m) => m.type !== 'NBIRTH' && m.type !== 'DBIRTH'),
      'no rebirth while flushing',
    );

    // Then the buffered cycles, every metric is_historical, oldest first; then live only.
    const data = after.filter((m) => m.type === 'DDATA');
    const firstLive = data.findIndex((m) => m.metrics!.some((x) => !x.isHistorical));
    assert.ok(firstLive >= 250, `at least 250 historical DDATA before live data (${firstLive})`);
    for (const m of data.slice(0, firstLive))
      assert.ok(
        m.metrics!.every((x) => x.isHistorical),
        `seq ${m.seq}: every metric of a buffered cycle is_historical`,
      );
    for (const m of data.slice(firstLive))
      assert.ok(
        m.metrics!.every((x) => !x.isHistorical),
        `seq ${m.seq}: no history after live data`,
      );
    const historicalRamp = data
      .slice(0, firstLive)
      .flatMap((m) => m.metrics!.filter((x) => x.name === 'ramp'))
      .map((x) => Number(x.timestamp));
    for (let i = 1; i < historicalRamp.length; i++)
      assert.ok(historicalRamp[i]! >= historicalRamp[i - 1]!, `history in order: ${historicalRamp[i - 1]} then ${historicalRamp[i]}`);
    const outageSamples = reference.slice(outageStart, outageEnd);
    const historicalStamps = new Set(historicalRamp);
    const inHistory = outageSamples.filter((s) => historicalStamps.has(s.ts)).length;
    assert.ok(
      inHistory >= outageSamples.length - 1,
      `the outage's samples come as history (${inHistory} of ${outageSamples.length}; the last may ride in the DBIRTH)`,
    );

    // No loss: every sample the gateway produced, by value and timestamp.
    const seen = new Set([...hostSamples(before), ...hostSamples(after)]);
    const missing = reference.filter((s) => !seen.has(`${s.ts} ${JSON.stringify(s.value)}`));
    assert.deepEqual(missing, [], `samples the host never got, of ${reference.length}`);

    // seq: continuous over every message of the session, wrapping at least once.
    assert.ok(after.length > 256, `${after.length} messages after the reconnect`);
    assertSeqChain(after);
    const wraps = after.filter((m, i) => i > 0 && m.type !== 'NDEATH' && m.seq === 0 && after[i - 1]!.seq === 255).length;
    assert.ok(wraps >= 1, 'seq wrapped from 255 to 0');
    assertSeqChain(before);

    assert.deepEqual(fresh.violations(), [], 'no MUST or SHOULD rule broken after the outage');
    assert.deepEqual(fresh.errors(), []);
    assert.ok(gateway.running);
    // Hundreds of failed TCP attempts during the outage, one CONNECT that a broker accepted: bdSeq + 1.
    assert.equal(bdSeqOf(after[0]!), (bdSeq + 1) % 256, 'bdSeq + 1 for the one new CONNECT [tck-id-topics-nbirth-bdseq-increment]');
  });
});
