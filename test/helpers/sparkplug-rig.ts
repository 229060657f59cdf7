// The Sparkplug B end-to-end rig, shared by test/sparkplug-*.test.ts: mosquitto as the cloud, the
// independent Python Sparkplug host (sparkplug-host.ts), a Modbus device "aux" the test controls
// (TcpTestServer) and the real gateway CLI (device "plc" on its simulated PLC, "aux"; a test may
// replace or add devices), plus the assertions the suites share on what the host saw.
import assert from 'node:assert/strict';
import type { TestContext } from 'node:test';
import { killAllChildren, makeTempDir, Mosquitto, removeDir } from './cloud-broker.js';
import { type ConfigInput, GatewayProcess, type GatewaySetup, type UplinkInput, writeGatewayConfig } from './cloud-gateway.js';
import { TcpTestServer } from './modbus-servers.js';
import { freePort } from './net.js';
import { type HostMessage, type SparkplugHost, startSparkplugHost, type Violation } from './sparkplug-host.js';

export type DeviceInput = NonNullable<ConfigInput['devices']>[number];

export const GROUP = 'plant1';
export const NODE = 'gw';
export const CLIENT_ID = 'spb-gw';
export const WAIT = 15_000;

export interface Rig {
  dir: string;
  cloud: Mosquitto;
  host: SparkplugHost;
  setup: GatewaySetup;
  gateway: GatewayProcess;
  aux: TcpTestServer;
}

export interface RigOptions {
  protocolVersion?: 4 | 5;
  /** The gateway's primaryHostId. */
  primaryHostId?: string;
  /** The Python host acts as this primary host (STATE online at its start). */
  hostId?: string;
  /** Before the gateway starts (e.g. a retained STATE). */
  beforeGateway?: (cloud: Mosquitto) => Promise<void>;
  /** The device "aux" is down at the start: the test starts it (aux.start(aux.port)). */
  auxDown?: boolean;
  /** The gateway's devices instead of "plc" and "aux" (given as `defaults`); the aux server runs anyway. */
  devices?: (context: { aux: TcpTestServer; defaults: DeviceInput[] }) => DeviceInput[];
}

/** mosquitto, the Python host, a Modbus device "aux" the test controls, and the gateway (device "plc" on its simulator, "aux"). */
export async function rig(t: TestContext, options: RigOptions = {}): Promise<Rig> {
  const dir = makeTempDir('plc2mqtt-spbgw-');
  t.after(async () => {
    await killAllChildren();
    await aux.stop();
    removeDir(dir);
  });
  const aux = new TcpTestServer();
  if (options.auxDown) aux.port = await freePort();
  else await aux.start();
  // big: int64 at holding 0–3 = 2^63-1; level: uint16 at holding 4.
  aux.holding.splice(0, 5, 0x7fff, 0xffff, 0xffff, 0xffff, 1234);
  const cloud = await Mosquitto.startNew(dir);
  const host = await startSparkplugHost({
    url: cloud.url,
    group: GROUP,
    node: NODE,
    clientId: 'spb-host',
    ...(options.hostId ? { hostId: options.hostId } : {}),
  });
  await options.beforeGateway?.(cloud);
  const plcPort = await freePort();
  const uplink: UplinkInput = {
    url: cloud.url,
    clientId: CLIENT_ID,
    protocolVersion: options.protocolVersion ?? 5,
    keepalive: '5s',
    reconnect: { initial: 100, max: 400 },
    format: 'sparkplug-b',
    sparkplug: { groupId: GROUP, ...(options.primaryHostId ? { primaryHostId: options.primaryHostId } : {}) },
  };
  const defaults: DeviceInput[] = [
    {
      name: 'plc',
      driver: 'modbus',
      connection: { transport: 'tcp', host: '127.0.0.1', port: plcPort },
      pollInterval: '200ms',
      tags: [
        { name: 'ramp', address: '40002', type: 'uint16' },
        { name: 'temp', address: '40005', type: 'float32', unit: '°C' },
        { name: 'sp', address: '40011', type: 'int16', scale: 0.1, writable: true },
        { name: 'flag', address: '00002', writable: true },
        { name: 'alarm', address: '40007', type: 'uint16' },
      ],
    },
    {
      name: 'aux',
      driver: 'modbus',
      connection: { transport: 'tcp', host: '127.0.0.1', port: aux.port },
      pollInterval: '200ms',
      tags: [
        { name: 'big', address: '40001', type: 'int64' },
        { name: 'level', address: '40005', type: 'uint16', unit: 'mm' },
      ],
    },
  ];
  const setup = await writeGatewayConfig(dir, uplink, {
    simulators: [{ name: 'sim', type: 'modbus-tcp', host: '127.0.0.1', port: plcPort }],
    devices: options.devices ? options.devices({ aux, defaults }) : defaults,
  });
  const gateway = GatewayProcess.start(setup);
  return { dir, cloud, host, setup, gateway, aux };
}

/** Messages of our edge node (the host's own NCMD/DCMD left out). */
export function edgeMessages(host: SparkplugHost): HostMessage[] {
  return host.messages().filter((m) => m.node === NODE && m.type !== 'NCMD' && m.type !== 'DCMD');
}

export function must(host: SparkplugHost): Violation[] {
  return host.violations().filter((v) => v.level === 'must');
}

/** seq: NBIRTH 0, then +1 mod 256 on every message but NDEATH [tck-id-payloads-sequence-num-incrementing]. */
export function assertSeqChain(messages: readonly HostMessage[]): void {
  let previous: number | undefined;
  for (const m of messages) {
    if (m.type === 'NDEATH') continue;
    if (m.type === 'NBIRTH') assert.equal(m.seq, 0, '[tck-id-topics-nbirth-seq-num]');
    else if (previous !== undefined) assert.equal(m.seq, (previous + 1) % 256, `${m.type} ${m.device ?? ''} after seq ${previous}`);
    previous = m.seq ?? undefined;
  }
}

export function bdSeqOf(message: HostMessage): number {
  const value = message.metrics?.find((m) => m.name === 'bdSeq')?.value;
  assert.equal(typeof value, 'number', `bdSeq in ${message.type}`);
  return value as number;
}

/** Waits until each of `devices` has a DBIRTH in the host's view. */
export async function allBorn(host: SparkplugHost, devices: readonly string[]): Promise<void> {
  const born = (device: string) => edgeMessages(host).some((m) => m.type === 'DBIRTH' && m.device === device);
  await host.waitFor(() => devices.every(born), WAIT, `DBIRTH of ${devices.join(', ')}`);
}

/** Waits until both devices have a DBIRTH in the host's view. */
export async function bothBorn(host: SparkplugHost): Promise<void> {
  await allBorn(host, ['plc', 'aux']);
}

/** Both devices born (DBIRTH right after the NBIRTH, also one not connected yet), nothing reported so far; returns the violation count. */
export async function settled(host: SparkplugHost): Promise<number> {
  await bothBorn(host);
  assert.deepEqual(host.violations(), []);
  return host.violations().length;
}

/** No violation reported since `baseline`. */
export function assertClean(host: SparkplugHost, baseline: number): void {
  assert.deepEqual(host.violations().slice(baseline), []);
  assert.deepEqual(host.errors(), []);
}

export const isData = (device: string) => (m: HostMessage) => m.type === 'DDATA' && m.device === device;
export const count = (host: SparkplugHost, predicate: (m: HostMessage) => boolean) => edgeMessages(host).filter(predicate).length;

/** Waits for `n` more messages matching `predicate` than there are now. */
export async function more(host: SparkplugHost, predicate: (m: HostMessage) => boolean, n: number, what: string): Promise<void> {
  const base = count(host, predicate);
  await host.waitFor(() => count(host, predicate) >= base + n, WAIT, what);
}

/** The values of one metric in DDATA, by name (the host resolves aliases), live and historical. */
export function dataValues(messages: readonly HostMessage[], device: string, name: string) {
  return messages
    .filter(isData(device))
    .flatMap((m) => (m.metrics ?? []).filter((x) => x.name === name).map((x) => ({ ...x, seq: m.seq })));
}
