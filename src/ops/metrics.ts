// Prometheus metrics (prom-client). Everything the gateway already counts is read at scrape time
// from one status snapshot (src/app/status.ts, the same document as /api/status), so the hot path
// pays nothing for metrics except the poll duration histogram, which needs every observation and
// takes it from the event bus ("poll" events).
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { EventBus } from '../app/event-bus.js';
import { DEVICE_STATES, type GatewayEvents } from '../app/events.js';
import type { StatusSnapshot } from '../app/status.js';

/** A counter whose total lives elsewhere: set to that total at every scrape. */
function mirroredCounter<Label extends string>(
  registry: Registry,
  name: string,
  help: string,
  labelNames: readonly Label[],
  read: () => Array<[Partial<Record<Label, string>>, number]>,
): void {
  new Counter({
    name,
    help,
    labelNames,
    registers: [registry],
    collect() {
      this.reset();
      for (const [labels, value] of read()) if (value > 0) this.inc(labels, value);
    },
  });
}

function gauge<Label extends string>(
  registry: Registry,
  name: string,
  help: string,
  labelNames: readonly Label[],
  read: () => Array<[Partial<Record<Label, string>>, number]>,
): void {
  new Gauge({
    name,
    help,
    labelNames,
    registers: [registry],
    collect() {
      this.reset();
      for (const [labels, value] of read()) this.set(labels, value);
    },
  });
}

export class GatewayMetrics {
  readonly registry = new Registry();
  private readonly pollDuration: Histogram<'device' | 'group' | 'outcome'>;
  private readonly source: () => StatusSnapshot;
  /** The snapshot of the scrape in progress. */
  private snapshot: StatusSnapshot | undefined;

  /** `source` gives the status snapshot (without tags); poll durations come from `bus`. */
  constructor(source: () => StatusSnapshot, bus: EventBus<GatewayEvents>) {
    this.source = source;
    collectDefaultMetrics({ register: this.registry, prefix: 'plc2mqtt_' });
    this.pollDuration = new Histogram({
      name: 'plc2mqtt_poll_duration_seconds',
      help: "Time one poll of a device's poll group took (the driver read), by outcome.",
      labelNames: ['device', 'group', 'outcome'],
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers: [this.registry],
    });
    bus.on('poll', (poll) =>
      this.pollDuration.observe({ device: poll.device, group: poll.group, outcome: poll.ok ? 'ok' : 'error' }, poll.seconds),
    );
    // One snapshot per scrape (taken by scrape(); a collect outside of one takes its own).
    const current = () => (this.snapshot ??= this.source());
    const devices = () => current().devices;
    gauge(this.registry, 'plc2mqtt_device_connected', "1 while the device's connection is up.", ['device'], () =>
      devices().map((device) => [{ device: device.name }, device.state === 'connected' ? 1 : 0]),
    );
    gauge(
      this.registry,
      'plc2mqtt_device_state',
      "The device's state (1 for the current one): its connection state, or starting / failed while its driver is being loaded and created or that failed.",
      ['device', 'state'],
      () =>
        devices().flatMap((device) =>
          DEVICE_STATES.map((state): [Partial<Record<'device' | 'state', string>>, number] => [
            { device: device.name, state },
            device.state === state ? 1 : 0,
          ]),
        ),
    );
    mirroredCounter(this.registry, 'plc2mqtt_device_connect_attempts_total', 'Connection attempts to the device.', ['device'], () =>
      devices().map((device) => [{ device: device.name }, device.connectAttempts]),
    );
    mirroredCounter(
      this.registry,
      'plc2mqtt_poll_errors_total',
      'Polls with at least one bad tag, by failure code (timeout, exception-2, not-connected, BadNodeIdUnknown, …).',
      ['device', 'code'],
      () =>
        devices().flatMap((device) =>
          Object.entries(device.errorsByCode).map(([code, count]): [Partial<Record<'device' | 'code', string>>, number] => [
            { device: device.name, code },
            count,
          ]),
        ),
    );
    mirroredCounter(
      this.registry,
      'plc2mqtt_poll_overruns_total',
      'Poll slots skipped because the previous cycle was still running.',
      ['device'],
      () => devices().map((device) => [{ device: device.name }, device.overruns]),
    );
    mirroredCounter(this.registry, 'plc2mqtt_poll_cycles_total', 'Poll cycles (and supervision ticks of subscriptions).', ['device'], () =>
      devices().map((device) => [{ device: device.name }, device.cycles]),
    );
    mirroredCounter(this.registry, 'plc2mqtt_samples_total', 'Readings normalized into samples.', ['device'], () =>
      devices().map((device) => [{ device: device.name }, device.samples]),
    );
    mirroredCounter(
      this.registry,
      'plc2mqtt_messages_published_total',
      'Messages (per tag or batch) handed to the integrated broker.',
      [],
      () => [[{}, current().gateway.published]],
    );

    const outbox = () => current().outbox;
    gauge(this.registry, 'plc2mqtt_outbox_messages', 'Messages waiting in the outbox for the cloud.', [], () => [
      [{}, outbox()?.messages ?? 0],
    ]);
    gauge(this.registry, 'plc2mqtt_outbox_bytes', 'Bytes of the messages waiting in the outbox.', [], () => [[{}, outbox()?.bytes ?? 0]]);
    gauge(
      this.registry,
      'plc2mqtt_outbox_oldest_age_seconds',
      'Age of the oldest message waiting in the outbox (0 when empty).',
      [],
      () => [[{}, outbox()?.oldestAgeSeconds ?? 0]],
    );
    gauge(this.registry, 'plc2mqtt_outbox_disk_full', '1 while the outbox cannot write because the disk is full.', [], () => [
      [{}, outbox()?.diskFull ? 1 : 0],
    ]);
    mirroredCounter(this.registry, 'plc2mqtt_outbox_appended_total', 'Messages appended to the outbox.', [], () => [
      [{}, outbox()?.appended ?? 0],
    ]);
    mirroredCounter(
      this.registry,
      'plc2mqtt_outbox_dropped_total',
      'Messages dropped by an outbox bound (count, bytes, age) or a disk full for too long.',
      [],
      () => [[{}, outbox()?.dropped ?? 0]],
    );
    mirroredCounter(
      this.registry,
      'plc2mqtt_outbox_damaged_total',
      'Messages read back from outbox.db not as the gateway wrote them (checksum mismatch): set aside in dead_letters, not sent.',
      [],
      () => [[{}, outbox()?.damaged ?? 0]],
    );
    mirroredCounter(
      this.registry,
      'plc2mqtt_outbox_delivered_total',
      'Messages deleted from the outbox after the cloud acknowledged them.',
      [],
      () => [[{}, outbox()?.delivered ?? 0]],
    );

    const uplink = () => current().uplink;
    gauge(this.registry, 'plc2mqtt_uplink_connected', '1 while connected to the cloud broker.', [], () => [
      [{}, uplink()?.connected ? 1 : 0],
    ]);
    gauge(
      this.registry,
      'plc2mqtt_uplink_in_flight',
      'Messages sent to the cloud and not yet acknowledged (QoS 0: not yet confirmed by a ping round trip).',
      [],
      () => [[{}, uplink()?.inFlight ?? 0]],
    );
    mirroredCounter(
      this.registry,
      'plc2mqtt_uplink_sent_total',
      'Messages sent to the cloud (resends after a reconnect count again).',
      [],
      () => [[{}, uplink()?.sent ?? 0]],
    );
    mirroredCounter(this.registry, 'plc2mqtt_uplink_acknowledged_total', 'Messages the cloud acknowledged.', [], () => [
      [{}, uplink()?.acknowledged ?? 0],
    ]);
    mirroredCounter(
      this.registry,
      'plc2mqtt_uplink_rejected_total',
      'Messages the cloud refused (set aside in the dead-letter table).',
      [],
      () => [[{}, uplink()?.rejected ?? 0]],
    );
    mirroredCounter(this.registry, 'plc2mqtt_uplink_reconnects_total', 'Reconnections to the cloud broker.', [], () => [
      [{}, uplink()?.reconnects ?? 0],
    ]);
    mirroredCounter(this.registry, 'plc2mqtt_uplink_received_total', 'Messages received from the cloud (receive rules).', [], () => [
      [{}, uplink()?.received ?? 0],
    ]);

    const broker = () => current().broker;
    gauge(this.registry, 'plc2mqtt_broker_clients', 'MQTT clients connected to the integrated broker.', [], () => [[{}, broker().clients]]);
    gauge(this.registry, 'plc2mqtt_broker_queued', 'Gateway messages waiting to be handed to the integrated broker.', [], () => [
      [{}, broker().queued],
    ]);
    mirroredCounter(
      this.registry,
      'plc2mqtt_broker_messages_in_total',
      'Messages MQTT clients published to the integrated broker.',
      [],
      () => [[{}, broker().messagesIn]],
    );
    mirroredCounter(
      this.registry,
      'plc2mqtt_broker_messages_out_total',
      'Deliveries from the integrated broker to MQTT clients.',
      [],
      () => [[{}, broker().messagesOut]],
    );
    mirroredCounter(
      this.registry,
      'plc2mqtt_broker_dropped_total',
      'Gateway messages dropped because local subscribers could not keep up.',
      [],
      () => [[{}, broker().dropped]],
    );
    mirroredCounter(
      this.registry,
      'plc2mqtt_broker_denied_total',
      'Connections refused and publishes or subscriptions denied (auth, ACL, limits).',
      [],
      () => [[{}, broker().denied]],
    );
    mirroredCounter(
      this.registry,
      'plc2mqtt_broker_session_dropped_total',
      'Messages not kept for a persistent session that was full (broker.limits.maxInflight + maxQueued).',
      [],
      () => [[{}, broker().sessionDropped]],
    );
    mirroredCounter(
      this.registry,
      'plc2mqtt_broker_qos0_dropped_total',
      'QoS 0 deliveries dropped for MQTT clients that did not read (their connection was full).',
      [],
      () => [[{}, broker().qos0Dropped]],
    );

    mirroredCounter(
      this.registry,
      'plc2mqtt_writes_total',
      'Write commands by result: written, rejected (checks; nothing written), failed (device error or read-back mismatch).',
      ['result'],
      () => {
        const stats = current().writes;
        return [
          [{ result: 'written' }, stats.written],
          [{ result: 'rejected' }, stats.rejected],
          [{ result: 'failed' }, stats.failed],
        ];
      },
    );
  }

  /** The Prometheus text: every metric read from one status snapshot taken now. */
  async scrape(): Promise<string> {
    this.snapshot = this.source();
    try {
      return await this.registry.metrics();
    } finally {
      this.snapshot = undefined;
    }
  }
}
