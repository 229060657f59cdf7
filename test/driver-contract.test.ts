// The driver contract (test/helpers/driver-contract.ts) against every driver and transport, each
// with a real peer: Modbus TCP and Modbus RTU on a serial line against pymodbus (an independent
// implementation), Modbus RTU over TCP against a raw-socket device, OPC UA against a node-opcua
// server, the serial-line driver against a Python ASCII instrument on a pty and behind TCP. Silence and garbled replies come from a cable with a hand in the middle
// (test/helpers/links.ts) or from the raw device itself.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ModbusTag } from '../drivers/modbus/config.js';
import { createDriver as createModbusDriver } from '../drivers/modbus/index.js';
import type { OpcUaTag } from '../drivers/opcua/config.js';
import { createDriver as createOpcUaDriver } from '../drivers/opcua/index.js';
import { serialDevice, type SerialTag } from '../drivers/serial/config.js';
import { createDriver as createSerialDriver } from '../drivers/serial/index.js';
import type { TagReading } from '../src/pipeline/driver.js';
import { driverContract, type ContractPeer } from './helpers/driver-contract.js';
import { type Link, startSerialLink, startTcpLink } from './helpers/links.js';
import { startInstrument } from './helpers/serial-instrument.js';
import { device, freePort, RawModbusServer, startPymodbus, testContext } from './helpers/modbus-servers.js';
import { parseDevice, testLog } from './helpers/opcua-runner.js';
import { startTestServer } from './helpers/opcua-server.js';

type RawTag = Record<string, unknown>;

/** A Modbus driver for `connection`, its config parsed through the real schema. */
function modbusDriver(connection: RawTag, tags: RawTag[]) {
  // backoffAfterTimeouts: the contract reads a silent device once or twice; skipping it is a feature of its own.
  return createModbusDriver(device({ connection: { retries: 0, backoffAfterTimeouts: 10, ...connection }, tags }), testContext());
}

const modbusTag = (raw: RawTag): ModbusTag => device({ connection: { transport: 'tcp', host: 'x' }, tags: [raw] }).tags[0]!;

const values = (readings: readonly TagReading[]): Record<string, unknown> =>
  Object.fromEntries(readings.map((reading) => [reading.tag, reading.value]));

/** The register map of test/helpers/modbus-pymodbus-server.py. */
const PYMODBUS_TAGS: RawTag[] = [
  { name: 'u16', address: '40001' },
  { name: 'f32', address: 1, area: 'holding', type: 'float32' },
  { name: 'text', address: 9, area: 'holding', type: 'string', length: 4 },
  { name: 'coils', address: 0, area: 'coil', count: 8 },
  { name: 'in', address: '30001', type: 'float32' },
];
// Holding registers 48..51: the map ends at 49.
const PYMODBUS_BEYOND: RawTag = { name: 'beyond', address: 48, area: 'holding', type: 'float64' };
const PYMODBUS_WRITABLE: RawTag = { name: 'w', address: 20, area: 'holding', type: 'int32', writable: true };
const PYMODBUS_ALL = [...PYMODBUS_TAGS, PYMODBUS_BEYOND, PYMODBUS_WRITABLE];

const pymodbusPeer = {
  good: PYMODBUS_TAGS.map(modbusTag),
  checkGood: (readings: readonly TagReading[]) =>
    assert.deepEqual(values(readings), {
      u16: 0x1234,
      f32: 1.5,
      text: 'pymodbus',
      coils: [true, false, true, true, false, false, false, true],
      in: -2.25,
    }),
  unknown: { tag: modbusTag(PYMODBUS_BEYOND), code: /^exception-2$/ },
  write: { tag: modbusTag(PYMODBUS_WRITABLE), value: -42 },
};

/** MBAP replies with a protocol id other than 0: not Modbus, the driver must not take them. */
const notMbap = (chunk: Buffer): Buffer => {
  const copy = Buffer.from(chunk);
  if (copy.length > 2) copy[2] = 0xff;
  return copy;
};

/** The last byte of every chunk flipped: a CRC that does not match, as after noise on the line. */
const noise = (chunk: Buffer): Buffer => {
  const copy = Buffer.from(chunk);
  copy[copy.length - 1] = copy[copy.length - 1]! ^ 0xff;
  return copy;
};

/** Every byte after the 24 of an OPC UA message's headers (type, size, channel, token, sequence) changed. */
const garbledBody = (chunk: Buffer): Buffer => {
  const copy = Buffer.from(chunk);
  for (let i = 24; i < copy.length; i++) copy[i] = copy[i]! ^ 0x5a;
  return copy;
};

driverContract<ModbusTag>({
  name: 'modbus tcp vs pymodbus',
  async start(): Promise<ContractPeer<ModbusTag>> {
    const server = await startPymodbus('tcp');
    const link = await startTcpLink(server.port);
    const nothing = await freePort();
    return {
      ...pymodbusPeer,
      driver: ({ timeout }) => modbusDriver({ transport: 'tcp', host: '127.0.0.1', port: link.port, timeout }, PYMODBUS_ALL),
      silence: () => link.cut(),
      resume: () => link.restore(),
      badReplies: { start: () => link.corruptReplies(notMbap), stop: () => link.corruptReplies(undefined), code: /^bad-reply$/ },
      nowhere: () => ({
        driver: modbusDriver({ transport: 'tcp', host: '127.0.0.1', port: nothing }, PYMODBUS_ALL),
        names: `127.0.0.1:${nothing}`,
      }),
      stop: async () => {
        await link.stop();
        await server.stop();
      },
    };
  },
});

driverContract<ModbusTag>({
  name: 'modbus rtu on a serial line (socat pty) vs pymodbus',
  async start(): Promise<ContractPeer<ModbusTag>> {
    const dir = mkdtempSync(join(tmpdir(), 'plc2mqtt-contract-rtu-'));
    const link = await startSerialLink(dir);
    const server = await startPymodbus('rtu', { serialPath: link.devicePath, units: [1] });
    const serial = { transport: 'rtu', baudRate: 9600, unitId: 1 };
    return {
      ...pymodbusPeer,
      driver: ({ timeout }) => modbusDriver({ ...serial, path: link.path, timeout }, PYMODBUS_ALL),
      silence: () => link.cut(),
      resume: () => link.restore(),
      badReplies: { start: () => link.corruptReplies(noise), stop: () => link.corruptReplies(undefined), code: /^bad-reply$/ },
      nowhere: () => ({
        driver: modbusDriver({ ...serial, path: join(dir, 'no-such-tty') }, PYMODBUS_ALL),
        names: join(dir, 'no-such-tty'),
      }),
      stop: async () => {
        await server.stop();
        await link.stop();
        rmSync(dir, { recursive: true, force: true });
      },
    };
  },
});

/** The raw device's map: register a holds 1000 + a, addresses from 100 on do not exist. */
const RAW_TAGS: RawTag[] = [
  { name: 'r0', address: '40001' },
  { name: 'r1', address: '40002' },
  { name: 'in5', address: '30006' },
  { name: 'c3', address: '00004' },
];
const RAW_BEYOND: RawTag = { name: 'beyond', address: '40101' };
const RAW_WRITABLE: RawTag = { name: 'sp', address: '40011', writable: true };
const RAW_ALL = [...RAW_TAGS, RAW_BEYOND, RAW_WRITABLE];

driverContract<ModbusTag>({
  name: 'modbus rtu over tcp vs a raw-socket device',
  async start(): Promise<ContractPeer<ModbusTag>> {
    const raw = new RawModbusServer('rtu');
    raw.illegalFrom = 100;
    await raw.start();
    const nothing = await freePort();
    const connection = { transport: 'rtu-over-tcp', host: '127.0.0.1' };
    return {
      good: RAW_TAGS.map(modbusTag),
      checkGood: (readings) => assert.deepEqual(values(readings), { r0: 1000, r1: 1001, in5: 1005, c3: true }),
      unknown: { tag: modbusTag(RAW_BEYOND), code: /^exception-2$/ },
      write: { tag: modbusTag(RAW_WRITABLE), value: 4242 },
      driver: ({ timeout }) => modbusDriver({ ...connection, port: raw.port, timeout }, RAW_ALL),
      silence: () => {
        raw.misbehave = () => null;
      },
      resume: () => {
        raw.misbehave = () => undefined;
      },
      // A reply from another unit id.
      badReplies: {
        start: () => {
          raw.misbehave = (_, proper) => Buffer.concat([Buffer.from([proper[0]! + 1]), proper.subarray(1)]);
        },
        stop: () => {
          raw.misbehave = () => undefined;
        },
        code: /^bad-reply$/,
      },
      nowhere: () => ({ driver: modbusDriver({ ...connection, port: nothing }, RAW_ALL), names: `127.0.0.1:${nothing}` }),
      stop: () => raw.stop(),
    };
  },
});

driverContract<OpcUaTag>({
  name: 'opcua vs a node-opcua server',
  async start(): Promise<ContractPeer<OpcUaTag>> {
    const dir = mkdtempSync(join(tmpdir(), 'plc2mqtt-contract-opcua-'));
    const server = await startTestServer({ pkiDir: join(dir, 'server') });
    const link = await startTcpLink(server.port);
    const nothing = await freePort();
    const tags: RawTag[] = [
      { name: 'double', nodeId: 'ns=1;s=Line1.Double' },
      { name: 'int32', nodeId: 'ns=1;s=Line1.Int32' },
      { name: 'text', nodeId: 'ns=1;s=Line1.String' },
      { name: 'unknown', nodeId: 'ns=1;s=Line1.NoSuchNode' },
      { name: 'setpoint', nodeId: 'ns=1;s=Line1.W.Double', writable: true },
    ];
    const parse = (endpointUrl: string, timeout: number) =>
      parseDevice({
        mode: 'polling',
        pollInterval: '1s',
        connection: { endpointUrl, connectTimeout: '5s', requestTimeout: timeout, keepAliveInterval: '30s', sessionTimeout: '60s' },
        tags,
      });
    const byName = (name: string): OpcUaTag => parse('opc.tcp://x:1', 1000).tags.find((tag) => tag.name === name)!;
    const driver = (endpointUrl: string, timeout: number) =>
      createOpcUaDriver(parse(endpointUrl, timeout), { log: testLog, dataDir: join(dir, 'gateway') });
    return {
      good: ['double', 'int32', 'text'].map(byName),
      unknown: { tag: byName('unknown'), code: /^BadNodeIdUnknown$/ },
      write: { tag: byName('setpoint'), value: 2.5 },
      driver: ({ timeout }) => driver(`opc.tcp://127.0.0.1:${link.port}`, Math.max(timeout, 1000)),
      silence: () => link.cut(),
      resume: () => link.restore(),
      // OPC UA has no bad-reply code: a garbled message breaks the secure channel, which the
      // driver drops and reports as a lost connection (the core then builds a new one).
      badReplies: { start: () => link.corruptReplies(garbledBody), stop: () => link.corruptReplies(undefined), code: /^connection-lost$/ },
      nowhere: () => ({ driver: driver(`opc.tcp://127.0.0.1:${nothing}`, 1000), names: `127.0.0.1:${nothing}` }),
      stop: async () => {
        await link.stop();
        await server.stop();
        rmSync(dir, { recursive: true, force: true });
      },
    };
  },
});

/** An ASCII instrument's tags (test/helpers/serial-instrument.py, kind ascii, unit 01, xor checksum). */
const ASCII_DEVICE = (connection: RawTag, timeout: number) =>
  serialDevice.parse({
    name: 'unit01',
    driver: 'serial',
    // backoffAfterTimeouts: the contract reads a silent device once or twice; skipping it is a feature of its own.
    connection: { ...connection, timeout, backoffAfterTimeouts: 10 },
    framing: { type: 'stx-etx', checksum: { type: 'xor' } },
    unitId: '01',
    request: '{unitId}RD',
    pollGroups: { setpoint: { interval: '1s', request: '{unitId}GS' } },
    tags: [
      { name: 'temperature', regex: 'T=(?<value>[+-]\\d+\\.\\d+)' },
      { name: 'pressure', regex: 'P=(?<value>\\d+\\.\\d+)' },
      { name: 'status', regex: 'ST=(\\w+)', type: 'string' },
      // The instrument has no humidity: its reply never carries an H= field.
      { name: 'humidity', regex: 'H=(?<value>\\d+)' },
      { name: 'sp', group: 'setpoint', regex: 'SP=(?<value>\\d+\\.\\d)', writable: true, command: '{unitId}SP={value:.1f}', ack: 'SP OK$' },
    ],
  });

function serialPeer(
  connection: RawTag,
  link: Link,
  nowhere: () => { driver: ReturnType<typeof createSerialDriver>; names: string },
  stop: () => Promise<void>,
): ContractPeer<SerialTag> {
  const tags = ASCII_DEVICE(connection, 1000).tags;
  const byName = (name: string): SerialTag => tags.find((tag) => tag.name === name)!;
  return {
    driver: ({ timeout }) => createSerialDriver(ASCII_DEVICE(connection, timeout), testContext()),
    good: ['temperature', 'pressure', 'status'].map(byName),
    checkGood: (readings) => assert.deepEqual(values(readings), { temperature: 23.45, pressure: 1013.2, status: 'OK' }),
    unknown: { tag: byName('humidity'), code: /^bad-reply$/ },
    write: { tag: byName('sp'), value: 42.5 },
    silence: () => link.cut(),
    resume: () => link.restore(),
    badReplies: { start: () => link.corruptReplies(noise), stop: () => link.corruptReplies(undefined), code: /^bad-reply$/ },
    nowhere,
    stop,
  };
}

driverContract<SerialTag>({
  name: 'serial (device server over TCP) vs a Python ASCII instrument',
  async start(): Promise<ContractPeer<SerialTag>> {
    const instrument = await startInstrument({ kind: 'ascii', tcp: 0, unitId: '01' });
    const link = await startTcpLink(instrument.port!);
    const nothing = await freePort();
    const connection = { transport: 'tcp', host: '127.0.0.1', port: link.port };
    return serialPeer(
      connection,
      link,
      () => ({
        driver: createSerialDriver(ASCII_DEVICE({ ...connection, port: nothing }, 1000), testContext()),
        names: `127.0.0.1:${nothing}`,
      }),
      async () => {
        await link.stop();
        await instrument.stop();
      },
    );
  },
});

driverContract<SerialTag>({
  name: 'serial on a serial line (socat pty) vs a Python ASCII instrument',
  async start(): Promise<ContractPeer<SerialTag>> {
    const dir = mkdtempSync(join(tmpdir(), 'plc2mqtt-contract-serial-'));
    const link = await startSerialLink(dir);
    const instrument = await startInstrument({ kind: 'ascii', pty: link.devicePath, unitId: '01' });
    const connection = { transport: 'serial', path: link.path };
    return serialPeer(
      connection,
      link,
      () => ({
        driver: createSerialDriver(ASCII_DEVICE({ ...connection, path: join(dir, 'no-such-tty') }, 1000), testContext()),
        names: join(dir, 'no-such-tty'),
      }),
      async () => {
        await instrument.stop();
        await link.stop();
        rmSync(dir, { recursive: true, force: true });
      },
    );
  },
});
