// MQTT clients of the uplink tests: a publisher of numbered messages into the gateway's integrated
// broker (each PUBACK means "committed to the outbox"), a recorder on the cloud broker, and the
// checks "complete", "in order per topic after removing duplicates" and "how many duplicates".
import assert from 'node:assert/strict';
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';
import { waitFor } from './net.js';

/** `{"seq":N}` padded with JSON whitespace to a fixed size, so byte bounds are exact. */
export const PAYLOAD_SIZE = 20;
export const payloadOf = (seq: number): string => JSON.stringify({ seq }).padEnd(PAYLOAD_SIZE, ' ');

export function seqOf(payload: string): number | undefined {
  try {
    const parsed = JSON.parse(payload) as unknown;
    if (typeof parsed === 'object' && parsed !== null && typeof (parsed as { seq?: unknown }).seq === 'number')
      return (parsed as { seq: number }).seq;
  } catch {
    // not one of ours
  }
  return undefined;
}

/** Three local topics, round robin by sequence number: "line/a", "line/b", "line/c". */
export const TOPICS = ['a', 'b', 'c'] as const;
export const localTopicOf = (seq: number): string => `line/${TOPICS[seq % TOPICS.length]!}`;
export const cloudTopicOf = (seq: number): string => `up/${TOPICS[seq % TOPICS.length]!}`;

/** One connection attempt; `setup` runs before CONNACK, so no message can arrive unheard. */
function connectOnce(url: string, options: IClientOptions, setup?: (client: MqttClient) => void): Promise<MqttClient> {
  return new Promise((resolve, reject) => {
    const client = mqtt.connect(url, { reconnectPeriod: 0, connectTimeout: 3000, ...options });
    client.on('error', () => undefined); // reported through 'close'; never an unhandled 'error' event
    setup?.(client);
    const fail = (error: Error) => {
      client.removeListener('connect', succeed);
      client.end(true);
      reject(error);
    };
    const onError = (error: Error) => fail(error);
    const onClose = () => fail(new Error('connection closed before CONNACK'));
    const succeed = () => {
      client.removeListener('error', onError);
      client.removeListener('close', onClose);
      resolve(client);
    };
    client.once('connect', succeed);
    client.once('error', onError);
    client.once('close', onClose);
  });
}

async function connectWithRetry(
  url: string,
  options: IClientOptions,
  timeoutMs: number,
  setup?: (client: MqttClient) => void,
): Promise<MqttClient> {
  let client: MqttClient | undefined;
  let lastError = '';
  await waitFor(
    async () => {
      try {
        client = await connectOnce(url, options, setup);
        return true;
      } catch (error) {
        lastError = error instanceof Error ? error.message : String(error);
        return false;
      }
    },
    timeoutMs,
    `an MQTT connection to ${url}`,
  ).catch((error: unknown) => {
    throw new Error(`${error instanceof Error ? error.message : String(error)} (last error: ${lastError})`);
  });
  return client!;
}

/**
 * Publishes numbered messages at QoS 1 into the gateway's integrated broker with a bounded window
 * of unacknowledged messages. `acked` holds every sequence number whose PUBACK came back.
 */
export class SeqPublisher {
  readonly client: MqttClient;
  readonly acked: number[] = [];
  /** Sequence numbers the broker refused with an MQTT 5 PUBACK reason code (≥ 0x80), with the code. */
  readonly refused: Array<{ seq: number; reasonCode: number }> = [];
  sent = 0;
  private closed = false;
  private readonly closedWaiters: Array<() => void> = [];

  private constructor(client: MqttClient) {
    this.client = client;
    client.on('close', () => {
      this.closed = true;
      for (const waiter of this.closedWaiters.splice(0)) waiter();
    });
  }

  /** Connects once the gateway's broker listens (the gateway may still be starting). */
  static async connect(url: string, timeoutMs = 20_000, options: IClientOptions = {}): Promise<SeqPublisher> {
    return new SeqPublisher(await connectWithRetry(url, { clean: true, ...options }, timeoutMs));
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /** The highest sequence number acknowledged so far, or -1. */
  get maxAcked(): number {
    return this.acked.reduce((max, seq) => Math.max(max, seq), -1);
  }

  /**
   * Publishes seq from..from+count-1 on topicOf(seq). Resolves when every message is acknowledged,
   * or when the connection closes (the gateway was killed): then `acked` says what was committed.
   */
  publishRange(from: number, count: number, topicOf: (seq: number) => string = localTopicOf, window = 200): Promise<void> {
    const end = from + count;
    let next = from;
    let outstanding = 0;
    return new Promise((resolve) => {
      if (this.closed) return resolve();
      const onClose = () => resolve();
      this.closedWaiters.push(onClose);
      const pump = () => {
        if (this.closed) return;
        while (outstanding < window && next < end) {
          const seq = next++;
          outstanding++;
          this.sent++;
          this.client.publish(topicOf(seq), payloadOf(seq), { qos: 1 }, (error) => {
            outstanding--;
            if (!error) this.acked.push(seq);
            else if (typeof (error as { code?: unknown }).code === 'number')
              this.refused.push({ seq, reasonCode: (error as unknown as { code: number }).code });
            if (next >= end && outstanding === 0) {
              this.closedWaiters.splice(this.closedWaiters.indexOf(onClose), 1);
              resolve();
            } else pump();
          });
        }
      };
      if (count === 0) resolve();
      else pump();
    });
  }

  async close(): Promise<void> {
    if (!this.closed) await this.client.endAsync(true);
  }
}

export interface Arrival {
  topic: string;
  payload: string;
  retain: boolean;
}

export interface RecorderOptions {
  clientId: string;
  filters: string[];
  /** Reconnect by itself (every 100 ms) when the cloud broker goes away; default true. */
  reconnect?: boolean;
  mqtt?: IClientOptions;
  timeoutMs?: number;
}

/** Markers sent by CloudRecorder.sync(), numbered. */
let syncs = 0;

/**
 * A subscriber on the cloud broker with a persistent session (clean: false, fixed client id,
 * QoS 1), so it misses nothing while it or the broker is away, as long as the broker kept the session.
 */
export class CloudRecorder {
  readonly client: MqttClient;
  readonly messages: Arrival[];

  private constructor(client: MqttClient, messages: Arrival[]) {
    this.client = client;
    this.messages = messages;
  }

  static async connect(url: string, options: RecorderOptions): Promise<CloudRecorder> {
    const messages: Arrival[] = [];
    // The listener is there before CONNACK: a persistent session delivers queued messages right after it.
    const client = await connectWithRetry(
      url,
      { ...options.mqtt, clientId: options.clientId, clean: false },
      options.timeoutMs ?? 10_000,
      (candidate) => {
        candidate.on('message', (topic, payload, packet) => messages.push({ topic, payload: payload.toString(), retain: packet.retain }));
      },
    );
    if (options.reconnect !== false) client.options.reconnectPeriod = 100;
    await client.subscribeAsync(options.filters, { qos: 1 });
    return new CloudRecorder(client, messages);
  }

  /**
   * Publishes a marker on `topic` (one of the recorder's filters) from a client of its own and
   * waits until the recorder has it. Mosquitto queues a session's messages in the order it
   * handled them, so afterwards the recorder has everything mosquitto had handled before.
   */
  async sync(url: string, topic: string, timeoutMs = 20_000): Promise<void> {
    const marker = `sync ${++syncs} ${process.pid}`;
    const client = await connectWithRetry(url, {}, timeoutMs);
    try {
      await client.publishAsync(topic, marker, { qos: 1 });
    } finally {
      await client.endAsync(true);
    }
    await waitFor(
      () => this.messages.some((message) => message.payload === marker),
      timeoutMs,
      () => `the recorder to receive the marker on ${topic} (connected: ${this.client.connected})`,
    );
  }

  /** Sequence numbers of the data messages, in arrival order (duplicates included). */
  seqs(): number[] {
    return this.data().map((message) => message.seq);
  }

  data(): Array<Arrival & { seq: number }> {
    return this.messages.flatMap((message) => {
      const seq = seqOf(message.payload);
      return seq === undefined ? [] : [{ ...message, seq }];
    });
  }

  /** How many distinct data messages have arrived. */
  uniqueCount(): number {
    return new Set(this.seqs()).size;
  }

  async close(): Promise<void> {
    this.client.options.reconnectPeriod = 0;
    await this.client.endAsync(true);
  }
}

export interface DeliveryReport {
  total: number;
  unique: Set<number>;
  duplicates: number;
  /** Per cloud topic, the sequence numbers in order of their first arrival. */
  firstArrivals: Map<string, number[]>;
}

export function deliveryReport(arrivals: ReadonlyArray<Arrival & { seq: number }>): DeliveryReport {
  const unique = new Set<number>();
  const firstArrivals = new Map<string, number[]>();
  for (const arrival of arrivals) {
    if (unique.has(arrival.seq)) continue;
    unique.add(arrival.seq);
    const list = firstArrivals.get(arrival.topic) ?? [];
    list.push(arrival.seq);
    firstArrivals.set(arrival.topic, list);
  }
  return { total: arrivals.length, unique, duplicates: arrivals.length - unique.size, firstArrivals };
}

/** Every message arrived on the cloud topic it was sent to. */
export function assertTopics(arrivals: ReadonlyArray<Arrival & { seq: number }>, cloudTopic: (seq: number) => string = cloudTopicOf): void {
  const wrong = arrivals.filter((arrival) => arrival.topic !== cloudTopic(arrival.seq));
  assert.equal(wrong.length, 0, `messages on the wrong cloud topic, e.g. ${JSON.stringify(wrong.slice(0, 3))}`);
}

/** After removing duplicates, each topic's messages arrived in the order they were published. */
export function assertOrderPerTopic(report: DeliveryReport): void {
  for (const [topic, seqs] of report.firstArrivals) {
    const index = seqs.findIndex((seq, position) => position > 0 && seq <= seqs[position - 1]!);
    assert.equal(
      index,
      -1,
      `${topic}: first arrivals out of order at position ${index}: …${seqs.slice(Math.max(0, index - 3), index + 3).join(', ')}…`,
    );
  }
}

/** Every expected sequence number arrived at least once. */
export function assertComplete(report: DeliveryReport, expected: Iterable<number>, what = 'acknowledged messages'): void {
  const missing: number[] = [];
  let count = 0;
  for (const seq of expected) {
    count++;
    if (!report.unique.has(seq)) missing.push(seq);
  }
  assert.equal(missing.length, 0, `${missing.length} of ${count} ${what} never arrived, e.g. ${missing.slice(0, 10).join(', ')}`);
}

/** Exactly these sequence numbers arrived (as a set), nothing else. */
export function assertExactly(report: DeliveryReport, expected: readonly number[]): void {
  assertComplete(report, expected, 'expected messages');
  const expectedSet = new Set(expected);
  const extra = [...report.unique].filter((seq) => !expectedSet.has(seq));
  assert.equal(extra.length, 0, `${extra.length} messages arrived that should not have, e.g. ${extra.slice(0, 10).join(', ')}`);
}

export const range = (from: number, count: number): number[] => Array.from({ length: count }, (_, index) => from + index);

/** Publishes once on the cloud broker (for commands coming down). */
export async function cloudPublish(url: string, topic: string, payload: string, options: IClientOptions = {}): Promise<void> {
  const client = await mqtt.connectAsync(url, { reconnectPeriod: 0, connectTimeout: 5000, ...options });
  try {
    await client.publishAsync(topic, payload, { qos: 1 });
  } finally {
    await client.endAsync();
  }
}

/** A plain subscriber (clean session) that records what arrives: on the cloud or on the integrated broker. */
export async function subscriber(
  url: string,
  filters: string[],
  options: IClientOptions = {},
  timeoutMs = 10_000,
): Promise<{ client: MqttClient; messages: Arrival[] }> {
  const messages: Arrival[] = [];
  const client = await connectWithRetry(url, { clean: true, ...options }, timeoutMs, (candidate) => {
    candidate.on('message', (topic, payload, packet) => messages.push({ topic, payload: payload.toString(), retain: packet.retain }));
  });
  await client.subscribeAsync(filters, { qos: 1 });
  return { client, messages };
}
