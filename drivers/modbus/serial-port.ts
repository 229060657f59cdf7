// Modbus RTU on a serial line: modbus-serial's client (`new ModbusRTU(port)`) on one device's share
// of the serial port, which the pipeline's registry owns (src/pipeline/serial-ports.ts). The
// registry opens the port, serializes the exchanges of every device and driver on it and drops
// stray bytes before each request; this port adds only what is Modbus: where an RTU reply ends.
//
// The framing is the one modbus-serial's RTUBufferedPort used on serial lines before: the reply
// length follows from the request, a reply may start after line noise (it is found by its unit id
// and function code), and an exception reply is 5 bytes. The CRC, the exception and the contents
// are checked by ModbusRTU, which also times the request out by itself.

import { EventEmitter } from 'node:events';
import type { FrameVerdict, ReplyFraming, SerialExchange, SerialPortLease } from '../../src/pipeline/serial-ports.js';
import { SerialLineError } from '../../src/pipeline/serial-ports.js';

const EXCEPTION_LENGTH = 5;
/** Longest RTU frame: unit id, 253 bytes of PDU, CRC. Noise beyond it is not scanned. */
const MAX_RTU_FRAME = 256;

/** Length of the whole reply (unit id, PDU, CRC) to a request, or undefined for a function this driver does not send. */
function replyLength(request: Buffer): number | undefined {
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
  const length = request.length >= 6 ? replyLength(request) : undefined;
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

/** The port interface ModbusRTU calls, on a lease of the registry's serial port. */
export class SerialRtuPort extends EventEmitter {
  // ModbusRTU keys its transactions by these; one request at a time on RTU, so they stay 1.
  _transactionIdRead = 1;
  _transactionIdWrite = 1;
  /** The exchange the line holds while a request runs: requests are only sent inside one. */
  exchange: SerialExchange | undefined;
  /** ModbusRTU's timeout of the request being sent; the registry waits a little longer, so the client reports timeouts itself. */
  timeout = 1000;
  /** Told when the registry refuses a reply (more bytes than any RTU frame without one that fits). */
  onBadReply: ((message: string) => void) | undefined;
  private readonly lease: SerialPortLease;
  private closed = false;

  constructor(lease: SerialPortLease) {
    super();
    this.lease = lease;
  }

  get isOpen(): boolean {
    return !this.closed && this.lease.isOpen;
  }

  /** The lease opens the port; this only checks it is open. */
  open(callback: (error?: Error) => void): void {
    if (this.lease.isOpen) callback();
    else callback(new Error(this.lease.lossReason ?? `${this.lease.label} is not open`));
  }

  /** Lets go of the client only: the port belongs to the registry. */
  close(callback?: () => void): void {
    this.closed = true;
    callback?.();
  }

  write(request: Buffer): void {
    const exchange = this.exchange;
    // Outside an exchange nothing may be sent; ModbusRTU then times the request out.
    if (!exchange || this.closed) return;
    exchange.transact(request, { timeout: this.timeout + 100, frame: rtuReplyFraming(request), maxBytes: 4 * MAX_RTU_FRAME }).then(
      (reply) => this.emit('data', reply),
      (error: unknown) => {
        // Timeouts are ModbusRTU's to report, a lost port reaches the line through the lease, an
        // ended exchange has nobody waiting any more. What is left is a reply the registry refused.
        if (error instanceof SerialLineError && error.code === 'bad-reply') this.onBadReply?.(error.message);
      },
    );
  }
}
