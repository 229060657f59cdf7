// The supervisor: starts the gateway's features (simulators, outbox, broker, uplink, commands,
// status topic, each device, the operations endpoint) one after the other in the order they were
// added, and stops them in reverse. What a failed start means is each feature's own choice:
//
//   fatal     the whole start fails: what was started is stopped again (the broker's port is taken)
//   retry     logged and reported, tried again with capped back-off and jitter while the rest runs
//             (a device whose driver cannot be loaded or created)
//   continue  logged and reported, not tried again (the operations endpoint's port is taken)
//
// The contract for a feature: start() that throws releases what it took itself (it may keep what
// it reports, such as a failed device's tags); stop() is called once the feature is no longer
// wanted (shutdown, or remove() on a reload) if its start was ever attempted, failed or not, and
// copes with a start that failed. Operations on one feature never overlap: a stop waits for a
// start in progress. Features of one stopGroup stop together, in parallel, where the last of them
// comes in the stop order (fifty devices each waiting up to a second for a poll in progress).
import type { Logger } from 'pino';
import { backoffDelay, DEFAULT_BACKOFF, type BackoffOptions } from '../util/backoff.js';
import { errorMessage } from '../util/errors.js';
import { systemClock, type Clock } from '../pipeline/scheduler.js';

export interface Feature {
  readonly name: string;
  start(): Promise<void> | void;
  stop(): Promise<void> | void;
}

export type StartFailure = 'fatal' | 'retry' | 'continue';

export interface FeatureOptions {
  /** What a failed start means (default "fatal"). */
  onStartFailure?: StartFailure;
  /** Features of one group stop together (in parallel), where the last of them started comes in the stop order. */
  stopGroup?: string;
  /** The log message of a failed start ("retry" and "continue"; "fatal" failures are the caller's to report). */
  failureMessage?: string;
  /** Told every state change of this feature. */
  onState?: (status: FeatureStatus) => void;
}

export type FeatureState = 'idle' | 'starting' | 'running' | 'failed' | 'stopping' | 'stopped';

export interface FeatureStatus {
  name: string;
  state: FeatureState;
  /** Why the last start failed, while it is failed (or being tried again). */
  lastError?: string;
  /** Start attempts so far. */
  attempts: number;
  /** While a failed "retry" feature waits: when it is tried again, ms since the epoch. */
  nextTryAt?: number;
}

interface Entry {
  feature: Feature;
  options: FeatureOptions & { onStartFailure: StartFailure };
  status: FeatureStatus;
  /** What the last failed start threw. */
  failure?: unknown;
  /** The start or stop in progress. */
  busy: Promise<unknown>;
  timer?: unknown;
  /** Failed starts in a row (the back-off's attempt number). */
  failures: number;
  removed: boolean;
}

export interface SupervisorOptions {
  log: Logger;
  clock?: Clock;
  backoff?: BackoffOptions;
  random?: () => number;
}

export class Supervisor {
  private readonly entries: Entry[] = [];
  private readonly log: Logger;
  private readonly clock: Clock;
  private readonly backoff: BackoffOptions;
  private readonly random: () => number;
  private running = false;
  private stopping: Promise<void> | undefined;

  constructor(options: SupervisorOptions) {
    this.log = options.log;
    this.clock = options.clock ?? systemClock;
    this.backoff = options.backoff ?? DEFAULT_BACKOFF;
    this.random = options.random ?? Math.random;
  }

  /**
   * Adds a feature at the end of the start order (so at the beginning of the stop order). Before
   * start() that is all; afterwards it is started at once. Resolves with whether its (first)
   * start succeeded; rejects when a "fatal" one fails (it is stopped and forgotten again). A name
   * already supervised, or a supervisor that is stopping, throws at once.
   */
  add(feature: Feature, options: FeatureOptions = {}): Promise<boolean> {
    if (this.stopping) throw new Error(`cannot add "${feature.name}": the supervisor is stopping`);
    if (this.entries.some((entry) => entry.feature.name === feature.name))
      throw new Error(`a feature named "${feature.name}" is already supervised`);
    const entry: Entry = {
      feature,
      options: { ...options, onStartFailure: options.onStartFailure ?? 'fatal' },
      status: { name: feature.name, state: 'idle', attempts: 0 },
      busy: Promise.resolve(),
      failures: 0,
      removed: false,
    };
    this.entries.push(entry);
    return this.running ? this.startAdded(entry) : Promise.resolve(true);
  }

  private async startAdded(entry: Entry): Promise<boolean> {
    if (await this.attempt(entry)) return true;
    // (Not attempted at all when a stop or remove came first.)
    if (entry.options.onStartFailure !== 'fatal' || entry.failure === undefined) return false;
    await this.remove(entry.feature.name);
    throw entry.failure;
  }

  /**
   * Starts every feature added so far, in order, each once its predecessor's start is done. A
   * "fatal" failure stops everything started so far (in reverse) and rejects with its error.
   */
  async start(): Promise<void> {
    if (this.running || this.stopping) throw new Error('the supervisor was started already');
    this.running = true;
    for (const entry of [...this.entries]) {
      const started = await this.attempt(entry);
      if (this.stopping) throw new Error('stopped while starting');
      if (started || entry.options.onStartFailure !== 'fatal') continue;
      await this.stop().catch(() => undefined);
      throw entry.failure;
    }
  }

  /** Stops one feature (waiting for a start in progress, cancelling a retry) and forgets it. */
  async remove(name: string): Promise<void> {
    const entry = this.entries.find((candidate) => candidate.feature.name === name);
    if (!entry) return;
    entry.removed = true;
    this.cancelRetry(entry);
    try {
      await this.stopEntry(entry);
    } finally {
      this.entries.splice(this.entries.indexOf(entry), 1);
    }
  }

  /**
   * Stops every feature in reverse order of start (retries are cancelled first). A feature that
   * fails to stop is logged and the others still stop; the first such error rejects at the end.
   */
  stop(): Promise<void> {
    this.stopping ??= (async () => {
      for (const entry of this.entries) this.cancelRetry(entry);
      let firstError: unknown;
      const done = new Set<Entry>();
      for (const entry of [...this.entries].reverse()) {
        if (done.has(entry)) continue;
        const { stopGroup } = entry.options;
        const together = stopGroup === undefined ? [entry] : this.entries.filter((candidate) => candidate.options.stopGroup === stopGroup);
        for (const member of together) done.add(member);
        const failures = await Promise.all(
          together.map((member) =>
            this.stopEntry(member).then(
              () => undefined,
              (error: unknown) => ({ error }),
            ),
          ),
        );
        for (const failure of failures) if (failure && firstError === undefined) firstError = failure.error;
      }
      this.running = false;
      if (firstError !== undefined) throw firstError;
    })();
    return this.stopping;
  }

  /** One feature's state, or undefined for a name not supervised. */
  status(name: string): FeatureStatus | undefined {
    const entry = this.entries.find((candidate) => candidate.feature.name === name);
    return entry ? { ...entry.status } : undefined;
  }

  /** Every feature's state, in start order. */
  list(): FeatureStatus[] {
    return this.entries.map((entry) => ({ ...entry.status }));
  }

  /** One start attempt, after whatever this feature is busy with. Resolves with whether it started. */
  private attempt(entry: Entry): Promise<boolean> {
    const run = entry.busy.then(async () => {
      if (entry.removed || this.stopping) return false;
      this.setState(entry, 'starting', (status) => {
        status.attempts++;
        delete status.nextTryAt;
      });
      try {
        await entry.feature.start();
      } catch (error) {
        entry.failure = error;
        entry.failures++;
        this.failed(entry, error);
        return false;
      }
      if (entry.failures > 0)
        this.log.info(
          { feature: entry.feature.name, attempts: entry.status.attempts },
          `${entry.feature.name} started after ${entry.failures} failed attempt${entry.failures === 1 ? '' : 's'}`,
        );
      entry.failures = 0;
      delete entry.failure;
      this.setState(entry, 'running', (status) => delete status.lastError);
      return true;
    });
    entry.busy = run;
    return run;
  }

  private failed(entry: Entry, error: unknown): void {
    const reason = errorMessage(error);
    const previous = entry.status.lastError;
    const { onStartFailure, failureMessage } = entry.options;
    if (onStartFailure !== 'retry') {
      this.setState(entry, 'failed', (status) => (status.lastError = reason));
      if (onStartFailure === 'continue')
        this.log.error(
          { feature: entry.feature.name, error: reason },
          failureMessage ?? `${entry.feature.name} could not be started; the gateway runs without it`,
        );
      return;
    }
    const delay = backoffDelay(entry.failures, this.backoff, this.random);
    const nextTryAt = this.clock.now() + delay;
    this.setState(entry, 'failed', (status) => {
      status.lastError = reason;
      status.nextTryAt = nextTryAt;
    });
    // Logged when the reason changes and every 50th attempt, not at every retry of a feature that stays down.
    if (reason !== previous || entry.failures % 50 === 0) {
      this.log.error(
        { feature: entry.feature.name, error: reason, attempts: entry.status.attempts, retryInMs: delay },
        failureMessage ?? `${entry.feature.name} could not be started; trying again with back-off`,
      );
    }
    entry.timer = this.clock.setTimeout(() => {
      entry.timer = undefined;
      void this.attempt(entry);
    }, delay);
  }

  private async stopEntry(entry: Entry): Promise<void> {
    const run = entry.busy.then(async () => {
      const { state } = entry.status;
      if (state === 'idle' || state === 'stopped') return;
      this.setState(entry, 'stopping', (status) => delete status.nextTryAt);
      try {
        await entry.feature.stop();
      } catch (error) {
        this.log.error({ feature: entry.feature.name, error: errorMessage(error) }, `${entry.feature.name} did not stop cleanly`);
        throw error;
      } finally {
        this.setState(entry, 'stopped');
      }
    });
    entry.busy = run.catch(() => undefined);
    return run;
  }

  private cancelRetry(entry: Entry): void {
    if (entry.timer === undefined) return;
    this.clock.clearTimeout(entry.timer);
    entry.timer = undefined;
  }

  private setState(entry: Entry, state: FeatureState, change?: (status: FeatureStatus) => void): void {
    entry.status.state = state;
    change?.(entry.status);
    entry.options.onState?.({ ...entry.status });
  }
}
