// The life of a sample, top to bottom:
//
//   poll job (pipeline/scheduler.ts) fires on its fixed-rate grid for one device and poll group
//     → driver.read(plan)    (drivers/<name>) returns raw readings; failures become bad quality
//     → TagNormalizer        (pipeline/normalize.ts) types, scales, stamps, decides report-by-exception
//     → topic + payload      (northbound/json/) the JSON topic compiled once at start, the JSON payload
//     → integrated broker    (broker/) where local subscribers see it, retained
//     → format.record        (northbound/format.ts) what the cloud's format keeps of it, looked up once per
//                            topic (JSON: the same bytes, when a forward rule takes the topic) or per
//                            device (Sparkplug B: the cycle's reported samples as one record, later DDATA)
//     → outbox               (cloud/outbox.ts) SQLite: a finished message, or a format's record
//     → uplink               (cloud/uplink.ts) the sender takes it; a record is encoded now, in the
//                            connection's session (sequence numbers, replayed history), after that
//                            connection's births; to the cloud broker; deleted on PUBACK (QoS 0: on
//                            the ping round trip after it)
//     (→ the event bus       (app/event-bus.ts) a "sample" event, built only while someone listens)
//
// Messages that MQTT clients publish into the integrated broker on forwarded topics take the
// same outbox → uplink path as finished messages the format does not touch (the broker's
// clientPublish handler, given at its start: a QoS 1 PUBACK waits for the outbox commit), and
// cloud commands come back down, decoded by the format (JSON: into the integrated broker).
//
// The way back to the PLC: a message on a tag's command topic ("<tag topic>/set"), from a local
// client the ACL let through (the broker's command handler) or from the cloud (the uplink's downlink handler)
//     → CommandHandler       (commands/) parse, writable?, type, min/max, rate limit
//     → DeviceRunner.write   → driver.write; optional read-back
//     → answer               on "<command topic>/result" or the MQTT 5 response topic, plus an audit line
//                            and a "write" event on the bus
//
// Each part runs as a feature of the supervisor (app/supervisor.ts), started in this order and
// stopped in reverse: simulators, outbox, broker, uplink, commands, status topic, each device,
// operations endpoint. A device whose driver cannot be loaded or created is reported ("failed",
// its tags bad) and started again with back-off while everything else runs; a device that starts
// but cannot connect is its DeviceRunner's business. Everything a device does is isolated: one
// failing device never stops another. What happens is announced on the event bus (samples,
// device and uplink states, polls, outbox depth, writes); status() is the one snapshot that
// /api/status and /metrics read.
import { join } from 'node:path';
import type { Logger } from 'pino';
import { EventBus } from './app/event-bus.js';
import type { GatewayEvents } from './app/events.js';
import { applyReload, deviceFingerprint, type ReloadResult, type ReloadTarget } from './app/reload.js';
import type { DeviceSnapshot, StatusOptions, StatusSnapshot, TagStatus } from './app/status.js';
import { Supervisor, type Feature, type FeatureOptions, type FeatureStatus } from './app/supervisor.js';
import { IntegratedBroker, PublishRefused } from './broker/broker.js';
import { type CommandAnswer, type CommandDevice, CommandHandler, type CommandOrigin } from './commands/command-handler.js';
import type { LoadedConfig } from './config/load.js';
import type { Config, DeviceConfig, TagConfig } from './config/schema.js';
import { DeviceRunner, type PollGroup, type ReadingsEvent } from './pipeline/device-runner.js';
import { errorMessage } from './util/errors.js';
import type { BackoffOptions } from './util/backoff.js';
import type { Driver, DriverTag, TagReading, TagValue } from './pipeline/driver.js';
import { type DeclaredValueType, DRIVERS, type DriverModule } from './pipeline/registry.js';
import { TagNormalizer, type Sample } from './pipeline/normalize.js';
import { startPhase } from './pipeline/scheduler.js';
import type { RunningSimulator } from './demo/simulator.js';
import { ensureDataDir } from './util/sqlite-file.js';
import type { DeviceRecorder, NorthboundFormat, Recorder } from './northbound/format.js';
import { JsonFormat } from './northbound/json/format.js';
import { BdSeqStore } from './northbound/sparkplug/bdseq.js';
import { SparkplugFormat, type Catalog, type CatalogDevice } from './northbound/sparkplug/format.js';
import type { TagTypeInfo } from './northbound/sparkplug/tags.js';
import { encodeAnswer, encodeBatchPayload, encodeTagPayload } from './northbound/json/payload.js';
import { GatewayTopics } from './northbound/json/topics.js';
import { Outbox } from './cloud/outbox.js';
import { Uplink, type DownlinkHandlers } from './cloud/uplink.js';
import { GatewayMetrics } from './ops/metrics.js';
import { OpsServer } from './ops/http-server.js';
import { stageTimes } from './cloud/stage-times.js';

export type { ReloadResult } from './app/reload.js';
export type { TagStatus } from './app/status.js';

/** A tag compiled for the hot path: its normalizer and its rendered topic. */
interface CompiledTag {
  config: TagConfig;
  normalizer: TagNormalizer;
  topic: string;
  /** How the northbound format records the tag's samples for the cloud (JSON: when a forward rule takes its topic). */
  cloud?: Recorder | undefined;
  /** The latest sample, published or not (previous value for writes). */
  last?: Sample | undefined;
  /** What the config says of its value type (typed formats: Sparkplug datatypes). */
  valueType: TagTypeInfo;
  unit: string | undefined;
}

interface CompiledDevice {
  config: DeviceConfig;
  tags: Map<string, CompiledTag>;
  /** Rendered batch topic per poll group (publish: "batch") and how the format records it for the cloud. */
  batchTopics: Map<string, { topic: string; cloud: Recorder | undefined }>;
  /** How the northbound format records the device's cycles and losses (Sparkplug), if it does. */
  cloud?: DeviceRecorder | undefined;
  /** Absent while its driver is being loaded and created, or when that failed (then it is tried again). */
  runner?: DeviceRunner | undefined;
  /** Its write path as registered with the command handler (once its runner exists). */
  commands?: CommandDevice | undefined;
  /** Readings normalized into samples, for the metrics. */
  samples: number;
}

/** The last reload: applied (with what it did) or refused (with the problems of the new config). */
export type LastReload = { at: string } & ({ outcome: 'applied'; result: ReloadResult } | { outcome: 'refused'; problems: string[] });

export interface GatewayStats {
  /** Readings normalized into samples. */
  samples: number;
  /** Messages (per tag or batch) handed to the integrated broker. */
  published: number;
}

export interface GatewayOptions {
  /** The version /api/status shows. */
  version?: string;
  /**
   * Serve the config's http section (when enabled): /healthz, /readyz, /metrics, /api/status.
   * The CLI does; a gateway started in-process (tests) has none unless asked.
   */
  ops?: boolean;
  /** Where a device's driver module comes from (default: the registry). Tests give drivers that fail here. */
  loadDriver?: (device: DeviceConfig) => Promise<DriverModule<DeviceConfig>>;
  /** Back-off between start attempts of a device whose driver cannot be loaded or created (default 1 s doubling up to 30 s). */
  deviceRetry?: BackoffOptions;
}

/** How often the uplink's state and the outbox's depth are looked at for the event bus. */
const CLOUD_WATCH_INTERVAL_MS = 1000;
/** How long stopping the write path waits for writes in progress to be answered. */
const COMMANDS_STOP_GRACE_MS = 1000;

const deviceFeature = (name: string) => `device ${name}`;

export class Gateway {
  private currentConfig: Config;
  /** What happens in the gateway, for whoever listens (metrics, a web console). */
  readonly bus: EventBus<GatewayEvents>;
  readonly commands: CommandHandler;
  readonly stats: GatewayStats = { samples: 0, published: 0 };
  readonly startedAt = Date.now();
  readonly version: string;
  private readonly log: Logger;
  private readonly supervisor: Supervisor;
  private readonly devices = new Map<string, CompiledDevice>();
  /** Every device the supervisor runs or tries to start, by name, with its config as JSON (to see on reload whether it changed). */
  private readonly supervisedDevices = new Map<string, string>();
  private simulators: RunningSimulator[] = [];
  private runningBroker: IntegratedBroker | undefined;
  private currentOutbox: Outbox | undefined;
  private currentUplink: Uplink | undefined;
  private ops: OpsServer | undefined;
  private readonly metrics: GatewayMetrics | undefined;
  /** The gateway's JSON topics (tag, batch, status, command, result) in the integrated broker. */
  readonly topics: GatewayTopics;
  private readonly dataDir: string;
  /** The config file the gateway runs. */
  readonly configFile: string;
  /** What the last reload did (or why it was refused), for the console. */
  lastReload: LastReload | undefined;
  private readonly loadDriver: (device: DeviceConfig) => Promise<DriverModule<DeviceConfig>>;
  /** Commands are taken while the commands feature runs; the answers of those in progress are awaited at its stop. */
  private commandsOpen = false;
  private readonly commandsInProgress = new Set<Promise<void>>();
  /** Looks at the uplink's state and the outbox's depth for the bus (see watchCloud), with what it saw last. */
  private cloudWatch: NodeJS.Timeout | undefined;
  private lastUplinkState: GatewayEvents['uplink-state'] | undefined;
  private lastOutboxDepth: GatewayEvents['outbox-depth'] | undefined;
  private stopping: Promise<void> | undefined;
  /** Reloads run one at a time. */
  private reloading: Promise<unknown> = Promise.resolve();

  private constructor(loaded: LoadedConfig, log: Logger, options: GatewayOptions) {
    const { config } = loaded;
    this.currentConfig = config;
    this.dataDir = loaded.dataDir;
    this.configFile = loaded.file;
    this.log = log;
    this.version = options.version ?? '0.0.0';
    this.bus = new EventBus<GatewayEvents>(log.child({ module: 'events' }));
    this.supervisor = new Supervisor({ log, backoff: options.deviceRetry });
    this.loadDriver = options.loadDriver ?? ((device) => DRIVERS[device.driver].load() as Promise<DriverModule<DeviceConfig>>);
    this.topics = new GatewayTopics(config.topics, config.gateway.name);
    // Any topic shaped like a tag topic plus the command suffix is a command, so a write to an
    // unknown tag is answered too, instead of vanishing.
    this.commands = new CommandHandler({
      suffix: config.topics.command,
      tagTopicFilters: [this.topics.anyTagFilter()],
      limits: config.writes,
      log: log.child({ module: 'commands' }),
      answer: (topic, answer, origin) => this.answerCommand(topic, answer, origin),
    });
    // The metrics listen from the start, so the first poll is counted too.
    if (options.ops && config.http.enabled) this.metrics = new GatewayMetrics(() => this.status({ tags: false }), this.bus);
    this.addFeatures();
  }

  /**
   * The features in start order. Between the broker's start and the commands' (uplink and
   * commands in between) nothing waits for I/O: no client publish or command comes before the
   * outbox path and the write path are in place.
   */
  private addFeatures(): void {
    const { config } = this;
    // (Before the supervisor runs, add() only registers: nothing to wait for.)
    const supervise = (feature: Feature, featureOptions?: FeatureOptions) => void this.supervisor.add(feature, featureOptions);
    // 1. Simulated PLCs first, so the devices that poll them connect on their first cycle.
    if (config.simulators.length > 0)
      supervise({ name: 'simulators', start: () => this.startSimulators(), stop: () => this.stopSimulators() });
    // 2. The outbox, closed last: local clients may publish into it until the broker is closed,
    //    and it keeps whatever was not delivered for the next start.
    const uplinkConfig = config.uplink;
    if (uplinkConfig) {
      supervise({
        name: 'outbox',
        start: () => {
          this.currentOutbox = Outbox.open(join(this.dataDir, 'outbox.db'), uplinkConfig.outbox, this.log.child({ module: 'outbox' }));
        },
        stop: () => this.currentOutbox?.close(),
      });
    }
    // 3. The integrated broker every sample is published into.
    supervise({ name: 'broker', start: () => this.startBroker(), stop: () => this.runningBroker?.close() });
    // 4. The cloud connection.
    if (uplinkConfig) supervise({ name: 'uplink', start: () => this.startUplink(uplinkConfig), stop: () => this.stopUplink() });
    // 5. The write path takes commands from the broker and the cloud.
    supervise({ name: 'commands', start: () => void (this.commandsOpen = true), stop: () => this.stopCommands() });
    // 6. The retained status topic: "online", and "offline" once the devices have stopped.
    supervise({
      name: 'status topic',
      start: () => this.publishStatus('online'),
      stop: async () => {
        await this.broker.flush(1000);
        await this.publishStatus('offline').catch(() => undefined);
      },
    });
    // 7. Devices: each gets its driver, compiled tags and poll jobs, spread over their intervals.
    const enabled = config.devices.filter((device) => device.enabled);
    const jobCount = enabled.reduce((count, device) => count + pollGroupsOf(device).length, 0);
    let jobIndex = 0;
    for (const device of enabled) {
      const firstJob = jobIndex;
      jobIndex += pollGroupsOf(device).length;
      void this.superviseDevice(device, (index, interval) => startPhase(firstJob + index, jobCount, interval));
    }
    // 8. The operations endpoint, once polling started (see start()).
  }

  /** The operations endpoint; a port that is taken is logged, not fatal: the data keeps flowing. */
  private superviseOps(metrics: GatewayMetrics): Promise<boolean> {
    return this.supervisor.add(
      {
        name: 'operations endpoint',
        start: async () => {
          this.ops = await OpsServer.start(this.config.http, this, metrics, this.log);
        },
        stop: () => this.ops?.close(),
      },
      {
        onStartFailure: 'continue',
        failureMessage: 'operations endpoint unavailable (no /healthz, /metrics, /api/status); the gateway runs without it',
      },
    );
  }

  /** The integrated broker (there is one from the end of start() on). */
  get broker(): IntegratedBroker {
    if (!this.runningBroker) throw new Error('the integrated broker is not running');
    return this.runningBroker;
  }

  /** The outbox, when there is an uplink. */
  get outbox(): Outbox | undefined {
    return this.currentOutbox;
  }

  /** The cloud connection in use (a reload may replace it). */
  get uplink(): Uplink | undefined {
    return this.currentUplink;
  }

  /** The config in effect (devices change with reload). */
  get config(): Config {
    return this.currentConfig;
  }

  get stopped(): boolean {
    return this.stopping !== undefined;
  }

  /** Every feature the supervisor runs, with its state (starting, running, failed, …), in start order. */
  features(): FeatureStatus[] {
    return this.supervisor.list();
  }

  /**
   * Starts every feature in order. Fails (after stopping what was started) only when one that
   * the gateway cannot run without fails: a simulator, the outbox, the broker, the uplink's
   * settings. A device that cannot start is reported and tried again while the rest runs.
   */
  static async start(loaded: LoadedConfig, log: Logger, options: GatewayOptions = {}): Promise<Gateway> {
    ensureDataDir(loaded.dataDir);
    const gateway = new Gateway(loaded, log, options);
    await gateway.supervisor.start();
    const enabled = gateway.config.devices.filter((device) => device.enabled);
    const tags = enabled.reduce((count, device) => count + device.tags.length, 0);
    const pollJobs = enabled.reduce((count, device) => count + pollGroupsOf(device).length, 0);
    const failed = enabled
      .filter((device) => gateway.supervisor.status(deviceFeature(device.name))?.state === 'failed')
      .map((device) => device.name);
    log.info({ devices: enabled.length, tags, pollJobs, ...(failed.length > 0 ? { failed } : {}) }, 'polling started');
    if (gateway.metrics) await gateway.superviseOps(gateway.metrics);
    return gateway;
  }

  /** Raw readings of one poll cycle → samples → the integrated broker. */
  private onReadings(device: CompiledDevice, event: ReadingsEvent): void {
    const now = Date.now();
    const { topics } = this.config;
    const batch: Sample[] = [];
    const batchTopic = device.config.publish === 'batch' ? device.batchTopics.get(event.group)! : undefined;
    // Asked once per poll cycle: without a listener, a sample costs the bus nothing.
    const announce = this.bus.has('sample');
    // The cycle's reported samples, for a format that records per device (Sparkplug DDATA): a batch
    // device reports all of them, so its batch is that list.
    const cycle: Sample[] | undefined = device.cloud ? (batchTopic ? batch : []) : undefined;
    for (const reading of event.readings) {
      const tag = device.tags.get(reading.tag);
      if (!tag) continue;
      const sample = tag.normalizer.normalize(reading, now);
      tag.last = sample;
      this.stats.samples++;
      device.samples++;
      let reported = true;
      if (batchTopic) {
        batch.push(sample);
      } else if (tag.normalizer.shouldReport(sample, now)) {
        cycle?.push(sample);
        const payload = this.publish(tag.topic, encodeTagPayload(sample, topics.timestamp), topics.retain);
        if (tag.cloud)
          this.uplink!.record(tag.cloud, {
            kind: 'tag',
            device: event.device,
            group: event.group,
            tag: reading.tag,
            sample,
            local: { topic: tag.topic, payload, retain: topics.retain },
          });
      } else reported = false;
      if (announce)
        this.bus.emit('sample', { device: event.device, tag: reading.tag, sample, topic: batchTopic?.topic ?? tag.topic, reported });
    }
    if (batchTopic && batch.length > 0) {
      const { topic, cloud } = batchTopic;
      const payload = this.publish(
        topic,
        encodeBatchPayload(event.device, event.group, event.cycleTs, batch, topics.timestamp),
        topics.retain,
      );
      if (cloud)
        this.uplink!.record(cloud, {
          kind: 'batch',
          device: event.device,
          group: event.group,
          cycleTs: event.cycleTs,
          samples: batch,
          local: { topic, payload, retain: topics.retain },
        });
    }
    if (cycle && cycle.length > 0)
      this.uplink!.recordDevice(device.cloud!, {
        kind: 'cycle',
        device: event.device,
        group: event.group,
        cycleTs: event.cycleTs,
        samples: cycle,
      });
  }

  /** Local subscribers get the message at once (the cloud gets what the format records of it, through the outbox). */
  private publish(topic: string, text: string, retain: boolean): Buffer {
    const payload = Buffer.from(text);
    this.stats.published++;
    this.broker.publish(topic, payload, { qos: this.config.topics.qos, retain });
    return payload;
  }

  private async startSimulators(): Promise<void> {
    if (this.config.simulators.length === 0) return;
    // Loaded only for the demo's simulated PLCs (modbus-serial and serialport stay out of memory otherwise).
    const { startSimulator } = await import('./demo/simulator.js');
    try {
      for (const simulator of this.config.simulators) {
        this.simulators.push(await startSimulator(simulator));
        this.log.info({ simulator: simulator.name, address: `${simulator.host}:${simulator.port}` }, 'simulated PLC listening');
      }
    } catch (error) {
      await this.stopSimulators();
      throw error;
    }
  }

  private async stopSimulators(): Promise<void> {
    const running = this.simulators;
    this.simulators = [];
    await Promise.all(running.map((simulator) => simulator.close()));
  }

  private async startBroker(): Promise<void> {
    const { config } = this;
    this.runningBroker = await IntegratedBroker.start(config.broker, this.log, this.dataDir, {
      clientPublish: (topic, payload, qos, retain) => this.forwardClientPublish(topic, payload, qos, retain),
      command: (topic, payload, retain, origin) => this.takeCommand(topic, payload, retain, origin),
    });
    for (const address of this.runningBroker.addresses()) {
      const credentials = config.broker.allowAnonymous ? '' : ' -u USER -P PASSWORD';
      const hint = address.type === 'tcp' ? `; try: mosquitto_sub -h ${address.host} -p ${address.port}${credentials} -t '#' -v` : '';
      this.log.info({ listener: address.url }, `integrated broker listening${hint}`);
    }
  }

  /**
   * What MQTT clients publish on a forwarded topic takes the same outbox → uplink path. A QoS 1
   * publisher gets its PUBACK only once the message is on disk, and none at all when the outbox
   * drops it instead (the broker refuses the publish).
   */
  private forwardClientPublish(topic: string, payload: Buffer, qos: number, retain: boolean): Promise<void> | undefined {
    const uplink = this.currentUplink;
    const route = uplink?.route(topic);
    if (!uplink || !route) return undefined;
    if (qos === 0) {
      uplink.enqueue(route, payload, retain);
      return undefined;
    }
    return new Promise<void>((resolve, reject) =>
      uplink.enqueue(route, payload, retain, (droppedBecause) =>
        droppedBecause === undefined ? resolve() : reject(new PublishRefused(`the outbox dropped it: ${droppedBecause}`)),
      ),
    );
  }

  private startUplink(config: NonNullable<Config['uplink']>): void {
    const uplink = this.newUplink(config);
    this.useUplink(uplink);
    uplink.start();
    this.cloudWatch = setInterval(() => this.watchCloud(), CLOUD_WATCH_INTERVAL_MS);
    this.cloudWatch.unref();
  }

  /** A cloud connection on the outbox, not started yet. */
  private newUplink(config: NonNullable<Config['uplink']>): Uplink {
    return new Uplink(
      config,
      this.config.gateway.name,
      this.newFormat(config),
      this.currentOutbox!,
      this.broker,
      this.log,
      this.downlinkFor(config),
    );
  }

  /** The northbound format of an uplink: JSON topics, or a Sparkplug B edge node over the gateway's devices. */
  private newFormat(config: NonNullable<Config['uplink']>): NorthboundFormat {
    const { gateway } = this.config;
    if (config.format === 'json' || !config.sparkplug) return new JsonFormat(config, gateway.name, this.config.topics.status);
    const { sparkplug } = config;
    return new SparkplugFormat({
      groupId: sparkplug.groupId,
      edgeNodeId: sparkplug.edgeNodeId ?? gateway.name,
      primaryHostId: sparkplug.primaryHostId,
      quality: sparkplug.quality,
      nodeMetricsInterval: sparkplug.nodeMetricsInterval,
      version: this.version,
      rules: config,
      bdSeq: new BdSeqStore(this.dataDir, this.log.child({ module: 'sparkplug' })),
      catalog: this.catalog(),
      nodeStats: () => ({ outboxDepth: this.currentOutbox?.stats.messages ?? 0, reconnects: this.currentUplink?.stats.reconnects ?? 0 }),
      log: this.log.child({ module: 'sparkplug' }),
    });
  }

  /** The devices and tags as a typed format (Sparkplug) sees them at its births. */
  private catalog(): Catalog {
    const describe = (device: CompiledDevice): CatalogDevice => ({
      name: device.config.name,
      connected: device.runner?.health.state === 'connected',
      tags: [...device.tags].map(([name, tag]) => ({ name, type: tag.valueType, unit: tag.unit, last: tag.last })),
    });
    return {
      devices: () => [...this.devices.values()].map(describe),
      device: (name) => {
        const device = this.devices.get(name);
        return device && describe(device);
      },
    };
  }

  private async stopUplink(): Promise<void> {
    clearInterval(this.cloudWatch);
    this.cloudWatch = undefined;
    await this.currentUplink?.stop();
  }

  /**
   * The uplink's state and the outbox's depth for the bus, looked at once a second and announced
   * when they changed (and only while someone listens). (The uplink has no state callback of its
   * own yet: it reports through its stats.)
   */
  private watchCloud(): void {
    const uplink = this.currentUplink;
    if (uplink && this.bus.has('uplink-state')) {
      const stats = uplink.stats;
      const state: GatewayEvents['uplink-state'] = {
        state: stats.connected ? 'connected' : 'disconnected',
        reason: stats.connected ? undefined : stats.lastError,
      };
      if (state.state !== this.lastUplinkState?.state || state.reason !== this.lastUplinkState.reason) {
        this.lastUplinkState = state;
        this.bus.emit('uplink-state', state);
      }
    }
    const outbox = this.currentOutbox;
    if (outbox && this.bus.has('outbox-depth')) {
      const { messages, bytes } = outbox.stats;
      if (messages !== this.lastOutboxDepth?.messages || bytes !== this.lastOutboxDepth.bytes) {
        this.lastOutboxDepth = { messages, bytes };
        this.bus.emit('outbox-depth', this.lastOutboxDepth);
      }
    }
  }

  /** The uplink's downlink: commands from the cloud go to the write path, audited with the uplink's client id. */
  private downlinkFor(config: NonNullable<Config['uplink']>): DownlinkHandlers {
    const cloudClient = `cloud:${config.clientId ?? `plc2mqtt-${this.config.gateway.name}`}`;
    return {
      local: (topic, payload, retain) => this.takeCommand(topic, payload, retain, { source: 'cloud', clientId: cloudClient }),
      // Writes a format decodes itself (Sparkplug DCMD): the same checks, rate limits and audit lines.
      write: (write) => this.takeWrite(write.device, write.tag, write.value, { source: 'sparkplug', clientId: cloudClient }),
    };
  }

  /** Makes `uplink` the cloud connection. */
  private useUplink(uplink: Uplink): void {
    this.currentUplink = uplink;
  }

  /** A message from a local client (the broker's command handler) or the cloud: a command, when it is on a command topic. */
  private takeCommand(topic: string, payload: Buffer, retain: boolean, origin: CommandOrigin): void {
    if (!this.commandsOpen || !this.commands.isCommand(topic)) return;
    const handled = this.commands.handle(topic, payload, retain, origin);
    this.commandsInProgress.add(handled);
    void handled.finally(() => this.commandsInProgress.delete(handled));
  }

  /**
   * A write that came with no command topic (Sparkplug DCMD, the console): through the command
   * handler like any command; the answer goes to the bus and the audit line, and is returned.
   */
  takeWrite(device: string, tag: string, value: TagValue, origin: CommandOrigin): Promise<CommandAnswer> {
    if (!this.commandsOpen) return Promise.resolve({ ok: false, device, tag, error: 'the gateway is stopping', ts: Date.now() });
    const written = this.commands.write(device, tag, value, origin).then((answer) => {
      this.bus.emit('write', { topic: undefined, answer, origin });
      return answer;
    });
    const settled = written.then(() => undefined);
    this.commandsInProgress.add(settled);
    void settled.finally(() => this.commandsInProgress.delete(settled));
    return written;
  }

  /** Takes no more commands; writes in progress (their devices are stopped by now) are answered first. */
  private async stopCommands(): Promise<void> {
    this.commandsOpen = false;
    if (this.commandsInProgress.size === 0) return;
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      Promise.all(this.commandsInProgress),
      new Promise((resolve) => (timer = setTimeout(resolve, COMMANDS_STOP_GRACE_MS))),
    ]);
    clearTimeout(timer);
  }

  /** Adds a device to the supervisor (started at once when the gateway runs); resolves with whether it started. */
  private superviseDevice(device: DeviceConfig, phaseOf: (groupIndex: number, interval: number) => number): Promise<boolean> {
    const name = device.name;
    this.supervisedDevices.set(name, deviceFingerprint(device));
    return this.supervisor.add(
      { name: deviceFeature(name), start: () => this.startDevice(device, phaseOf), stop: () => this.stopDevice(name) },
      {
        onStartFailure: 'retry',
        stopGroup: 'devices',
        failureMessage: 'device could not be started (its driver failed to load or to be created); trying again with back-off',
        onState: (status) => {
          if (status.state === 'starting' || status.state === 'failed')
            this.bus.emit('device-state', { device: name, state: status.state, lastError: status.lastError });
          else if (status.state === 'running') {
            const health = this.devices.get(name)?.runner?.health;
            if (health) this.bus.emit('device-state', { device: name, state: health.state, lastError: health.lastError });
          }
        },
      },
    );
  }

  /**
   * One device: compiled tags first (a device that cannot start is still listed with them), then
   * its driver (loaded on first use), its runner and poll jobs, and its command topics. When the
   * driver cannot be loaded or created, its tags go bad with the reason and the error is thrown
   * for the supervisor, which tries again later.
   */
  private async startDevice(device: DeviceConfig, phaseOf: (groupIndex: number, interval: number) => number): Promise<void> {
    let compiled = this.devices.get(device.name);
    if (!compiled) {
      compiled = {
        config: device,
        tags: this.compileTags(device),
        cloud: this.uplink?.deviceRecorder(device.name),
        samples: 0,
        batchTopics: new Map(
          pollGroupsOf(device).map((group) => {
            const topic = this.topics.batch(device, group.name);
            return [group.name, { topic, cloud: this.uplink?.recorder(topic) }];
          }),
        ),
      };
      this.devices.set(device.name, compiled);
    }
    const entry = compiled;
    const groups = pollGroupsOf(device);
    const phases = new Map(groups.map((group, index) => [group.name, phaseOf(index, group.interval)]));
    let driver: Driver<DriverTag> | undefined;
    let runner: DeviceRunner | undefined;
    let wasConnected = false;
    try {
      const driverModule = await this.loadDriver(device);
      driver = driverModule.createDriver(device, { log: this.log.child({ device: device.name }), dataDir: this.dataDir });
      runner = new DeviceRunner({
        name: device.name,
        driver,
        groups,
        log: this.log,
        phaseOf: (group) => phases.get(group.name) ?? 0,
        onReadings: (event) => this.onReadings(entry, event),
        // Tags published one by one go out as each reply comes; a batch, or a format's per-device
        // cycle record (Sparkplug DDATA, set again by a reload that changes the format), waits for
        // the whole cycle.
        early: () => device.publish !== 'batch' && entry.cloud === undefined,
        onPollDone: (group, seconds, ok) => this.bus.emit('poll', { device: device.name, group, seconds, ok }),
        onStateChange: (state, lastError) => {
          // A connection lost: a format that tracks devices (Sparkplug DDEATH) records it, in order with
          // the data. (Not a stop: the node's own death, or the rebirth after a reload, says it.)
          if (wasConnected && state === 'disconnected' && entry.cloud)
            this.uplink?.recordDevice(entry.cloud, { kind: 'device-lost', device: device.name, ts: Date.now() });
          wasConnected = state === 'connected';
          this.bus.emit('device-state', { device: device.name, state, lastError });
        },
      });
      runner.start();
    } catch (error) {
      await (runner ? runner.stop() : driver?.close())?.catch(() => undefined);
      if (this.devices.get(device.name) === entry) this.reportStartFailure(entry, groups, errorMessage(error));
      throw error;
    }
    entry.runner = runner;
    this.registerCommands(entry, runner);
  }

  /** A device that cannot start: every tag goes bad with the reason (never silent, never a stale "good"). */
  private reportStartFailure(device: CompiledDevice, groups: readonly PollGroup<DriverTag>[], reason: string): void {
    const now = Date.now();
    for (const group of groups) {
      const readings: TagReading[] = group.tags.map((tag) => ({
        tag: tag.name,
        quality: 'bad',
        reason: `the device could not be started: ${reason}`,
        code: 'start-failed',
      }));
      this.onReadings(device, { device: device.config.name, group: group.name, cycleTs: now, readings });
    }
  }

  /** Stops a device (or its attempts to start) and forgets it. */
  private async unsuperviseDevice(name: string): Promise<void> {
    this.supervisedDevices.delete(name);
    await this.supervisor.remove(deviceFeature(name));
  }

  /** Stops a device's polls and closes its driver; its command topics answer "unknown tag" from then on. */
  private async stopDevice(name: string): Promise<void> {
    const device = this.devices.get(name);
    if (!device) return;
    this.devices.delete(name);
    if (device.commands)
      this.commands.unregister(
        device.commands,
        Array.from(device.tags.values(), (tag) => tag.topic),
      );
    if (!device.runner) {
      this.bus.emit('device-state', { device: name, state: 'stopped', lastError: undefined });
      return;
    }
    await device.runner
      .stop()
      .catch((error: unknown) => this.log.warn({ device: name, error: errorMessage(error) }, 'device did not stop cleanly'));
  }

  /**
   * Applies a new, already validated config without a restart (see app/reload.ts): devices whose
   * definition changed are restarted, new ones started, removed ones stopped; everything else
   * (broker and its clients, outbox, uplink session, unchanged devices) keeps running. Changes to
   * other sections need a process restart: they are reported, not applied. One reload at a time.
   */
  reload(loaded: LoadedConfig): Promise<ReloadResult> {
    const run = this.reloading.then(async () => {
      const result = await applyReload(this.reloadTarget(), loaded.config);
      this.lastReload = { at: new Date().toISOString(), outcome: 'applied', result };
      // Devices came, went or changed their tags: a format with births (Sparkplug) declares the node again.
      if (result.added.length + result.removed.length + result.restarted.length > 0) this.currentUplink?.devicesChanged();
      return result;
    });
    this.reloading = run.catch(() => undefined);
    return run;
  }

  /** A reload the CLI refused before it reached the gateway (the new config is invalid). */
  noteReloadRefused(problems: string[]): void {
    this.lastReload = { at: new Date().toISOString(), outcome: 'refused', problems };
  }

  /** Visits every tag with its latest sample (the console's live values and trends). */
  eachTag(visit: (device: string, tag: string, last: Sample | undefined) => void): void {
    for (const [name, device] of this.devices) for (const [tagName, tag] of device.tags) visit(name, tagName, tag.last);
  }

  /** What a reload may look at and change here. */
  private reloadTarget(): ReloadTarget {
    const gateway = this;
    return {
      get config() {
        return gateway.currentConfig;
      },
      setConfig: (config) => {
        gateway.currentConfig = config;
      },
      get stopped() {
        return gateway.stopped;
      },
      log: gateway.log,
      devices: gateway.supervisedDevices,
      // Spread its groups over their interval as if it were the only device; close enough for a few.
      startDevice: (device) =>
        gateway.superviseDevice(device, (index, interval) => startPhase(index, pollGroupsOf(device).length, interval)),
      stopDevice: (name) => gateway.unsuperviseDevice(name),
      setWriteLimits: (writes) => gateway.commands.setLimits(writes),
      reloadBrokerAccess: (access) => gateway.broker.reloadAccess(access),
      get uplink() {
        return gateway.currentUplink;
      },
      createUplink: (config) => gateway.newUplink(config),
      useUplink: (uplink) => {
        gateway.useUplink(uplink);
        for (const device of gateway.devices.values()) {
          for (const tag of device.tags.values()) tag.cloud = uplink.recorder(tag.topic);
          for (const batch of device.batchTopics.values()) batch.cloud = uplink.recorder(batch.topic);
          device.cloud = uplink.deviceRecorder(device.config.name);
        }
      },
    };
  }

  private compileTags(device: DeviceConfig): Map<string, CompiledTag> {
    const compiled = new Map<string, CompiledTag>();
    for (const tag of device.tags as TagConfig[]) {
      const group = tag.group ?? 'default';
      const topic = this.topics.tag(device, group, tag);
      const scaled = tag.scale !== undefined || tag.offset !== undefined;
      compiled.set(tag.name, {
        config: tag,
        topic,
        cloud: this.uplink?.recorder(topic),
        last: undefined,
        valueType: sharedValueType(DRIVERS[device.driver].valueType(tag as never), scaled),
        unit: tag.unit,
        normalizer: new TagNormalizer({
          device: device.name,
          group,
          tag: tag.name,
          scale: tag.scale,
          offset: tag.offset,
          unit: tag.unit,
          deadband: tag.deadband,
          report: tag.report ?? device.report,
          maxSilence: tag.maxSilence ?? device.maxSilence,
        }),
      });
    }
    return compiled;
  }

  /** Every tag of a device gets a command topic; the handler refuses writes to tags that are not writable. */
  private registerCommands(device: CompiledDevice, runner: DeviceRunner): void {
    const { tags } = device;
    device.commands = {
      name: device.config.name,
      tag: (name) => tags.get(name)?.config,
      previous: (tag) => tags.get(tag.name)?.last?.value,
      write: (tag, raw) => runner.write(tag, raw),
      readBack: async (tag) => {
        const reading = await runner.readNow(tag);
        return { reading, value: tags.get(tag.name)!.normalizer.normalize(reading, Date.now()).value };
      },
    };
    this.commands.register(
      device.commands,
      Array.from(tags.values(), (tag) => [tag.topic, tag.config] as const),
    );
  }

  /**
   * The status snapshot: gateway, devices (running, starting or failed to start), tags with their
   * latest samples, outbox, uplink, broker and writes, read from the live counters now. The one
   * source of /api/status and /metrics.
   */
  status(options: StatusOptions = {}): StatusSnapshot {
    const broker = this.broker;
    const outbox = this.currentOutbox;
    return {
      gateway: {
        name: this.config.gateway.name,
        version: this.version,
        startedAt: new Date(this.startedAt).toISOString(),
        uptimeSeconds: Math.round((Date.now() - this.startedAt) / 1000),
        samples: this.stats.samples,
        published: this.stats.published,
      },
      devices: [...this.devices.values()].map((device) => this.deviceSnapshot(device)),
      ...(options.tags !== false ? { tags: this.tagStatus(options.device) } : {}),
      outbox: outbox ? { ...outbox.stats, oldestAgeSeconds: outbox.oldestAge() / 1000 } : null,
      uplink: this.currentUplink?.stats ?? null,
      broker: {
        clients: broker.clientCount,
        listeners: broker.addresses().map((address) => address.url),
        ...broker.stats,
        queued: broker.queued,
      },
      writes: this.commands.stats,
    };
  }

  private deviceSnapshot(device: CompiledDevice): DeviceSnapshot {
    const { name, driver } = device.config;
    const base = { name, driver };
    const counts = { tags: device.tags.size, samples: device.samples };
    const health = device.runner?.health;
    if (health) {
      return {
        ...base,
        state: health.state,
        lastError: health.lastError ?? null,
        ...counts,
        connectAttempts: health.connectAttempts,
        nextTryAt: health.nextTryAt === undefined ? null : new Date(health.nextTryAt).toISOString(),
        pollErrors: health.pollErrors,
        errorsByCode: health.errorsByCode,
        overruns: health.overruns,
        cycles: health.cycles,
        plans: health.plans,
        lastPollSeconds: health.lastPollSeconds,
      };
    }
    // Not running: its driver is being loaded and created, or that failed and is tried again.
    const feature = this.supervisor.status(deviceFeature(name));
    return {
      ...base,
      state: feature?.state === 'failed' ? 'failed' : 'starting',
      lastError: feature?.lastError ?? null,
      ...counts,
      connectAttempts: 0,
      nextTryAt: feature?.nextTryAt === undefined ? null : new Date(feature.nextTryAt).toISOString(),
      pollErrors: 0,
      errorsByCode: {},
      overruns: 0,
      cycles: 0,
      plans: {},
      lastPollSeconds: {},
    };
  }

  /** Every tag with its latest sample (optionally of one device). */
  private tagStatus(deviceName?: string): TagStatus[] {
    const result: TagStatus[] = [];
    for (const device of this.devices.values()) {
      if (deviceName !== undefined && device.config.name !== deviceName) continue;
      for (const tagConfig of device.config.tags as TagConfig[]) {
        const tag = device.tags.get(tagConfig.name)!;
        // A batch device publishes its tags only inside its groups' batch messages.
        const batch = device.config.publish === 'batch' ? device.batchTopics.get(tagConfig.group ?? 'default') : undefined;
        const status: TagStatus = {
          device: device.config.name,
          tag: tagConfig.name,
          topic: batch?.topic ?? tag.topic,
          writable: tagConfig.writable,
        };
        if (tagConfig.writable) status.commandTopic = this.topics.command(tag.topic);
        if (tag.unit !== undefined) status.unit = tag.unit;
        if (tag.last) {
          status.value = tag.last.value;
          status.quality = tag.last.quality;
          if (tag.last.reason !== undefined) status.reason = tag.last.reason;
          status.ts = tag.last.ts;
        }
        result.push(status);
      }
    }
    return result;
  }

  /** The answer to a write: to whoever asked, and to the cloud when the topic is forwarded. */
  private answerCommand(resultTopic: string, answer: CommandAnswer, origin: CommandOrigin): void {
    this.bus.emit('write', { topic: this.topics.commandOfResult(resultTopic) ?? resultTopic, answer, origin });
    const payload = Buffer.from(encodeAnswer(answer));
    const responseTopic = origin.responseTopic;
    // MQTT 5 request/response: to the requester's response topic (the broker checked the ACL),
    // never onto a topic of the gateway's own, where an answer would pass for a sample or a command.
    if (responseTopic !== undefined && !this.ownsTopic(responseTopic)) {
      // The requester matches the answer by its correlation data, carried as a property.
      const properties = origin.correlationData !== undefined ? { correlationData: origin.correlationData } : undefined;
      this.broker.publish(responseTopic, payload, { qos: 1, retain: false, ...(properties ? { properties } : {}) });
      return;
    }
    this.broker.publish(resultTopic, payload, { qos: 1, retain: false });
    const uplink = this.uplink;
    const recorder = uplink?.recorder(resultTopic);
    if (recorder)
      uplink!.record(recorder, {
        kind: 'answer',
        device: answer.device,
        tag: answer.tag,
        ok: answer.ok,
        local: { topic: resultTopic, payload, retain: false },
      });
  }

  /** Topics the gateway publishes or listens on: tag, batch, command, result and status topics. */
  private ownsTopic(topic: string): boolean {
    if (topic === this.topics.status) return true;
    if (this.commands.isCommand(topic)) return true;
    const answered = this.topics.commandOfResult(topic);
    if (answered !== undefined && this.commands.isCommand(answered)) return true;
    for (const device of this.devices.values()) {
      for (const tag of device.tags.values()) if (tag.topic === topic) return true;
      for (const batch of device.batchTopics.values()) if (batch.topic === topic) return true;
    }
    return false;
  }

  private publishStatus(status: 'online' | 'offline'): Promise<void> {
    return this.broker.publishNow(this.topics.status, status, { qos: 1, retain: true });
  }

  /** Graceful shutdown: stop polling (waiting for cycles in progress), say offline, close everything, in reverse order of start. */
  stop(): Promise<void> {
    this.stopping ??= (async () => {
      await this.reloading;
      await this.supervisor.stop();
      this.log.info(
        {
          ...this.stats,
          outbox: this.currentOutbox?.stats,
          uplink: this.currentUplink?.stats,
          ...(this.currentUplink ? { cloudStagesMs: stageTimes.summary() } : {}),
        },
        'gateway stopped',
      );
    })();
    return this.stopping;
  }
}

/** The device's poll groups that have tags: "default" at pollInterval plus each named group. */
export function pollGroupsOf(device: DeviceConfig): PollGroup<DriverTag>[] {
  const byGroup = new Map<string, TagConfig[]>();
  for (const tag of device.tags as TagConfig[]) {
    // A command-only tag (serial "read": false) is written, never polled, so never published.
    if ('read' in tag && tag.read === false) continue;
    const group = tag.group ?? 'default';
    byGroup.set(group, [...(byGroup.get(group) ?? []), tag]);
  }
  return [...byGroup].map(([name, tags]) => ({
    name,
    interval: name === 'default' ? device.pollInterval : device.pollGroups[name]!.interval,
    tags,
  }));
}

/** Value types are few (type × array × scaled): one object each, shared by every tag of that kind. */
const valueTypes = new Map<string, TagTypeInfo>();
function sharedValueType(declared: DeclaredValueType, scaled: boolean): TagTypeInfo {
  const key = `${declared.type}|${declared.array === true}|${scaled}`;
  let shared = valueTypes.get(key);
  if (!shared) valueTypes.set(key, (shared = Object.freeze({ ...declared, scaled })));
  return shared;
}
