// The life of a sample, top to bottom:
//
//   poll job (pipeline/scheduler.ts) fires on its fixed-rate grid for one device and poll group
//     → driver.read(plan)    (drivers/<name>) returns raw readings; failures become bad quality
//     → TagNormalizer        (pipeline/normalize.ts) types, scales, stamps, decides report-by-exception
//     → topic + payload      (northbound/) compiled once at start
//     → integrated broker    (broker/) where local subscribers see it, retained
//     → outbox               (cloud/outbox.ts) SQLite, when a forward rule sends the topic to the cloud
//     → uplink               (cloud/uplink.ts) to the cloud broker at QoS 1; deleted from the outbox on PUBACK
//
// Messages that MQTT clients publish into the integrated broker on forwarded topics take the
// same outbox → uplink path (broker.clientPublishHook), and cloud commands come back down.
//
// The way back to the PLC: a message on a tag's command topic ("<tag topic>/set"), from a local
// client the ACL let through (broker.commandHook) or from the cloud (uplink.downlinkHook)
//     → CommandHandler       (commands/) parse, writable?, type, min/max, rate limit
//     → DeviceRunner.write   → driver.write; optional read-back
//     → answer               on "<command topic>/result" or the MQTT 5 response topic, plus an audit line
//
// Everything a device does is isolated in its DeviceRunner: one failing device never stops another.
import { join } from 'node:path';
import type { Logger } from 'pino';
import { ACCESS_SETTINGS, IntegratedBroker, PublishRefused } from './broker/broker.js';
import { attachOutgoingProperties } from './broker/mqtt5.js';
import { CommandHandler, encodeAnswer, type CommandAnswer, type CommandOrigin } from './commands/command-handler.js';
import type { LoadedConfig } from './config/load.js';
import type { Config, DeviceConfig, TagConfig } from './config/schema.js';
import { DeviceRunner, type DeviceHealth, type PollGroup, type ReadingsEvent } from './pipeline/device-runner.js';
import { errorMessage } from './util/errors.js';
import type { DriverTag, Quality, TagValue } from './pipeline/driver.js';
import { DRIVERS, type DriverModule } from './pipeline/registry.js';
import { TagNormalizer, type Sample } from './pipeline/normalize.js';
import { encodeBatchPayload, encodeTagPayload } from './northbound/json-payload.js';
import { startPhase } from './pipeline/scheduler.js';
import { startSimulator, type RunningSimulator } from './demo/simulator.js';
import { ensureDataDir } from './util/sqlite-file.js';
import { compileTopicTemplate } from './northbound/topics.js';
import { Outbox } from './cloud/outbox.js';
import { tlsFilesFingerprint, Uplink, type CloudRoute } from './cloud/uplink.js';

/** A tag compiled for the hot path: its normalizer and its rendered topic. */
interface CompiledTag {
  normalizer: TagNormalizer;
  topic: string;
  /** Where the tag's messages go on the cloud, when a forward rule takes its topic. */
  cloud?: CloudRoute | undefined;
  /** The latest sample, published or not (previous value for writes). */
  last?: Sample | undefined;
}

interface CompiledDevice {
  config: DeviceConfig;
  /** The device's config as JSON, to see on reload whether it changed. */
  fingerprint: string;
  tags: Map<string, CompiledTag>;
  /** Rendered batch topic per poll group (publish: "batch") and its cloud route. */
  batchTopics: Map<string, { topic: string; cloud: CloudRoute | undefined }>;
  runner: DeviceRunner;
  /** Readings normalized into samples, for the metrics. */
  samples: number;
}

export interface DeviceStatus {
  name: string;
  driver: string;
  tags: number;
  samples: number;
  health: DeviceHealth;
}

export interface TagStatus {
  device: string;
  tag: string;
  /** Where its values are published: its own topic, or its poll group's batch topic (publish: "batch"). */
  topic: string;
  writable: boolean;
  /** Where writes are received, for writable tags. */
  commandTopic?: string;
  /** Absent until the first reading. */
  value?: TagValue | null;
  quality?: Quality;
  reason?: string;
  ts?: number;
}

export interface GatewayStats {
  /** Readings normalized into samples. */
  samples: number;
  /** Messages (per tag or batch) handed to the integrated broker. */
  published: number;
}

/** Hooks for the operations side (metrics), given at start so the first poll is counted too. */
export interface GatewayHooks {
  onPoll?: (device: string, group: string, seconds: number, ok: boolean) => void;
}

/** What a reload did. */
export interface ReloadResult {
  added: string[];
  removed: string[];
  restarted: string[];
  unchanged: number;
  /** Devices that could not be started with their new definition (see the log); they stay stopped. */
  failed: string[];
  /** Other settings the reload applied: "writes", "broker.users", "broker.acl", "broker.allowAnonymous", "uplink". */
  applied: string[];
  /** Integrated broker clients disconnected because their user was removed or changed (or anonymous access is off). */
  disconnected: string[];
  /** Settings that changed but need a restart of the process ("broker.listeners", "uplink", "topics", …). */
  notApplied: string[];
}

/** Whether a config section differs (sections are plain JSON after validation). */
function changed(before: unknown, after: unknown): boolean {
  return JSON.stringify(before) !== JSON.stringify(after);
}

export class Gateway {
  private currentConfig: Config;
  readonly broker: IntegratedBroker;
  readonly outbox: Outbox | undefined;
  private currentUplink: Uplink | undefined;
  readonly commands: CommandHandler;
  readonly stats: GatewayStats = { samples: 0, published: 0 };
  readonly startedAt = Date.now();
  private readonly log: Logger;
  private readonly devices = new Map<string, CompiledDevice>();
  private readonly simulators: RunningSimulator[];
  private readonly statusTopic: string;
  private readonly dataDir: string;
  private readonly hooks: GatewayHooks;
  private stopping: Promise<void> | undefined;
  /** Reloads run one at a time. */
  private reloading: Promise<unknown> = Promise.resolve();

  private constructor(loaded: LoadedConfig, broker: IntegratedBroker, simulators: RunningSimulator[], log: Logger, hooks: GatewayHooks, cloud?: { outbox: Outbox; uplink: Uplink }) {
    const { config } = loaded;
    this.currentConfig = config;
    this.dataDir = loaded.dataDir;
    this.hooks = hooks;
    this.broker = broker;
    this.outbox = cloud?.outbox;
    this.simulators = simulators;
    this.log = log;
    this.statusTopic = compileTopicTemplate(config.topics.status).render({ gateway: config.gateway.name });
    // Any topic shaped like a tag topic plus the command suffix is a command, so a write to an
    // unknown tag is answered too, instead of vanishing.
    const tagTemplate = compileTopicTemplate(config.topics.tag);
    const anyTag = Object.fromEntries(tagTemplate.placeholders.map((placeholder) => [placeholder, placeholder === 'gateway' ? config.gateway.name : '+']));
    this.commands = new CommandHandler({
      suffix: config.topics.command,
      tagTopicFilters: [tagTemplate.render(anyTag)],
      limits: config.writes,
      log: log.child({ module: 'commands' }),
      answer: (topic, answer, origin) => this.answerCommand(topic, answer, origin),
    });
    broker.commandHook = (topic, payload, retain, origin) => {
      if (this.commands.isCommand(topic)) void this.commands.handle(topic, payload, retain, origin);
    };
    if (cloud) {
      // What MQTT clients publish on a forwarded topic takes the same outbox → uplink path.
      broker.clientPublishHook = (topic, payload, qos, retain) => {
        const uplink = this.uplink!;
        const route = uplink.route(topic);
        if (!route) return undefined;
        if (qos === 0) {
          uplink.enqueue(route, payload, retain);
          return undefined;
        }
        // A QoS 1 publisher gets its PUBACK only once the message is on disk, and none at all
        // when the outbox drops it instead (the broker refuses the publish).
        return new Promise<void>((resolve, reject) =>
          uplink.enqueue(route, payload, retain, (droppedBecause) => (droppedBecause === undefined ? resolve() : reject(new PublishRefused(`the outbox dropped it: ${droppedBecause}`)))),
        );
      };
      this.useUplink(cloud.uplink, config.uplink!);
    }
  }

  /** The cloud connection in use (a reload may replace it). */
  get uplink(): Uplink | undefined {
    return this.currentUplink;
  }

  /** Makes `uplink` the cloud connection: commands from the cloud go to the write path. */
  private useUplink(uplink: Uplink, config: NonNullable<Config['uplink']>): void {
    const cloudClient = `cloud:${config.clientId ?? `plc2mqtt-${this.config.gateway.name}`}`;
    uplink.downlinkHook = (topic, payload, retain) => {
      if (this.commands.isCommand(topic)) void this.commands.handle(topic, payload, retain, { source: 'cloud', clientId: cloudClient });
    };
    this.currentUplink = uplink;
  }

  /** The config in effect (devices change with reload). */
  get config(): Config {
    return this.currentConfig;
  }

  get stopped(): boolean {
    return this.stopping !== undefined;
  }

  static async start(loaded: LoadedConfig, log: Logger, hooks: GatewayHooks = {}): Promise<Gateway> {
    const { config } = loaded;
    ensureDataDir(loaded.dataDir);

    // 1. Simulated PLCs first, so the devices that poll them connect on their first cycle.
    const simulators: RunningSimulator[] = [];
    let broker: IntegratedBroker | undefined;
    try {
      for (const simulator of config.simulators) {
        simulators.push(await startSimulator(simulator));
        log.info({ simulator: simulator.name, address: `${simulator.host}:${simulator.port}` }, 'simulated PLC listening');
      }
      // 2. The integrated broker every sample is published into.
      broker = await IntegratedBroker.start(config.broker, log, loaded.dataDir);
    } catch (error) {
      await Promise.all(simulators.map((simulator) => simulator.close()));
      throw error;
    }
    // 3. The outbox and the cloud uplink, when there is a cloud.
    let cloud: { outbox: Outbox; uplink: Uplink } | undefined;
    if (config.uplink) {
      let outbox: Outbox | undefined;
      try {
        outbox = Outbox.open(join(loaded.dataDir, 'outbox.db'), config.uplink.outbox, log.child({ module: 'outbox' }));
        cloud = { outbox, uplink: new Uplink(config.uplink, config.gateway.name, config.topics.status, outbox, broker, log) };
      } catch (error) {
        outbox?.close();
        await broker.close();
        await Promise.all(simulators.map((simulator) => simulator.close()));
        throw error;
      }
    }
    // (Wires the broker's hooks to the uplink, in the same turn: no client publish comes between.)
    const gateway = new Gateway(loaded, broker, simulators, log, hooks, cloud);
    cloud?.uplink.start();
    for (const address of broker.addresses()) {
      const credentials = config.broker.allowAnonymous ? '' : ' -u USER -P PASSWORD';
      const hint = address.type === 'tcp' ? `; try: mosquitto_sub -h ${address.host} -p ${address.port}${credentials} -t '#' -v` : '';
      log.info({ listener: address.url }, `integrated broker listening${hint}`);
    }
    await gateway.publishStatus('online');

    // 4. Devices: each gets its driver, compiled tags and poll jobs.
    try {
      await gateway.startDevices(config.devices);
    } catch (error) {
      await gateway.stop();
      throw error;
    }
    return gateway;
  }

  private async startDevices(devices: readonly DeviceConfig[]): Promise<void> {
    const enabled = devices.filter((device) => device.enabled);
    const jobCount = enabled.reduce((count, device) => count + pollGroupsOf(device).length, 0);
    let jobIndex = 0;
    for (const device of enabled) {
      const firstJob = jobIndex;
      jobIndex += pollGroupsOf(device).length;
      await this.startDevice(device, (index, interval) => startPhase(firstJob + index, jobCount, interval));
    }
    const tags = enabled.reduce((count, device) => count + device.tags.length, 0);
    this.log.info({ devices: enabled.length, tags, pollJobs: jobCount }, 'polling started');
  }

  /** One device: its driver (loaded on first use), compiled tags, command topics and poll jobs. */
  private async startDevice(device: DeviceConfig, phaseOf: (groupIndex: number, interval: number) => number): Promise<void> {
    const groups = pollGroupsOf(device);
    const driverModule = (await DRIVERS[device.driver].load()) as DriverModule<DeviceConfig>;
    const driver = driverModule.createDriver(device, { log: this.log.child({ device: device.name }), dataDir: this.dataDir });
    const phases = new Map(groups.map((group, index) => [group.name, phaseOf(index, group.interval)]));
    const onPoll = this.hooks.onPoll;
    const compiled: CompiledDevice = {
      config: device,
      fingerprint: JSON.stringify(device),
      tags: this.compileTags(device),
      samples: 0,
      batchTopics: new Map(
        groups.map((group) => {
          const topic = this.render(this.config.topics.batch, device, group.name);
          return [group.name, { topic, cloud: this.uplink?.route(topic) }];
        }),
      ),
      runner: new DeviceRunner({
        name: device.name,
        driver,
        groups,
        log: this.log,
        phaseOf: (group) => phases.get(group.name) ?? 0,
        onReadings: (event) => this.onReadings(compiled, event),
        onPollDone: onPoll ? (group, seconds, ok) => onPoll(device.name, group, seconds, ok) : undefined,
      }),
    };
    this.devices.set(device.name, compiled);
    this.registerCommands(compiled);
    compiled.runner.start();
  }

  /** Stops a device's polls and closes its driver; its command topics answer "unknown tag" from then on. */
  private async stopDevice(name: string): Promise<void> {
    const device = this.devices.get(name);
    if (!device) return;
    this.devices.delete(name);
    for (const tag of device.tags.values()) this.commands.unregister(tag.topic);
    await device.runner.stop().catch((error: unknown) => this.log.warn({ device: name, error: errorMessage(error) }, 'device did not stop cleanly'));
  }

  /**
   * Applies a new, already validated config without a restart: devices whose definition changed
   * are restarted, new ones started, removed ones stopped; everything else (broker and its
   * clients, outbox, uplink session, unchanged devices) keeps running. Changes to other sections
   * need a process restart: they are reported, not applied.
   */
  reload(loaded: LoadedConfig): Promise<ReloadResult> {
    const run = this.reloading.then(() => this.applyReload(loaded.config));
    this.reloading = run.catch(() => undefined);
    return run;
  }

  private async applyReload(next: Config): Promise<ReloadResult> {
    const result: ReloadResult = { added: [], removed: [], restarted: [], unchanged: 0, failed: [], applied: [], disconnected: [], notApplied: [] };
    if (this.stopping) return result;
    const previous = this.currentConfig;
    for (const section of ['gateway', 'topics', 'http', 'simulators'] as const) {
      if (changed(previous[section], next[section])) result.notApplied.push(section);
    }
    const accessSettings = new Set<string>(ACCESS_SETTINGS);
    for (const key of Object.keys({ ...previous.broker, ...next.broker }) as Array<keyof Config['broker']>) {
      if (changed(previous.broker[key], next.broker[key])) (accessSettings.has(key) ? result.applied : result.notApplied).push(`broker.${key}`);
    }
    if (changed(previous.writes, next.writes)) result.applied.push('writes');
    // Devices, write limits and who may use the broker come from the new config; the rest stays as it runs.
    const access = { users: next.broker.users, acl: next.broker.acl, allowAnonymous: next.broker.allowAnonymous };
    this.currentConfig = { ...previous, devices: next.devices, writes: next.writes, broker: { ...previous.broker, ...access } };
    this.commands.setLimits(next.writes);
    if (result.applied.some((setting) => setting.startsWith('broker.'))) result.disconnected = this.broker.reloadAccess(access);
    await this.reloadUplink(previous.uplink, next.uplink, result);
    const wanted = new Map(next.devices.filter((device) => device.enabled).map((device) => [device.name, device]));
    for (const name of [...this.devices.keys()]) {
      const running = this.devices.get(name)!;
      const replacement = wanted.get(name);
      if (!replacement) {
        await this.stopDevice(name);
        result.removed.push(name);
      } else if (JSON.stringify(replacement) !== running.fingerprint) {
        await this.stopDevice(name);
        result.restarted.push(name);
      } else result.unchanged++;
    }
    for (const [name, device] of wanted) {
      if (this.devices.has(name)) continue;
      // Spread its groups over their interval as if it were the only device; close enough for a few.
      try {
        await this.startDevice(device, (index, interval) => startPhase(index, pollGroupsOf(device).length, interval));
        if (!result.restarted.includes(name)) result.added.push(name);
      } catch (error) {
        // One device that cannot start (its driver failed to load) must not keep the others down.
        result.failed.push(name);
        result.restarted = result.restarted.filter((restarted) => restarted !== name);
        this.log.error({ device: name, error: errorMessage(error) }, 'device could not be started after the reload; it stays stopped');
      }
    }
    return result;
  }

  /**
   * A changed uplink (URL, credentials, TLS settings, rules, or certificate files rewritten in
   * place) is applied with a new cloud connection; the outbox, and so every message not yet
   * acknowledged, stays. Adding or removing the uplink, or changing its outbox, needs a restart.
   */
  private async reloadUplink(previous: Config['uplink'], next: Config['uplink'], result: ReloadResult): Promise<void> {
    const old = this.currentUplink;
    if (!previous || !next || !old) {
      if (changed(previous, next)) result.notApplied.push('uplink');
      return;
    }
    if (changed(previous.outbox, next.outbox)) result.notApplied.push('uplink.outbox');
    const wanted = { ...next, outbox: previous.outbox };
    if (!changed(previous, wanted) && tlsFilesFingerprint(next.tls) === old.tlsFingerprint) return;
    let uplink: Uplink;
    try {
      uplink = new Uplink(wanted, this.config.gateway.name, this.config.topics.status, this.outbox!, this.broker, this.log);
    } catch (error) {
      // (An unreadable certificate, say: the running connection stays.)
      this.log.error({ error: errorMessage(error) }, 'the new uplink settings cannot be used; the cloud connection stays as it was');
      result.notApplied.push('uplink');
      return;
    }
    // The old connection says "offline" and ends (what it had in flight stays in the outbox and is
    // sent again); the new one says "online" once it is up. Should it never come up, the cloud
    // is not left believing the gateway is online.
    await old.stop();
    uplink.continueFrom(old);
    this.useUplink(uplink, wanted);
    this.currentConfig = { ...this.currentConfig, uplink: wanted };
    // Forward rules may have changed: every tag's and batch's cloud route is looked up again.
    for (const device of this.devices.values()) {
      for (const tag of device.tags.values()) tag.cloud = uplink.route(tag.topic);
      for (const batch of device.batchTopics.values()) batch.cloud = uplink.route(batch.topic);
    }
    uplink.start();
    result.applied.push('uplink');
  }

  private compileTags(device: DeviceConfig): Map<string, CompiledTag> {
    const compiled = new Map<string, CompiledTag>();
    for (const tag of device.tags as TagConfig[]) {
      const group = tag.group ?? 'default';
      const topic = this.render(tag.topic ?? this.config.topics.tag, device, group, tag.name);
      compiled.set(tag.name, {
        topic,
        cloud: this.uplink?.route(topic),
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
  private registerCommands(device: CompiledDevice): void {
    const runner = device.runner;
    for (const tagConfig of device.config.tags as TagConfig[]) {
      const tag = device.tags.get(tagConfig.name)!;
      this.commands.register(tag.topic, {
        device: device.config.name,
        tag: tagConfig,
        previous: () => tag.last?.value,
        write: (raw) => runner.write(tagConfig, raw),
        readBack: async () => {
          const reading = await runner.readNow(tagConfig);
          return { reading, value: tag.normalizer.normalize(reading, Date.now()).value };
        },
      });
    }
  }

  /** Every running device with its health, for the status API and the metrics. */
  deviceStatus(): DeviceStatus[] {
    return [...this.devices.values()].map((device) => ({ name: device.config.name, driver: device.config.driver, tags: device.tags.size, samples: device.samples, health: device.runner.health }));
  }

  /** Every tag with its latest sample (optionally of one device), for the status API. */
  tagStatus(deviceName?: string): TagStatus[] {
    const result: TagStatus[] = [];
    for (const device of this.devices.values()) {
      if (deviceName !== undefined && device.config.name !== deviceName) continue;
      for (const tagConfig of device.config.tags as TagConfig[]) {
        const tag = device.tags.get(tagConfig.name)!;
        // A batch device publishes its tags only inside its groups' batch messages.
        const batch = device.config.publish === 'batch' ? device.batchTopics.get(tagConfig.group ?? 'default') : undefined;
        const status: TagStatus = { device: device.config.name, tag: tagConfig.name, topic: batch?.topic ?? tag.topic, writable: tagConfig.writable };
        if (tagConfig.writable) status.commandTopic = tag.topic + this.config.topics.command;
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
    const payload = Buffer.from(encodeAnswer(answer));
    const responseTopic = origin.responseTopic;
    // MQTT 5 request/response: to the requester's response topic (the broker checked the ACL),
    // never onto a topic of the gateway's own, where an answer would pass for a sample or a command.
    if (responseTopic !== undefined && !this.ownsTopic(responseTopic)) {
      // The requester matches the answer by its correlation data, carried as a property.
      if (origin.correlationData !== undefined) attachOutgoingProperties(responseTopic, payload, { correlationData: origin.correlationData });
      this.broker.publish(responseTopic, payload, { qos: 1, retain: false });
      return;
    }
    this.broker.publish(resultTopic, payload, { qos: 1, retain: false });
    const cloud = this.uplink?.route(resultTopic);
    if (cloud) this.uplink!.enqueue(cloud, payload, false);
  }

  /** Topics the gateway publishes or listens on: tag, batch, command, result and status topics. */
  private ownsTopic(topic: string): boolean {
    if (topic === this.statusTopic) return true;
    if (this.commands.isCommand(topic)) return true;
    if (topic.endsWith('/result') && this.commands.isCommand(topic.slice(0, -'/result'.length))) return true;
    for (const device of this.devices.values()) {
      for (const tag of device.tags.values()) if (tag.topic === topic) return true;
      for (const batch of device.batchTopics.values()) if (batch.topic === topic) return true;
    }
    return false;
  }

  private render(template: string, device: DeviceConfig, group: string, tag?: string): string {
    const variables: Record<string, string> = { ...device.meta, gateway: this.config.gateway.name, device: device.name, group };
    if (tag !== undefined) variables.tag = tag;
    return compileTopicTemplate(template).render(variables);
  }

  /** Raw readings of one poll cycle → samples → the integrated broker. */
  private onReadings(device: CompiledDevice, event: ReadingsEvent): void {
    const now = Date.now();
    const { topics } = this.config;
    const batch: Sample[] = [];
    for (const reading of event.readings) {
      const tag = device.tags.get(reading.tag);
      if (!tag) continue;
      const sample = tag.normalizer.normalize(reading, now);
      tag.last = sample;
      this.stats.samples++;
      device.samples++;
      if (device.config.publish === 'batch') batch.push(sample);
      else if (tag.normalizer.shouldReport(sample, now)) {
        this.publish(tag.topic, tag.cloud, encodeTagPayload(sample, topics.timestamp), topics.retain);
      }
    }
    if (batch.length > 0) {
      const { topic, cloud } = device.batchTopics.get(event.group)!;
      this.publish(topic, cloud, encodeBatchPayload(event.device, event.group, event.cycleTs, batch, topics.timestamp), topics.retain);
    }
  }

  /** Local subscribers get the message at once; the cloud gets it through the outbox. */
  private publish(topic: string, cloud: CloudRoute | undefined, text: string, retain: boolean): void {
    const payload = Buffer.from(text);
    this.stats.published++;
    this.broker.publish(topic, payload, { qos: this.config.topics.qos, retain });
    if (cloud) this.uplink!.enqueue(cloud, payload, retain);
  }

  private publishStatus(status: 'online' | 'offline'): Promise<void> {
    return this.broker.publishNow(this.statusTopic, status, { qos: 1, retain: true });
  }

  /** Graceful shutdown: stop polling (waiting for cycles in progress), say offline, close everything. */
  stop(): Promise<void> {
    this.stopping ??= (async () => {
      await this.reloading;
      await Promise.all([...this.devices.keys()].map((name) => this.stopDevice(name)));
      // The cloud connection ends first, so no command from the cloud arrives at a closed broker;
      // local clients may still publish meanwhile, into the outbox, which is closed last and keeps
      // whatever was not delivered for the next start.
      await this.broker.flush(1000);
      await this.uplink?.stop();
      await this.publishStatus('offline').catch(() => undefined);
      await this.broker.close();
      this.outbox?.close();
      await Promise.all(this.simulators.map((simulator) => simulator.close()));
      this.log.info({ ...this.stats, outbox: this.outbox?.stats, uplink: this.uplink?.stats }, 'gateway stopped');
    })();
    return this.stopping;
  }
}

/** The device's poll groups that have tags: "default" at pollInterval plus each named group. */
export function pollGroupsOf(device: DeviceConfig): PollGroup<DriverTag>[] {
  const byGroup = new Map<string, TagConfig[]>();
  for (const tag of device.tags as TagConfig[]) {
    const group = tag.group ?? 'default';
    byGroup.set(group, [...(byGroup.get(group) ?? []), tag]);
  }
  return [...byGroup].map(([name, tags]) => ({
    name,
    interval: name === 'default' ? device.pollInterval : device.pollGroups[name]!.interval,
    tags,
  }));
}
