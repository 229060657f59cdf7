// The strict socket port for modbus-serial's client (`new ModbusRTU(port)`) on Modbus TCP (MBAP),
// and the reply checks every Modbus link shares.
//
// Why our own: modbus-serial's TcpPort keeps whatever it could not use in its receive buffer and
// frames every later reply against those leftovers, so one truncated or garbage reply makes every
// following request time out while the socket stays up; it also ignores the MBAP protocol id,
// trusts any length field and ignores transaction ids it does not know. And ModbusRTU itself
// checks a reply's length against the request but never the byte count inside it: a byte count 2
// too large makes it read the CRC as one more register.
//
// MbapPort frames each reply against the one request outstanding (a line sends one at a time) and
// checks everything the request determines: protocol id, length field, transaction id, unit id,
// function code, byte count against the quantity asked, the echo of a write. At the first
// inconsistency it calls `onBadReply` with what was wrong and destroys the socket, so not a byte of
// a stream that lost its framing is ever read again; the devices' runners then reconnect.
//
// RTU links (a serial port, or a serial device server's TCP port) are not here: they are byte
// lines of the serial-port registry (src/pipeline/serial-ports.ts), shared with every device on the
// same line, with modbus-serial on SerialRtuPort (serial-port.ts), which uses the checks below.

import { EventEmitter } from 'node:events';
import net from 'node:net';
import { hexBytes } from '../../src/util/hex.js';

/** A reply whose framing or content does not fit the request. */
export type BadReplyHandler = (problem: string, bytes: string) => void;

const MBAP_HEADER = 6; // transaction id, protocol id, length; the unit id is counted in the length
/** Largest Modbus PDU (253) plus the unit id: the largest MBAP length field a reply can carry. */
const MAX_MBAP_LENGTH = 254;
/** How many timed-out transaction ids a late reply may still carry (it is then dropped quietly). */
const LATE_IDS = 16;

const hex16 = (value: number): string => `0x${value.toString(16).padStart(4, '0')}`;

/** CRC-16/MODBUS. */
export function crc16(bytes: Uint8Array): number {
  let crc = 0xffff;
  for (const byte of bytes) {
    crc ^= byte;
    for (let i = 0; i < 8; i++) crc = crc & 1 ? (crc >>> 1) ^ 0xa001 : crc >>> 1;
  }
  return crc;
}

/** What the request (an RTU frame as ModbusRTU builds it: unit id, PDU, CRC) says its reply must look like. */
export interface Expectation {
  unit: number;
  fc: number;
  request: Buffer;
  /** Data bytes of a read reply (FC1–4), from the quantity asked. */
  byteCount?: number;
  /** What the byte count counts, for messages: "5 registers", "10 bits". */
  asked?: string;
}

export function expectationOf(request: Buffer): Expectation {
  const unit = request[0]!;
  const fc = request[1]!;
  const expectation: Expectation = { unit, fc, request };
  if (fc >= 1 && fc <= 4 && request.length >= 8) {
    const quantity = request.readUInt16BE(4);
    expectation.byteCount = fc <= 2 ? Math.ceil(quantity / 8) : 2 * quantity;
    expectation.asked = fc <= 2 ? `${quantity} bit${quantity === 1 ? '' : 's'}` : `${quantity} register${quantity === 1 ? '' : 's'}`;
  }
  return expectation;
}

/**
 * Length of the whole reply (unit id + PDU, without CRC or MBAP header) as far as its first bytes
 * tell, or a problem. `head` holds at least the unit id and function code. Returns "more" while
 * the byte count is not there yet.
 */
export function replyLength(expected: Expectation, head: Buffer): number | 'more' | { problem: string } {
  const unit = head[0]!;
  const fc = head[1]!;
  if (unit !== expected.unit) return { problem: `unit id ${unit} in a reply to unit ${expected.unit}` };
  if (fc === (expected.fc | 0x80)) return 3;
  if (fc !== expected.fc) return { problem: `function code ${fc} in a reply to function ${expected.fc}` };
  switch (fc) {
    case 1:
    case 2:
    case 3:
    case 4: {
      if (head.length < 3) return 'more';
      const count = head[2]!;
      if (count !== expected.byteCount)
        return { problem: `byte count ${count} for ${expected.asked ?? 'the quantity'} asked (expected ${expected.byteCount ?? '?'})` };
      return 3 + count;
    }
    case 5:
    case 6:
    case 15:
    case 16:
      return 6;
    default:
      // The driver sends nothing else; a port cannot frame a reply it knows nothing about.
      return { problem: `no framing known for replies to function ${fc}` };
  }
}

/** Content checks once the whole reply (unit id + PDU) is there. */
export function checkReply(expected: Expectation, frame: Buffer): string | undefined {
  const fc = frame[1]!;
  if (fc === (expected.fc | 0x80)) return undefined;
  if (fc === 5 || fc === 6 || fc === 15 || fc === 16) {
    // A write is answered with an echo of its address (and of the quantity for FC15/16).
    const address = frame.readUInt16BE(2);
    const asked = expected.request.readUInt16BE(2);
    if (address !== asked) return `the reply to a write at address ${asked} names address ${address}`;
    if (fc >= 15) {
      const quantity = frame.readUInt16BE(4);
      const askedQuantity = expected.request.readUInt16BE(4);
      if (quantity !== askedQuantity) return `the reply to a write of ${askedQuantity} names a quantity of ${quantity}`;
    }
  }
  return undefined;
}

/** An RTU frame (unit id, PDU, CRC) as ModbusRTU wants to receive it. */
function rtuFrame(unitAndPdu: Buffer): Buffer {
  const frame = Buffer.alloc(unitAndPdu.length + 2);
  unitAndPdu.copy(frame);
  frame.writeUInt16LE(crc16(unitAndPdu), unitAndPdu.length);
  return frame;
}

export interface SocketPortOptions {
  host: string;
  port: number;
  /** Milliseconds a TCP connect may take. */
  connectTimeout: number;
}

/** The socket, the port interface ModbusRTU calls, the bad-reply exit. */
abstract class SocketPort extends EventEmitter {
  // ModbusRTU reads and writes these two (it keys its transactions by them).
  _transactionIdRead = 1;
  _transactionIdWrite = 1;
  /** Called once when a reply does not fit, with the socket already destroyed. */
  onBadReply: BadReplyHandler | undefined;
  /** Called whenever bytes arrive (the peer is alive, whatever they turn out to be). */
  onData: (() => void) | undefined;
  protected buffer: Buffer = Buffer.alloc(0);
  private socket: net.Socket | undefined;
  private openFlag = false;
  private readonly options: SocketPortOptions;

  constructor(options: SocketPortOptions) {
    super();
    this.options = options;
  }

  get isOpen(): boolean {
    return this.openFlag;
  }

  open(callback: (error?: Error) => void): void {
    const { host, port, connectTimeout } = this.options;
    const socket = net.connect({ host, port });
    this.socket = socket;
    let settled = false;
    const settle = (error?: Error): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      callback(error);
    };
    const timer = setTimeout(() => {
      socket.destroy();
      settle(new Error(`connect timed out after ${connectTimeout} ms`));
    }, connectTimeout);
    socket.once('connect', () => {
      socket.setNoDelay(true);
      this.openFlag = true;
      settle();
    });
    // After the connect, an error is always followed by 'close', which is what the client hears.
    socket.on('error', (error) => settle(error));
    socket.on('close', () => {
      settle(new Error('the connection closed while opening'));
      this.buffer = Buffer.alloc(0);
      if (!this.openFlag) return;
      this.openFlag = false;
      this.emit('close');
    });
    socket.on('data', (chunk: Buffer) => {
      if (!this.openFlag) return;
      this.onData?.();
      this.buffer = this.buffer.length === 0 ? chunk : Buffer.concat([this.buffer, chunk]);
      this.receive();
    });
  }

  close(callback?: () => void): void {
    this.destroy(callback);
  }

  destroy(callback?: () => void): void {
    this.socket?.destroy();
    callback?.();
  }

  /** ModbusRTU hands over each request as an RTU frame (unit id, PDU, CRC). */
  abstract write(request: Buffer): void;

  /**
   * The request outstanding timed out. Returns a problem when part of a reply had arrived (the
   * stream is no longer framed: the connection is dropped), undefined when nothing had.
   */
  abstract abandon(): string | undefined;

  protected abstract receive(): void;

  protected send(bytes: Buffer): void {
    this.socket?.write(bytes);
  }

  /** Reports what was wrong and destroys the socket, and with it every byte still buffered. */
  protected fail(problem: string, bytes: Buffer = this.buffer): void {
    if (!this.openFlag) return;
    this.openFlag = false;
    const shown = hexBytes(bytes);
    this.buffer = Buffer.alloc(0);
    this.socket?.destroy();
    this.onBadReply?.(problem, shown);
    this.emit('close');
  }

  protected incompleteProblem(): string | undefined {
    if (this.buffer.length === 0) return undefined;
    const problem = `incomplete reply: ${this.buffer.length} byte${this.buffer.length === 1 ? '' : 's'}, then nothing until the timeout`;
    this.fail(problem);
    return problem;
  }
}

/** Modbus TCP: MBAP header (transaction id, protocol id 0, length), unit id, PDU. */
export class MbapPort extends SocketPort {
  private pending: (Expectation & { transactionId: number }) | undefined;
  /** Transaction ids of requests that timed out, most recent last: their late replies are dropped. */
  private readonly late: number[] = [];

  write(request: Buffer): void {
    const transactionId = this._transactionIdWrite;
    // 16-bit ids; ModbusRTU keeps one entry per id ever used, so stay within 256 of them as its own TcpPort does.
    this._transactionIdWrite = (transactionId + 1) % 256;
    this.pending = { ...expectationOf(request), transactionId };
    const pdu = request.subarray(0, request.length - 2); // unit id + PDU, without the CRC
    const frame = Buffer.alloc(MBAP_HEADER + pdu.length);
    frame.writeUInt16BE(transactionId, 0);
    frame.writeUInt16BE(0, 2);
    frame.writeUInt16BE(pdu.length, 4);
    pdu.copy(frame, MBAP_HEADER);
    this.send(frame);
  }

  abandon(): string | undefined {
    const pending = this.pending;
    this.pending = undefined;
    if (pending) {
      this.late.push(pending.transactionId);
      if (this.late.length > LATE_IDS) this.late.shift();
    }
    return this.incompleteProblem();
  }

  protected receive(): void {
    while (this.isOpen && this.buffer.length > 0) {
      const buffer = this.buffer;
      if (buffer.length >= 4) {
        const protocol = buffer.readUInt16BE(2);
        if (protocol !== 0) return this.fail(`MBAP protocol id ${hex16(protocol)} instead of 0`);
      }
      if (buffer.length < MBAP_HEADER) return;
      const length = buffer.readUInt16BE(4);
      if (length > MAX_MBAP_LENGTH)
        return this.fail(`MBAP length field ${length}, more than the ${MAX_MBAP_LENGTH} bytes a Modbus reply can have`);
      if (length < 3) return this.fail(`MBAP length field ${length}, too short for any reply`);
      if (buffer.length < MBAP_HEADER + length) return;
      const transactionId = buffer.readUInt16BE(0);
      const frame = buffer.subarray(MBAP_HEADER, MBAP_HEADER + length);
      const whole = buffer.subarray(0, MBAP_HEADER + length);
      this.buffer = buffer.subarray(MBAP_HEADER + length);
      const pending = this.pending;
      if (!pending || transactionId !== pending.transactionId) {
        const index = this.late.indexOf(transactionId);
        if (index >= 0) {
          // The late answer to a request that timed out: framed correctly, just too slow.
          this.late.splice(index, 1);
          continue;
        }
        return this.fail(
          pending
            ? `transaction id ${hex16(transactionId)} in the reply to ${hex16(pending.transactionId)}`
            : `a reply (transaction id ${hex16(transactionId)}) while no request was outstanding`,
          whole,
        );
      }
      const expected = replyLength(pending, frame);
      if (expected === 'more') return this.fail(`a reply of ${length} bytes is too short for its byte count`, whole);
      if (typeof expected === 'object') return this.fail(expected.problem, whole);
      if (expected !== length) {
        const what = pending.byteCount !== undefined && frame[1] === pending.fc ? `byte count ${frame[2]}` : `function ${frame[1]}`;
        return this.fail(`MBAP length field ${length} does not match ${what} (expected ${expected})`, whole);
      }
      const problem = checkReply(pending, frame);
      if (problem) return this.fail(problem, whole);
      this.pending = undefined;
      this._transactionIdRead = transactionId;
      this.emit('data', rtuFrame(frame));
    }
  }
}
