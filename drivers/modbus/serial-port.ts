// Modbus RTU on a shared byte line: modbus-serial's client (`new ModbusRTU(port)`) on one device's
// share (lease) of a line the pipeline's registry owns (src/pipeline/serial-ports.ts): a serial
// port (transport `rtu`) or the TCP port of a serial device server (`rtu-over-tcp`). The registry
// opens the line once for every device on it, Modbus or serial-line instrument, serializes their
// exchanges, drops stray bytes and holds requests back after a request that ended without its
// reply; this port adds only what is Modbus: where an RTU reply ends and what makes it wrong.
//
// The framing is the one modbus-serial's RTUBufferedPort used on serial lines before: the reply
// length follows from the request, a reply may start after line noise (it is found by its unit id
// and function code), and an exception reply is 5 bytes. The CRC and the contents are checked by
// ModbusRTU; the echo of a write is checked here (ModbusRTU does not). The registry times the
// request (ModbusRTU's own timeout is only a safety net behind it), so a request that ends
// without its reply is known with the bytes that did arrive.

import { EventEmitter } from 'node:events';
import type { FrameVerdict, ReplyFraming, SerialExchange, SerialPortLease } from '../../src/pipeline/serial-ports.js';
import { SerialLineError } from '../../src/pipeline/serial-ports.js';
import { hexBytes } from '../../src/util/hex.js';
import { checkReply, crc16, expectationOf, replyLength } from './ports.js';

const EXCEPTION_LENGTH = 5;
/** Longest RTU frame: unit id, 253 bytes of PDU, CRC. Noise beyond it is not scanned. */
const MAX_RTU_FRAME = 256;

/** Length of the whole reply (unit id, PDU, CRC) to a request, or undefined for a function this driver does not send. */
function wholeReplyLength(request: Buffer): number | undefined {
  const fc = request[1];
  switch (fc) {
    case 1:
    case 2:
      return 3 + Math.ceil(request.readUInt16BE(4) / 8) + 2;
    case 3:
    case 4:
      return 3 + 2 * request.readUInt16BE(4) + 2;
    case 5:
    case 6:
    case 15:
    case 16:
      return 8;
    default:
      return undefined;
  }
}

/** Where the reply to an RTU request ends in the bytes received since it was sent. */
export function rtuReplyFraming(request: Buffer): ReplyFraming {
  const unit = request[0];
  const fc = request[1]!;
  const length = request.length >= 6 ? wholeReplyLength(request) : undefined;
  return (received): FrameVerdict => {
    const buffer = received.length > MAX_RTU_FRAME ? received.subarray(-MAX_RTU_FRAME) : received;
    if (length === undefined || buffer.length < EXCEPTION_LENGTH) return 'more';
    for (let i = 0; i + EXCEPTION_LENGTH <= buffer.length; i++) {
      if (buffer[i] !== unit) continue;
      const code = buffer[i + 1];
      if (code === fc && i + length <= buffer.length) return { reply: buffer.subarray(i, i + length) };
      if (code === (fc | 0x80)) return { reply: buffer.subarray(i, i + EXCEPTION_LENGTH) };
      // The head of the reply is here, the rest is still on its way.
      if (code === fc) break;
    }
    return 'more';
  };
}

/**
 * What is wrong with the bytes that arrived for `request` when no reply was found among them by
 * the timeout: the first thing that does not fit the request, or that the reply is incomplete.
 */
export function describeNoReply(request: Buffer, received: Buffer): string {
  if (received.length >= 2) {
    const length = replyLength(expectationOf(request), received);
    if (typeof length === 'object') return length.problem;
  }
  return `incomplete reply: ${received.length} byte${received.length === 1 ? '' : 's'}, then nothing until the timeout`;
}

/** A request the line ended without a usable reply: timed out, or refused with what was wrong. */
export interface Refusal {
  kind: 'timeout' | 'bad-reply';
  /** "timeout", or "bad reply: …". */
  message: string;
  /** The bytes received, in hex, for the log. */
  bytes?: string;
}

/** The port interface ModbusRTU calls, on a lease of the registry's line. */
export class SerialRtuPort extends EventEmitter {
  // ModbusRTU keys its transactions by these; one request at a time on RTU, so they stay 1.
  _transactionIdRead = 1;
  _transactionIdWrite = 1;
  /** The exchange the line holds while a request runs: requests are only sent inside one. */
  exchange: SerialExchange | undefined;
  /** The request's timeout (ms), measured by the registry from when the request is written. */
  timeout = 1000;
  /** Told when the request being sent ends without a reply ModbusRTU could take. */
  onRefused: ((refusal: Refusal) => void) | undefined;
  private readonly lease: SerialPortLease;
  /**
   * Bytes that arrived by the timeout without making a reply are a bad reply (named by what is
   * wrong with them) rather than a timeout. Device servers: a truncated or garbage answer is
   * reported as such. Serial lines: a stray byte of a switching RS-485 transceiver must not make a
   * silent device look alive.
   */
  private readonly bytesWithoutReplyAreBad: boolean;
  private closed = false;

  constructor(lease: SerialPortLease, options: { bytesWithoutReplyAreBad?: boolean } = {}) {
    super();
    this.lease = lease;
    this.bytesWithoutReplyAreBad = options.bytesWithoutReplyAreBad ?? false;
  }

  get isOpen(): boolean {
    return !this.closed && this.lease.isOpen;
  }

  /** The lease opens the line; this only checks it is open. */
  open(callback: (error?: Error) => void): void {
    if (this.lease.isOpen) callback();
    else callback(new Error(this.lease.lossReason ?? `${this.lease.label} is not open`));
  }

  /** Lets go of the client only: the line belongs to the registry. */
  close(callback?: () => void): void {
    this.closed = true;
    callback?.();
  }

  write(request: Buffer): void {
    const exchange = this.exchange;
    // Outside an exchange nothing may be sent; ModbusRTU then times the request out.
    if (!exchange || this.closed) return;
    exchange.transact(request, { timeout: this.timeout, frame: rtuReplyFraming(request), maxBytes: 4 * MAX_RTU_FRAME }).then(
      (reply) => {
        // A frame with a wrong CRC goes to ModbusRTU, which says so ("CRC error").
        const body = reply.subarray(0, -2);
        const problem = reply.readUInt16LE(reply.length - 2) === crc16(body) ? checkReply(expectationOf(request), body) : undefined;
        if (problem) this.onRefused?.({ kind: 'bad-reply', message: `bad reply: ${problem}`, bytes: hexBytes(reply) });
        else this.emit('data', reply);
      },
      (error: unknown) => {
        // A lost line reaches the line's devices through the lease, an ended exchange has nobody
        // waiting any more. What is left is a timeout or a reply the registry refused.
        if (!(error instanceof SerialLineError)) return;
        const bytes = error.received.length > 0 ? hexBytes(error.received) : undefined;
        if (error.code === 'bad-reply') {
          this.onRefused?.({ kind: 'bad-reply', message: error.message, bytes });
        } else if (error.code === 'timeout') {
          if (bytes !== undefined && this.bytesWithoutReplyAreBad)
            this.onRefused?.({ kind: 'bad-reply', message: `bad reply: ${describeNoReply(request, error.received)}`, bytes });
          else this.onRefused?.({ kind: 'timeout', message: 'timeout' });
        }
      },
    );
  }
}
