// One device at run time: its driver, its poll groups and its health. Connection failures
// become bad-quality readings (never silence) and reconnects back off with jitter. Each device
// fails alone: nothing here throws into the gateway.
import type { Logger } from 'pino';
import { backoffDelay } from '../util/backoff.js';
import { errorMessage } from '../util/errors.js';
import { DriverError, type Driver, type DriverErrorCode, type DriverTag, type ReadPlan, type TagReading, type TagValue } from './driver.js';
import { PollJob, type Clock, systemClock } from './scheduler.js';

export interface PollGroup<Tag extends DriverTag = DriverTag> {
  name: string;
  interval: number;
  tags: readonly Tag[];
}

export interface DeviceHealth {
  state: 'connecting' | 'connected' | 'disconnected' | 'stopped';
  lastError?: string;
  connectAttempts: number;
  /**
   * While the gateway backs off from the device: when it tries again (the next reconnect, or the
   * next probe of a device its driver skips after timeouts), ms since the epoch. Absent otherwise.
   */
  nextTryAt?: number;
  /**
   * Poll cycles with at least one bad tag, whatever the cause: not connected, the read failed as a
   * whole, or single tags bad (for subscriptions: deliveries with a bad tag).
   */
  pollErrors: number;
  /**
   * The same cycles by failure code ("timeout", "exception-2", "not-connected", …): a cycle counts
   * once under each code among its bad tags, so each count is at most pollErrors, and the counts
   * add up to pollErrors unless a cycle had bad tags of different codes.
   */
  errorsByCode: Record<string, number>;
  overruns: number;
  cycles: number;
  /** Per poll group, what one poll costs as it runs now (the driver's plan.describe(): requests, ranges, learnt holes). */
  plans: Record<string, string>;
  /** Per poll group, how long its last read took, in seconds (groups not read yet, and subscriptions, are absent). */
  lastPollSeconds: Record<string, number>;
}

export interface ReadingsEvent {
  device: string;
  group: string;
  /** When the cycle started (its scheduled slot). */
  cycleTs: number;
  readings: TagReading[];
}

export interface DeviceRunnerOptions<Tag extends DriverTag> {
  name: string;
  driver: Driver<Tag>;
  groups: readonly PollGroup<Tag>[];
  log: Logger;
  onReadings: (event: ReadingsEvent) => void;
  /** Phase of each group's first poll, for spreading devices over the interval. */
  phaseOf: (group: PollGroup<Tag>) => number;
  /** Told how long each read of a poll group took (metrics); not called for push groups. */
  onPollDone?: (group: string, seconds: number, ok: boolean) => void;
  /** Told every change of `health.state`, with the reason it is not connected (if any). */
  onStateChange?: (state: DeviceHealth['state'], lastError: string | undefined) => void;
  /**
   * Hand over the readings of a poll as the driver has them (Modbus: each reply's tags), in
   * several onReadings events per cycle, instead of one at its end. For tags published one by
   * one; a batch or a per-cycle record needs the whole cycle. Asked at each poll (a reload may
   * change the answer without restarting the device).
   */
  early?: () => boolean;
  clock?: Clock;
}

export class DeviceRunner<Tag extends DriverTag = DriverTag> {
  readonly name: string;
  readonly health: DeviceHealth = {
    state: 'disconnected',
    connectAttempts: 0,
    pollErrors: 0,
    errorsByCode: {},
    overruns: 0,
    cycles: 0,
    plans: {},
    lastPollSeconds: {},
  };
  private readonly options: DeviceRunnerOptions<Tag>;
  private readonly clock: Clock;
  private readonly jobs: PollJob[] = [];
  private connecting: Promise<boolean> | undefined;
  private nextConnectAt = 0;
  /** Failed connects and lost connections since the last successful read. */
  private consecutiveFailures = 0;
  private stopped = false;
  /** Push plans subscribed on the current connection. */
  private readonly subscribed = new Set<ReadPlan>();

  constructor(options: DeviceRunnerOptions<Tag>) {
    this.options = options;
    this.name = options.name;
    this.clock = options.clock ?? systemClock;
  }

  start(): void {
    const { driver, groups, log } = this.options;
    for (const group of groups) {
      const plan = driver.plan(group.tags);
      this.health.plans[group.name] = plan.describe();
      log.info(
        { device: this.name, group: group.name, interval: group.interval, tags: group.tags.length, plan: this.health.plans[group.name] },
        'poll group planned',
      );
      const job = new PollJob({
        interval: group.interval,
        phase: this.options.phaseOf(group),
        clock: this.clock,
        run: (slot) => this.poll(group, plan, slot),
        onOverrun: (stats) => {
          this.health.overruns++;
          // Log the first overrun and then every 100th, not every slot of a slow device.
          if (stats.overruns === 1 || stats.overruns % 100 === 0) {
            log.warn(
              { device: this.name, group: group.name, overruns: stats.overruns },
              'poll cycle still running at the next slot; slot skipped',
            );
          }
        },
      });
      this.jobs.push(job);
      job.start();
    }
  }

  /**
   * Stops polling. The driver is closed first, which fails requests still waiting for a silent
   * device at once; only then are the cycles in progress awaited (and at most `graceMs`, since a
   * TCP connect in progress can't be interrupted).
   */
  async stop(graceMs = 1000): Promise<void> {
    this.stopped = true;
    const cycles = Promise.all(this.jobs.map((job) => job.stop()));
    await this.options.driver.close();
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([cycles, new Promise((resolve) => (timer = setTimeout(resolve, graceMs)))]);
    clearTimeout(timer);
    this.setState('stopped');
  }

  /**
   * Writes one value (raw, already checked by the command path) to one tag. A device that is not
   * connected refuses at once: a write must never wait for a reconnect and land minutes later.
   */
  async write(tag: Tag, value: TagValue): Promise<void> {
    this.requireConnected();
    await this.options.driver.write(tag, value);
  }

  /** Reads one tag now, outside the poll schedule (read-back after a write). */
  async readNow(tag: Tag): Promise<TagReading> {
    this.requireConnected();
    const [reading] = await this.options.driver.read(this.options.driver.plan([tag]));
    return reading ?? { tag: tag.name, quality: 'bad', reason: 'the driver returned no reading', code: 'no-result' };
  }

  private requireConnected(): void {
    if (this.stopped) throw new DriverError('the device is stopping', { code: 'stopped' });
    if (this.health.state !== 'connected' || !this.options.driver.connected) {
      throw new DriverError(`device not connected: ${this.health.lastError ?? this.health.state}`, { code: 'not-connected' });
    }
  }

  /** One cycle of one poll group. Always emits a reading per tag: values, or bad quality with the reason. */
  async poll(group: PollGroup<Tag>, plan: ReadPlan, cycleTs: number): Promise<void> {
    this.health.cycles++;
    if (plan.mode === 'push') return this.supervise(group, plan);
    let readings: TagReading[];
    /** Failure codes of the readings handed over early: a cycle counts its errors once (countErrors). */
    const earlyCodes = new Set<string>();
    /** Tags handed over early: a failure after them concerns only the others. */
    const handedOver = new Set<string>();
    const early = this.options.early?.()
      ? (part: TagReading[]) => {
          if (this.stopped) return;
          for (const reading of part) {
            handedOver.add(reading.tag);
            if (reading.quality === 'bad') earlyCodes.add(reading.code ?? 'error');
          }
          // Inside the driver's read: a failure of the consumer must not pass for the device's.
          try {
            this.options.onReadings({ device: this.name, group: group.name, cycleTs, readings: part });
          } catch (error) {
            this.options.log.error({ device: this.name, error: errorMessage(error) }, 'handling early readings failed');
          }
        }
      : undefined;
    if (!(await this.ensureConnected())) {
      readings = allBad(group.tags, `not connected: ${this.health.lastError ?? 'connecting'}`, 'not-connected');
    } else {
      const started = performance.now();
      try {
        readings = await this.options.driver.read(plan, early);
        this.setNextTry(this.options.driver.nextTryAt);
        this.notePlan(group, plan);
        const seconds = (performance.now() - started) / 1000;
        this.health.lastPollSeconds[group.name] = seconds;
        this.options.onPollDone?.(group.name, seconds, true);
        // Only a completed read proves the link works; a connect alone may be reset at once.
        this.consecutiveFailures = 0;
      } catch (error) {
        if (this.stopped) return; // stop() closed the connection under this read
        const seconds = (performance.now() - started) / 1000;
        this.health.lastPollSeconds[group.name] = seconds;
        this.options.onPollDone?.(group.name, seconds, false);
        const reason = errorMessage(error);
        this.health.lastError = reason;
        const rest = handedOver.size > 0 ? group.tags.filter((tag) => !handedOver.has(tag.name)) : group.tags;
        readings = allBad(rest, reason, error instanceof DriverError ? error.code : 'error');
        if (error instanceof DriverError && error.connectionLost) await this.lostConnection(reason);
      }
    }
    this.emit(group, cycleTs, readings, earlyCodes);
  }

  /** The (rest of the) cycle's readings; `earlyCodes`: failure codes of readings handed over before. */
  private emit(group: PollGroup<Tag>, cycleTs: number, readings: TagReading[], earlyCodes?: ReadonlySet<string>): void {
    if (this.stopped) return; // a cycle cut short by stop(): its "connection closed" is not news
    this.countErrors(readings, earlyCodes);
    // An early read may have handed over every tag already.
    if (readings.length > 0) this.options.onReadings({ device: this.name, group: group.name, cycleTs, readings });
  }

  /**
   * A push group's tick: the driver delivers values itself; this makes sure it is connected and
   * subscribed, and reports the tags bad (never silent) while it is not.
   */
  private async supervise(group: PollGroup<Tag>, plan: ReadPlan): Promise<void> {
    if (!(await this.ensureConnected())) {
      this.subscribed.delete(plan);
      this.emit(group, this.clock.now(), allBad(group.tags, `not connected: ${this.health.lastError ?? 'connecting'}`, 'not-connected'));
      return;
    }
    if (this.subscribed.has(plan)) return;
    const subscribe = this.options.driver.subscribe;
    if (!subscribe) throw new Error(`driver of ${this.name} made a push plan but cannot subscribe`);
    try {
      let proven = false;
      await subscribe.call(this.options.driver, plan, (readings) => {
        // Like a completed read, only a delivered value proves the link works: a peer that accepts
        // and drops every connection must still be backed off from.
        if (!proven && readings.some((reading) => reading.quality !== 'bad')) {
          proven = true;
          this.consecutiveFailures = 0;
        }
        this.emit(group, this.clock.now(), readings);
      });
      this.subscribed.add(plan);
    } catch (error) {
      if (this.stopped) return;
      const reason = errorMessage(error);
      this.health.lastError = reason;
      this.emit(group, this.clock.now(), allBad(group.tags, reason, error instanceof DriverError ? error.code : 'error'));
      if (error instanceof DriverError && error.connectionLost) await this.lostConnection(reason);
    }
  }

  private countErrors(readings: readonly TagReading[], earlier?: ReadonlySet<string>): void {
    const codes = new Set<string>(earlier);
    for (const reading of readings) if (reading.quality === 'bad') codes.add(reading.code ?? 'error');
    if (codes.size > 0) this.health.pollErrors++;
    for (const code of codes) this.health.errorsByCode[code] = (this.health.errorsByCode[code] ?? 0) + 1;
  }

  private async ensureConnected(): Promise<boolean> {
    if (this.options.driver.connected) return true;
    // The driver noticed the loss by itself (push drivers do): close it and back off like any loss.
    if (this.health.state === 'connected' && !this.connecting) await this.lostConnection(this.health.lastError ?? 'connection lost');
    if (this.connecting) return this.connecting;
    if (this.clock.now() < this.nextConnectAt) return false;
    this.connecting = this.connect().finally(() => {
      this.connecting = undefined;
    });
    return this.connecting;
  }

  private async connect(): Promise<boolean> {
    const { driver, log } = this.options;
    this.setState('connecting');
    this.health.connectAttempts++;
    try {
      await driver.connect();
      this.setNextTry(undefined);
      if (this.consecutiveFailures === 0 && !this.health.lastError) log.info({ device: this.name }, 'device connected');
      else if (this.consecutiveFailures <= 2 || this.consecutiveFailures % 50 === 0)
        log.info({ device: this.name, failures: this.consecutiveFailures }, 'device connected again');
      delete this.health.lastError;
      this.setState('connected');
      return true;
    } catch (error) {
      this.consecutiveFailures++;
      const delay = backoffDelay(this.consecutiveFailures);
      this.nextConnectAt = this.clock.now() + delay;
      this.setNextTry(this.nextConnectAt);
      const reason = errorMessage(error);
      // Log when the reason changes, not on every retry of a device that stays down.
      if (reason !== this.health.lastError) log.warn({ device: this.name, error: reason, retryInMs: delay }, 'device connect failed');
      this.health.lastError = reason;
      this.setState('disconnected');
      await driver.close();
      return false;
    }
  }

  /** A driver may re-plan as it learns (Modbus: illegal-address holes); status and log follow. */
  private notePlan(group: PollGroup<Tag>, plan: ReadPlan): void {
    const now = plan.describe();
    if (now === this.health.plans[group.name]) return;
    this.health.plans[group.name] = now;
    this.options.log.info({ device: this.name, group: group.name, plan: now }, 'poll group re-planned');
  }

  private setState(state: DeviceHealth['state']): void {
    if (this.health.state === state) return;
    this.health.state = state;
    this.options.onStateChange?.(state, this.health.lastError);
  }

  private setNextTry(at: number | undefined): void {
    if (at === undefined) delete this.health.nextTryAt;
    else this.health.nextTryAt = at;
  }

  private async lostConnection(reason: string): Promise<void> {
    this.consecutiveFailures++;
    this.subscribed.clear();
    this.setState('disconnected');
    await this.options.driver.close();
    // A link that worked reconnects on the next cycle; one that keeps dropping right after the
    // connect (a peer that accepts and resets) backs off like a failed connect.
    const delay = this.consecutiveFailures > 1 ? backoffDelay(this.consecutiveFailures - 1) : 0;
    this.nextConnectAt = this.clock.now() + delay;
    this.setNextTry(delay > 0 ? this.nextConnectAt : undefined);
    // A flapping link logs its first drops, then every 50th, not every cycle.
    if (this.consecutiveFailures <= 2 || this.consecutiveFailures % 50 === 0) {
      this.options.log.warn({ device: this.name, error: reason, retryInMs: delay }, 'device connection lost');
    }
  }
}

function allBad(tags: readonly DriverTag[], reason: string, code: DriverErrorCode): TagReading[] {
  return tags.map((tag) => ({ tag: tag.name, quality: 'bad', reason, code }));
}
