// The gateway of the uplink tests: the real CLI (`node dist/src/cli.js run -c <config>`) as a child
// process with its integrated broker on an ephemeral port, its JSON log lines parsed for assertions.
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { z } from 'zod';
import type { configSchema } from '../../src/config/schema.js';
import type { OutboxStats } from '../../src/cloud/outbox.js';
import type { UplinkStats } from '../../src/cloud/uplink.js';
import { track, type Mosquitto } from './cloud-broker.js';
import type { CloudRecorder } from './cloud-clients.js';
import { freePort, waitFor } from './net.js';

const ROOT = fileURLToPath(new URL('../../../', import.meta.url));
export const CLI = join(ROOT, 'dist/src/cli.js');

/** The config file as a user writes it (before defaults and transforms). */
export type ConfigInput = z.input<typeof configSchema>;
export type UplinkInput = NonNullable<ConfigInput['uplink']>;

/** pino levels */
export const LEVEL = { info: 30, warn: 40, error: 50, fatal: 60 } as const;

export interface LogLine {
  level: number;
  msg: string;
  [field: string]: unknown;
}

/** The outbox and uplink stats the gateway logs with "gateway stopped" (JSON, so the same shapes). */
type OutboxStatsLine = OutboxStats;
type UplinkStatsLine = UplinkStats;

export interface GatewaySetup {
  dir: string;
  configFile: string;
  dataDir: string;
  outboxFile: string;
  brokerPort: number;
  /** The integrated broker, where local MQTT clients publish. */
  brokerUrl: string;
  config: ConfigInput;
}

/** Local topic "line/<x>" goes up as "up/<x>"; nothing else is forwarded. */
export const FORWARD_LINE: UplinkInput['forward'] = [{ topic: '#', localPrefix: 'line/', remotePrefix: 'up/', qos: 1 }];

/** An uplink to `url` that reconnects quickly, so a test does not wait for back-off. */
export function testUplink(url: string, overrides: Partial<UplinkInput> = {}): UplinkInput {
  return {
    url,
    clientId: 'plc2mqtt-test-gateway',
    keepalive: '5s',
    reconnect: { initial: 100, max: 400 },
    forward: FORWARD_LINE,
    inFlight: 100,
    ...overrides,
  };
}

/** Writes `<dir>/gateway.json` for a gateway named "gw" with its data in `<dir>/data`. */
export async function writeGatewayConfig(
  dir: string,
  uplink: UplinkInput | undefined,
  extra: Partial<ConfigInput> = {},
): Promise<GatewaySetup> {
  const brokerPort = await freePort();
  const dataDir = join(dir, 'data');
  const config: ConfigInput = {
    gateway: { name: 'gw', dataDir, logLevel: 'info', shutdownTimeout: '10s' },
    broker: { listeners: [{ type: 'tcp', host: '127.0.0.1', port: brokerPort }], allowAnonymous: true },
    // An ephemeral operations port: gateways of parallel tests must not meet on 9180.
    http: { port: 0 },
    ...(uplink ? { uplink } : {}),
    ...extra,
  };
  const configFile = join(dir, 'gateway.json');
  writeFileSync(configFile, JSON.stringify(config, null, 2));
  return {
    dir,
    configFile,
    dataDir,
    outboxFile: join(dataDir, 'outbox.db'),
    brokerPort,
    brokerUrl: `mqtt://127.0.0.1:${brokerPort}`,
    config,
  };
}

/** Rewrites the config file of a setup (same ports, same dataDir) with another uplink section. */
export function rewriteUplink(setup: GatewaySetup, uplink: UplinkInput): void {
  setup.config = { ...setup.config, uplink };
  writeFileSync(setup.configFile, JSON.stringify(setup.config, null, 2));
}

/** Bytes of the outbox database and its WAL, as they are on disk now. */
export function outboxBytesOnDisk(setup: GatewaySetup): number {
  let total = 0;
  for (const suffix of ['', '-wal']) {
    const file = setup.outboxFile + suffix;
    if (existsSync(file)) total += statSync(file).size;
  }
  return total;
}

/** The pino log lines (one JSON object per line) in a gateway's output. */
export function logLines(text: string): LogLine[] {
  const lines: LogLine[] = [];
  for (const line of text.split('\n')) {
    if (!line.startsWith('{')) continue;
    try {
      const parsed = JSON.parse(line) as unknown;
      if (typeof parsed === 'object' && parsed !== null && typeof (parsed as LogLine).msg === 'string') lines.push(parsed as LogLine);
    } catch {
      // a line cut in the middle by a kill
    }
  }
  return lines;
}

export class GatewayProcess {
  readonly child: ChildProcess;
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  private text = '';

  private constructor(configFile: string) {
    this.child = spawn(process.execPath, [CLI, 'run', '-c', configFile], { stdio: ['ignore', 'pipe', 'pipe'] });
    track(this.child);
    this.child.stdout!.on('data', (chunk: Buffer) => (this.text += chunk.toString()));
    this.child.stderr!.on('data', (chunk: Buffer) => (this.text += chunk.toString()));
    this.exited = new Promise((resolve) => this.child.once('exit', (code, signal) => resolve({ code, signal })));
  }

  static start(setup: GatewaySetup): GatewayProcess {
    return new GatewayProcess(setup.configFile);
  }

  get running(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  output(): string {
    return this.text;
  }

  /** The JSON log lines so far (pino, one object per line). */
  logs(): LogLine[] {
    return logLines(this.text);
  }

  findLogs(match: string | RegExp): LogLine[] {
    return this.logs().filter((line) =>
      typeof match === 'string' ? line.msg === match || line.msg.startsWith(match) : match.test(line.msg),
    );
  }

  async waitForLog(match: string | RegExp, timeoutMs: number): Promise<LogLine> {
    let found: LogLine | undefined;
    await waitFor(
      () => {
        found = this.findLogs(match)[0];
        if (!found && !this.running) throw new Error(`the gateway exited before logging ${String(match)}:\n${this.text}`);
        return found !== undefined;
      },
      timeoutMs,
      `the gateway to log ${String(match)}`,
    );
    return found!;
  }

  /** The uplink's figures from the operations endpoint (/api/status) of the running gateway. */
  async uplinkStatus(): Promise<UplinkStatsLine> {
    const url = (await this.waitForLog('operations endpoint listening', 10_000)).url as string;
    const status = (await (await fetch(`${url}/api/status?tags=0`)).json()) as { uplink: UplinkStatsLine };
    return status.uplink;
  }

  /** The outbox's figures from the operations endpoint (/api/status) of the running gateway. */
  async outboxStatus(): Promise<OutboxStatsLine & { oldestAgeSeconds: number }> {
    const url = (await this.waitForLog('operations endpoint listening', 10_000)).url as string;
    const status = (await (await fetch(`${url}/api/status?tags=0`)).json()) as { outbox: OutboxStatsLine & { oldestAgeSeconds: number } };
    return status.outbox;
  }

  /** SIGSTOP: the gateway stops mid-stream, its sockets stay open. `thaw()` lets it go on. */
  freeze(): void {
    if (this.running) this.child.kill('SIGSTOP');
  }

  thaw(): void {
    if (this.running) this.child.kill('SIGCONT');
  }

  /** Sends a signal and waits for the process to end. */
  async kill(signal: NodeJS.Signals = 'SIGKILL'): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    if (this.running) this.child.kill(signal);
    return this.exited;
  }

  /** Graceful stop (SIGTERM); returns the "gateway stopped" log line with the outbox and uplink stats. */
  async stop(): Promise<{ code: number | null; stopped: LogLine & { outbox: OutboxStatsLine; uplink: UplinkStatsLine } }> {
    const { code } = await this.kill('SIGTERM');
    const stopped = this.findLogs('gateway stopped')[0];
    if (!stopped) throw new Error(`no "gateway stopped" line (exit code ${String(code)}):\n${this.text}`);
    return { code, stopped: stopped as LogLine & { outbox: OutboxStatsLine; uplink: UplinkStatsLine } };
  }
}

/**
 * Freezes the gateway mid-stream (SIGSTOP) and waits until mosquitto has read everything the gateway
 * sent and the recorder has everything mosquitto acknowledged. Mosquitto acknowledges a PUBLISH
 * before it has written it to a subscriber that is behind, and a SIGKILL loses what it still holds,
 * which no gateway could resend; after this, killing the cloud loses only what the gateway must
 * resend. The gateway stays frozen until `gateway.thaw()`.
 */
export async function freezeGatewayAndSettle(
  gateway: GatewayProcess,
  cloud: Mosquitto,
  recorder: CloudRecorder,
  syncTopic: string,
): Promise<void> {
  gateway.freeze();
  await waitFor(() => cloud.inputDrained(), 20_000, 'mosquitto to read everything sent to it');
  await recorder.sync(cloud.url, syncTopic);
}
