// The integrated broker under test, in-process: started from a config parsed by the real schema,
// on port-0 listeners, with its pino output captured; plus the clients that talk to it — mqtt.js,
// a raw socket speaking MQTT by hand (mqtt-packet), Debian's mosquitto clients and the CLI.
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { connect as connectTcp, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';
import { generate, parser, type IConnectPacket, type IPublishPacket, type Packet } from 'mqtt-packet';
import { pino, type LevelWithSilent, type Logger } from 'pino';
import type { z } from 'zod';
import { IntegratedBroker, type BrokerHandlers, type ListenerAddress } from '../../src/broker/broker.js';
import { brokerSection } from '../../src/config/schema.js';
import { waitFor } from './net.js';

export const ROOT = fileURLToPath(new URL('../../../', import.meta.url));
export const CLI = join(ROOT, 'dist/src/cli.js');

export type BrokerInput = z.input<typeof brokerSection>;

export interface LogRecord {
  level: number;
  msg: string;
  [field: string]: unknown;
}

/** A pino logger whose JSON lines are kept in memory (nothing reaches the terminal). */
export class CapturedLog {
  readonly lines: string[] = [];
  readonly log: Logger;

  constructor(level: LevelWithSilent = 'debug') {
    this.log = pino({ level }, { write: (line: string) => void this.lines.push(line) });
  }

  records(): LogRecord[] {
    return this.lines.map((line) => JSON.parse(line) as LogRecord);
  }

  /** Records with this message (exact match). */
  withMessage(message: string): LogRecord[] {
    return this.records().filter((record) => record.msg === message);
  }

  text(): string {
    return this.lines.join('');
  }
}

export function tempDir(prefix: string): string {
  return mkdtempSync(join(tmpdir(), prefix));
}

export function removeDir(dir: string): void {
  rmSync(dir, { recursive: true, force: true });
}

/** One IntegratedBroker started from `input` (through brokerSection.parse), with its own data folder. */
export class BrokerUnderTest {
  readonly broker: IntegratedBroker;
  readonly logs: CapturedLog;
  readonly dataDir: string;
  private readonly ownsDir: boolean;
  private closed = false;

  private constructor(broker: IntegratedBroker, logs: CapturedLog, dataDir: string, ownsDir: boolean) {
    this.broker = broker;
    this.logs = logs;
    this.dataDir = dataDir;
    this.ownsDir = ownsDir;
  }

  static async start(
    input: BrokerInput,
    options: { dataDir?: string; logs?: CapturedLog; handlers?: BrokerHandlers } = {},
  ): Promise<BrokerUnderTest> {
    const config = brokerSection.parse(input);
    const dataDir = options.dataDir ?? tempDir('plc2mqtt-broker-');
    const logs = options.logs ?? new CapturedLog();
    try {
      return new BrokerUnderTest(
        await IntegratedBroker.start(config, logs.log, dataDir, options.handlers),
        logs,
        dataDir,
        options.dataDir === undefined,
      );
    } catch (error) {
      if (options.dataDir === undefined) removeDir(dataDir);
      throw error;
    }
  }

  address(type: ListenerAddress['type'] = 'tcp'): ListenerAddress {
    const found = this.broker.addresses().find((address) => address.type === type);
    if (!found) throw new Error(`the broker has no ${type} listener`);
    return found;
  }

  port(type: ListenerAddress['type'] = 'tcp'): number {
    return this.address(type).port;
  }

  /** mqtt://, mqtts://, ws:// or wss:// URL of a listener, always on 127.0.0.1. */
  url(type: ListenerAddress['type'] = 'tcp'): string {
    return this.address(type).url;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.broker.close();
    if (this.ownsDir) removeDir(this.dataDir);
  }
}

/** mqtt.js defaults for tests: no reconnect, bounded connect. */
export const CLIENT_DEFAULTS: IClientOptions = { reconnectPeriod: 0, connectTimeout: 5000 };

/** ok, or refused: `code` is the CONNACK return code, `errorCode` a socket/TLS error code such as ERR_SSL_…. */
export type ConnectOutcome =
  | { ok: true; client: MqttClient }
  | { ok: false; code: number | undefined; errorCode: string | undefined; message: string };

/** Connects with mqtt.js and reports the outcome (refusal code from the CONNACK, or the error) instead of throwing. */
export async function tryConnect(url: string, options: IClientOptions = {}): Promise<ConnectOutcome> {
  const client = mqtt.connect(url, { ...CLIENT_DEFAULTS, ...options });
  return new Promise((resolve) => {
    const onConnect = () => done({ ok: true, client });
    const onError = (error: Error & { code?: unknown }) =>
      done({
        ok: false,
        code: typeof error.code === 'number' ? error.code : undefined,
        errorCode: typeof error.code === 'string' ? error.code : undefined,
        message: error.message,
      });
    // Closed without a CONNACK and without an error.
    const onClose = () => done({ ok: false, code: undefined, errorCode: undefined, message: 'connection closed before CONNACK' });
    const done = (outcome: ConnectOutcome) => {
      client.removeListener('connect', onConnect);
      client.removeListener('error', onError);
      client.removeListener('close', onClose);
      // Later errors (e.g. the broker cutting the client in a test) must not be unhandled.
      client.on('error', () => undefined);
      if (!outcome.ok) client.end(true);
      resolve(outcome);
    };
    client.once('connect', onConnect);
    client.once('error', onError);
    client.once('close', onClose);
  });
}

/** Like tryConnect, but the connection must succeed. */
export async function connectClient(url: string, options: IClientOptions = {}): Promise<MqttClient> {
  const outcome = await tryConnect(url, options);
  if (!outcome.ok) throw new Error(`connecting to ${url} failed: ${outcome.message} (code ${String(outcome.code)})`);
  return outcome.client;
}

/** Messages an mqtt.js client receives, kept in order. */
export interface Message {
  topic: string;
  payload: string;
  qos: number;
  retain: boolean;
}

export function recordMessages(client: MqttClient): Message[] {
  const messages: Message[] = [];
  client.on('message', (topic, payload, packet) =>
    messages.push({ topic, payload: payload.toString(), qos: packet.qos, retain: packet.retain }),
  );
  return messages;
}

/** Resolves once the client's connection is gone (true) or after timeoutMs with the connection still up (false). */
export function closedWithin(client: MqttClient, timeoutMs: number): Promise<boolean> {
  if (!client.connected) return Promise.resolve(true);
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(false), timeoutMs);
    client.once('close', () => {
      clearTimeout(timer);
      resolve(true);
    });
  });
}

/**
 * Subscribes and returns the SUBACK's return codes, one per filter in order (0x80 = refused).
 * mqtt.js rejects subscribeAsync when any code is 0x80; this reads the SUBACK itself.
 */
export function subscribeGranted(client: MqttClient, filters: string[], qos: 0 | 1 = 1, timeoutMs = 3000): Promise<number[]> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no SUBACK for ${filters.join(', ')} within ${timeoutMs} ms`)), timeoutMs);
    client.subscribe(filters, { qos }, (error, _granted, packet) => {
      clearTimeout(timer);
      if (packet?.granted)
        resolve(packet.granted.map((code) => (typeof code === 'number' ? code : Number((code as { qos?: unknown }).qos))));
      else reject(error ?? new Error('SUBACK without return codes'));
    });
  });
}

export async function endAll(clients: Array<MqttClient | undefined>): Promise<void> {
  await Promise.all(clients.map((client) => client?.endAsync(true).catch(() => undefined)));
}

/** Round trip through the broker: `subscriber` (already subscribed to `topic`) receives what `publisher` sends. */
export async function roundTrip(
  publisher: MqttClient,
  subscriber: Message[],
  topic: string,
  payload: string,
  timeoutMs = 3000,
): Promise<void> {
  await publisher.publishAsync(topic, payload, { qos: 1 });
  await waitFor(
    () => subscriber.some((message) => message.topic === topic && message.payload === payload),
    timeoutMs,
    `"${payload}" on ${topic}`,
  );
}

/**
 * A client speaking MQTT 3.1.1 (or 5) by hand over a plain socket: sends exactly the packets a
 * test writes (a subscriber that never acknowledges, a header announcing a huge packet) and
 * records every packet the broker sends back.
 */
export class RawClient {
  readonly socket: Socket;
  readonly packets: Packet[] = [];
  private closedAt: number | undefined;
  readonly closed: Promise<void>;
  private readonly protocolVersion: 4 | 5;

  private constructor(socket: Socket, protocolVersion: 4 | 5) {
    this.socket = socket;
    this.protocolVersion = protocolVersion;
    const packetParser = parser({ protocolVersion });
    packetParser.on('packet', (packet: Packet) => this.packets.push(packet));
    packetParser.on('error', () => socket.destroy());
    socket.on('data', (chunk: Buffer) => packetParser.parse(chunk));
    socket.on('error', () => undefined);
    this.closed = new Promise((resolve) =>
      socket.once('close', () => {
        this.closedAt = Date.now();
        resolve();
      }),
    );
  }

  static open(port: number, protocolVersion: 4 | 5 = 4): Promise<RawClient> {
    return new Promise((resolve, reject) => {
      const socket = connectTcp(port, '127.0.0.1');
      socket.once('connect', () => resolve(new RawClient(socket, protocolVersion)));
      socket.once('error', reject);
    });
  }

  /** Opens a socket and sends CONNECT (clean session, protocol level 4). Does not wait for the CONNACK. */
  static async connect(port: number, connect: Partial<IConnectPacket> = {}): Promise<RawClient> {
    const client = await RawClient.open(port);
    client.send({
      cmd: 'connect',
      protocolId: 'MQTT',
      protocolVersion: 4,
      clean: true,
      keepalive: 60,
      clientId: `raw-${Math.random().toString(36).slice(2, 10)}`,
      ...connect,
    });
    return client;
  }

  get isClosed(): boolean {
    return this.closedAt !== undefined;
  }

  send(packet: Packet): void {
    this.socket.write(generate(packet, { protocolVersion: this.protocolVersion }));
  }

  write(bytes: Buffer): void {
    this.socket.write(bytes);
  }

  of<C extends Packet['cmd']>(cmd: C): Array<Extract<Packet, { cmd: C }>> {
    return this.packets.filter((packet): packet is Extract<Packet, { cmd: C }> => packet.cmd === cmd);
  }

  /** Waits for the first packet of this kind (bounded). */
  async next<C extends Packet['cmd']>(cmd: C, timeoutMs = 3000): Promise<Extract<Packet, { cmd: C }>> {
    await waitFor(() => this.of(cmd).length > 0 || this.isClosed, timeoutMs, `a ${cmd} packet`);
    const found = this.of(cmd)[0];
    if (!found) throw new Error(`the connection closed without a ${cmd} packet`);
    return found;
  }

  /** Resolves true when the broker closed the connection within timeoutMs. */
  closedWithin(timeoutMs: number): Promise<boolean> {
    if (this.isClosed) return Promise.resolve(true);
    return new Promise((resolve) => {
      const timer = setTimeout(() => resolve(false), timeoutMs);
      void this.closed.then(() => {
        clearTimeout(timer);
        resolve(true);
      });
    });
  }

  destroy(): void {
    this.socket.destroy();
  }
}

export interface ProcessResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Runs a program to its end (stdin from `input`), killed with SIGKILL after timeoutMs. */
export function run(command: string, args: string[], options: { input?: string; timeoutMs?: number } = {}): Promise<ProcessResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), options.timeoutMs ?? 15_000);
    child.once('error', (error) => {
      clearTimeout(timer);
      reject(error);
    });
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
    child.stdin.on('error', () => undefined);
    child.stdin.end(options.input ?? '');
  });
}

/** `plc2mqtt passwd` with the password on stdin: the hash it prints. */
export async function passwdHash(password: string): Promise<string> {
  const result = await run(process.execPath, [CLI, 'passwd'], { input: `${password}\n`, timeoutMs: 15_000 });
  if (result.code !== 0) throw new Error(`plc2mqtt passwd exited ${String(result.code)}: ${result.stderr}`);
  return result.stdout.trim();
}

export const MOSQUITTO_PUB = '/usr/bin/mosquitto_pub';
export const MOSQUITTO_SUB = '/usr/bin/mosquitto_sub';

/** A raw CONNECT (anonymous, clean, keep-alive 60 s, a random client id) with `connect` on top. */
export function connectPacket(protocolVersion: 4 | 5, connect: Partial<IConnectPacket> = {}): IConnectPacket {
  const clientId = `raw${protocolVersion}-${Math.random().toString(36).slice(2, 10)}`;
  return { cmd: 'connect', protocolId: 'MQTT', protocolVersion, clean: true, keepalive: 60, clientId, ...connect };
}

/** A raw PUBLISH packet (not retained, not a duplicate). */
export function publishPacket(
  topic: string,
  payload: string | Buffer,
  qos: 0 | 1 | 2,
  messageId?: number,
  properties?: IPublishPacket['properties'],
): IPublishPacket {
  return {
    cmd: 'publish',
    topic,
    payload: typeof payload === 'string' ? Buffer.from(payload) : payload,
    qos,
    retain: false,
    dup: false,
    ...(messageId !== undefined ? { messageId } : {}),
    ...(properties ? { properties } : {}),
  };
}

/** A raw MQTT 5 connection that got CONNACK 0 for `connect` (with its packet's defaults). */
export async function openRaw5(port: number, connect: IConnectPacket): Promise<RawClient> {
  const raw = await RawClient.open(port, 5);
  raw.send(connect);
  const connack = await raw.next('connack');
  if (connack.reasonCode !== 0) throw new Error(`CONNACK ${JSON.stringify(connack)}`);
  return raw;
}
