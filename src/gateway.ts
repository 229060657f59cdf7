// The life of a sample, top to bottom:
//
//   poll job (scheduler.ts)  fires on its fixed-rate grid for one device and poll group
//     → driver.read(plan)    (drivers/<name>) returns raw readings; failures become bad quality
//     → TagNormalizer        (normalize.ts) types, scales, stamps, decides report-by-exception
//     → topic + payload      (topics.ts, payload.ts) compiled once at start
//     → integrated broker    (broker.ts) where local subscribers see it, retained
//     → outbox               (outbox.ts) SQLite, when a forward rule sends the topic to the cloud
//     → uplink               (uplink.ts) to the cloud broker at QoS 1; deleted from the outbox on PUBACK
//
// Messages that MQTT clients publish into the integrated broker on forwarded topics take the
// same outbox → uplink path (broker.clientPublishHook), and cloud commands come back down.
//
// The way back to the PLC: a message on a tag's command topic ("<tag topic>/set"), from a local
// client the ACL let through (broker.commandHook) or from the cloud (uplink.downlinkHook)
//     → CommandHandler       (commands.ts) parse, writable?, type, min/max, rate limit
//     → DeviceRunner.write   → driver.write; optional read-back
//     → answer               on "<command topic>/result" or the MQTT 5 response topic, plus an audit line
//
// Everything a device does is isolated in its DeviceRunner: one failing device never stops another.
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { IntegratedBroker } from './broker.js';
import { CommandHandler, encodeAnswer, type CommandAnswer, type CommandOrigin } from './commands.js';
import type { LoadedConfig } from './config/load.js';
import type { Config, DeviceConfig, TagConfig } from './config/schema.js';
import { DeviceRunner, type PollGroup, type ReadingsEvent } from './device.js';
import { errorMessage } from './errors.js';
import type { DriverTag } from './driver.js';
import { DRIVERS, type DriverModule } from './drivers.js';
import { TagNormalizer, type Sample } from './normalize.js';
import { encodeBatchPayload, encodeTagPayload } from './payload.js';
import { startPhase } from './scheduler.js';
import { startSimulator, type RunningSimulator } from './simulator.js';
import { compileTopicTemplate } from './topics.js';
import { Outbox } from './outbox.js';
import { Uplink, type CloudRoute } from './uplink.js';

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
  tags: Map<string, CompiledTag>;
  /** Rendered batch topic per poll group (publish: "batch") and its cloud route. */
  batchTopics: Map<string, { topic: string; cloud: CloudRoute | undefined }>;
  runner: DeviceRunner;
}

export interface GatewayStats {
  /** Readings normalized into samples. */
  samples: number;
  /** Messages (per tag or batch) handed to the integrated broker. */
  published: number;
}

export class Gateway {
  readonly config: Config;
  readonly broker: IntegratedBroker;
  readonly outbox: Outbox | undefined;
  readonly uplink: Uplink | undefined;
  readonly commands: CommandHandler;
  readonly stats: GatewayStats = { samples: 0, published: 0 };
  private readonly log: Logger;
  private readonly devices: CompiledDevice[] = [];
  private readonly simulators: RunningSimulator[];
  private readonly statusTopic: string;
  private stopping: Promise<void> | undefined;

  private constructor(config: Config, broker: IntegratedBroker, simulators: RunningSimulator[], log: Logger, cloud?: { outbox: Outbox; uplink: Uplink }) {
    this.config = config;
    this.broker = broker;
    this.outbox = cloud?.outbox;
    this.uplink = cloud?.uplink;
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
      log: log.child({ module: 'commands' }),
      answer: (topic, answer, origin) => this.answerCommand(topic, answer, origin),
    });
    broker.commandHook = (topic, payload, retain, origin) => {
      if (this.commands.isCommand(topic)) void this.commands.handle(topic, payload, retain, origin);
    };
    if (this.uplink) {
      const cloudClient = `cloud:${config.uplink?.clientId ?? `plc2mqtt-${config.gateway.name}`}`;
      this.uplink.downlinkHook = (topic, payload, retain) => {
        if (this.commands.isCommand(topic)) void this.commands.handle(topic, payload, retain, { source: 'cloud', clientId: cloudClient });
      };
    }
  }

  static async start(loaded: LoadedConfig, log: Logger): Promise<Gateway> {
    const { config } = loaded;
    mkdirSync(loaded.dataDir, { recursive: true });

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
      try {
        const outbox = Outbox.open(join(loaded.dataDir, 'outbox.db'), config.uplink.outbox, log.child({ module: 'outbox' }));
        const uplink = new Uplink(config.uplink, config.gateway.name, config.topics.status, outbox, broker, log);
        cloud = { outbox, uplink };
        broker.clientPublishHook = (topic, payload, qos, retain) => {
          const route = uplink.route(topic);
          if (!route) return undefined;
          if (qos === 0) {
            uplink.enqueue(route, payload, retain);
            return undefined;
          }
          // A QoS 1 publisher gets its PUBACK only once the message is on disk.
          return new Promise<void>((resolve) => uplink.enqueue(route, payload, retain, resolve));
        };
        uplink.start();
      } catch (error) {
        cloud?.outbox.close();
        await broker.close();
        await Promise.all(simulators.map((simulator) => simulator.close()));
        throw error;
      }
    }
    const gateway = new Gateway(config, broker, simulators, log, cloud);
    for (const address of broker.addresses()) {
      const credentials = config.broker.allowAnonymous ? '' : ' -u USER -P PASSWORD';
      const hint = address.type === 'tcp' ? `; try: mosquitto_sub -h ${address.host} -p ${address.port}${credentials} -t '#' -v` : '';
      log.info({ listener: address.url }, `integrated broker listening${hint}`);
    }
    await gateway.publishStatus('online');

    // 4. Devices: each gets its driver, compiled tags and poll jobs.
    try {
      await gateway.startDevices(loaded.dataDir);
    } catch (error) {
      await gateway.stop();
      throw error;
    }
    return gateway;
  }

  private async startDevices(dataDir: string): Promise<void> {
    const enabled = this.config.devices.filter((device) => device.enabled);
    const jobCount = enabled.reduce((count, device) => count + pollGroupsOf(device).length, 0);
    let jobIndex = 0;
    for (const device of enabled) {
      const groups = pollGroupsOf(device);
      const driverModule = (await DRIVERS[device.driver].load()) as DriverModule<DeviceConfig>;
      const driver = driverModule.createDriver(device, { log: this.log.child({ device: device.name }), dataDir });
      const phases = new Map(groups.map((group) => [group.name, startPhase(jobIndex++, jobCount, group.interval)]));
      const compiled: CompiledDevice = {
        config: device,
        tags: this.compileTags(device),
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
        }),
      };
      this.devices.push(compiled);
      this.registerCommands(compiled);
      compiled.runner.start();
    }
    const tags = enabled.reduce((count, device) => count + device.tags.length, 0);
    this.log.info({ devices: enabled.length, tags, pollJobs: jobCount }, 'polling started');
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

  /** The answer to a write: to whoever asked, and to the cloud when the topic is forwarded. */
  private answerCommand(topic: string, answer: CommandAnswer, origin: CommandOrigin): void {
    const payload = Buffer.from(encodeAnswer(answer));
    this.broker.publish(topic, payload, { qos: 1, retain: false });
    const cloud = this.uplink?.route(topic);
    if (cloud) this.uplink!.enqueue(cloud, payload, false);
    void origin;
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
      await Promise.all(this.devices.map((device) => device.runner.stop().catch((error: unknown) => this.log.warn({ device: device.config.name, error: errorMessage(error) }, 'device did not stop cleanly'))));
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
