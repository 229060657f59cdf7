// Prometheus metrics (prom-client). Everything the gateway already counts is read at scrape time
// (collect callbacks), so the hot path pays nothing for metrics except the poll duration
// histogram, which needs every observation.
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { Gateway } from '../gateway.js';

/** A counter whose total lives elsewhere: set to that total at every scrape. */
function mirroredCounter<Label extends string>(registry: Registry, name: string, help: string, labelNames: readonly Label[], read: () => Array<[Partial<Record<Label, string>>, number]>): void {
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

function gauge<Label extends string>(registry: Registry, name: string, help: string, labelNames: readonly Label[], read: () => Array<[Partial<Record<Label, string>>, number]>): void {
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
  private gateway: Gateway | undefined;

  constructor() {
    collectDefaultMetrics({ register: this.registry, prefix: 'plc2mqtt_' });
    this.pollDuration = new Histogram({
      name: 'plc2mqtt_poll_duration_seconds',
      help: 'Time one poll of a device\'s poll group took (the driver read), by outcome.',
      labelNames: ['device', 'group', 'outcome'],
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers: [this.registry],
    });
    const devices = () => this.gateway?.deviceStatus() ?? [];
    const deviceStates = ['connecting', 'connected', 'disconnected', 'stopped'] as const;
    gauge(this.registry, 'plc2mqtt_device_connected', '1 while the device\'s connection is up.', ['device'], () => devices().map((device) => [{ device: device.name }, device.health.state === 'connected' ? 1 : 0]));
    gauge(this.registry, 'plc2mqtt_device_state', 'The device\'s connection state (1 for the current one).', ['device', 'state'], () =>
      devices().flatMap((device) => deviceStates.map((state): [Partial<Record<'device' | 'state', string>>, number] => [{ device: device.name, state }, device.health.state === state ? 1 : 0])),
    );
    mirroredCounter(this.registry, 'plc2mqtt_device_connect_attempts_total', 'Connection attempts to the device.', ['device'], () => devices().map((device) => [{ device: device.name }, device.health.connectAttempts]));
    mirroredCounter(this.registry, 'plc2mqtt_poll_errors_total', 'Polls with at least one bad tag, by failure code (timeout, exception-2, not-connected, BadNodeIdUnknown, …).', ['device', 'code'], () =>
      devices().flatMap((device) => Object.entries(device.health.errorsByCode).map(([code, count]): [Partial<Record<'device' | 'code', string>>, number] => [{ device: device.name, code }, count])),
    );
    mirroredCounter(this.registry, 'plc2mqtt_poll_overruns_total', 'Poll slots skipped because the previous cycle was still running.', ['device'], () => devices().map((device) => [{ device: device.name }, device.health.overruns]));
    mirroredCounter(this.registry, 'plc2mqtt_poll_cycles_total', 'Poll cycles (and supervision ticks of subscriptions).', ['device'], () => devices().map((device) => [{ device: device.name }, device.health.cycles]));
    mirroredCounter(this.registry, 'plc2mqtt_samples_total', 'Readings normalized into samples.', ['device'], () => devices().map((device) => [{ device: device.name }, device.samples]));
    mirroredCounter(this.registry, 'plc2mqtt_messages_published_total', 'Messages (per tag or batch) handed to the integrated broker.', [], () => [[{}, this.gateway?.stats.published ?? 0]]);

    const outbox = () => this.gateway?.outbox;
    gauge(this.registry, 'plc2mqtt_outbox_messages', 'Messages waiting in the outbox for the cloud.', [], () => [[{}, outbox()?.stats.messages ?? 0]]);
    gauge(this.registry, 'plc2mqtt_outbox_bytes', 'Bytes of the messages waiting in the outbox.', [], () => [[{}, outbox()?.stats.bytes ?? 0]]);
    gauge(this.registry, 'plc2mqtt_outbox_oldest_age_seconds', 'Age of the oldest message waiting in the outbox (0 when empty).', [], () => [[{}, (outbox()?.oldestAge() ?? 0) / 1000]]);
    gauge(this.registry, 'plc2mqtt_outbox_disk_full', '1 while the outbox cannot write because the disk is full.', [], () => [[{}, outbox()?.stats.diskFull ? 1 : 0]]);
    mirroredCounter(this.registry, 'plc2mqtt_outbox_appended_total', 'Messages appended to the outbox.', [], () => [[{}, outbox()?.stats.appended ?? 0]]);
    mirroredCounter(this.registry, 'plc2mqtt_outbox_dropped_total', 'Messages dropped by an outbox bound (count, bytes, age) or a disk full for too long.', [], () => [[{}, outbox()?.stats.dropped ?? 0]]);
    mirroredCounter(this.registry, 'plc2mqtt_outbox_damaged_total', 'Messages read back from outbox.db not as the gateway wrote them (checksum mismatch): set aside in dead_letters, not sent.', [], () => [[{}, outbox()?.stats.damaged ?? 0]]);
    mirroredCounter(this.registry, 'plc2mqtt_outbox_delivered_total', 'Messages deleted from the outbox after the cloud acknowledged them.', [], () => [[{}, outbox()?.stats.delivered ?? 0]]);

    const uplink = () => this.gateway?.uplink?.stats;
    gauge(this.registry, 'plc2mqtt_uplink_connected', '1 while connected to the cloud broker.', [], () => [[{}, uplink()?.connected ? 1 : 0]]);
    gauge(this.registry, 'plc2mqtt_uplink_in_flight', 'QoS 1 messages sent to the cloud and not yet acknowledged.', [], () => [[{}, uplink()?.inFlight ?? 0]]);
    mirroredCounter(this.registry, 'plc2mqtt_uplink_sent_total', 'Messages sent to the cloud (resends after a reconnect count again).', [], () => [[{}, uplink()?.sent ?? 0]]);
    mirroredCounter(this.registry, 'plc2mqtt_uplink_acknowledged_total', 'Messages the cloud acknowledged.', [], () => [[{}, uplink()?.acknowledged ?? 0]]);
    mirroredCounter(this.registry, 'plc2mqtt_uplink_rejected_total', 'Messages the cloud refused (set aside in the dead-letter table).', [], () => [[{}, uplink()?.rejected ?? 0]]);
    mirroredCounter(this.registry, 'plc2mqtt_uplink_reconnects_total', 'Reconnections to the cloud broker.', [], () => [[{}, uplink()?.reconnects ?? 0]]);
    mirroredCounter(this.registry, 'plc2mqtt_uplink_received_total', 'Messages received from the cloud (receive rules).', [], () => [[{}, uplink()?.received ?? 0]]);

    const broker = () => this.gateway?.broker;
    gauge(this.registry, 'plc2mqtt_broker_clients', 'MQTT clients connected to the integrated broker.', [], () => [[{}, broker()?.clientCount ?? 0]]);
    gauge(this.registry, 'plc2mqtt_broker_queued', 'Gateway messages waiting to be handed to the integrated broker.', [], () => [[{}, broker()?.queued ?? 0]]);
    mirroredCounter(this.registry, 'plc2mqtt_broker_messages_in_total', 'Messages MQTT clients published to the integrated broker.', [], () => [[{}, broker()?.stats.messagesIn ?? 0]]);
    mirroredCounter(this.registry, 'plc2mqtt_broker_messages_out_total', 'Deliveries from the integrated broker to MQTT clients.', [], () => [[{}, broker()?.stats.messagesOut ?? 0]]);
    mirroredCounter(this.registry, 'plc2mqtt_broker_dropped_total', 'Gateway messages dropped because local subscribers could not keep up.', [], () => [[{}, broker()?.stats.dropped ?? 0]]);
    mirroredCounter(this.registry, 'plc2mqtt_broker_denied_total', 'Connections refused and publishes or subscriptions denied (auth, ACL, limits).', [], () => [[{}, broker()?.stats.denied ?? 0]]);

    const commands = () => this.gateway?.commands.stats;
    mirroredCounter(this.registry, 'plc2mqtt_writes_total', 'Write commands by result: written, rejected (checks; nothing written), failed (device error or read-back mismatch).', ['result'], () => {
      const stats = commands();
      return stats ? [[{ result: 'written' }, stats.written], [{ result: 'rejected' }, stats.rejected], [{ result: 'failed' }, stats.failed]] : [];
    });
  }

  /** The gateway whose counters are read at scrape time. */
  attach(gateway: Gateway): void {
    this.gateway = gateway;
  }

  observePoll(device: string, group: string, seconds: number, ok: boolean): void {
    this.pollDuration.observe({ device, group, outcome: ok ? 'ok' : 'error' }, seconds);
  }
}
