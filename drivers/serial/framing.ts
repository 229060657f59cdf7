// Where a frame ends in the bytes of a serial line: at a delimiter, after a fixed length, at a
// silence (inter-byte gap), or STX … ETX with an optional checksum, which is verified.
//
// Written here rather than with serialport's parsers (@serialport/parser-delimiter, -readline,
// -byte-length, -inter-byte-timeout): the delimiter and readline parsers buffer without bound (a
// line that never sends its delimiter grows memory until the process dies), none of them checks
// STX/ETX frames or checksums, and as streams they hand frames over asynchronously, while a
// request must claim its reply from the bytes that arrived before the next request goes out.
// Every framing here keeps at most maxLength bytes of an unfinished frame.
import { checksumBytes, checksumLength, type ChecksumSpec } from './checksum.js';
import { showBytes } from './text.js';

export type Framing = (
  | { type: 'delimiter'; delimiter: Buffer }
  | { type: 'length'; length: number }
  | { type: 'gap'; gap: number }
  | { type: 'stx-etx'; start: Buffer; end: Buffer; checksum: ChecksumSpec | undefined; over: 'body' | 'body+end' | 'start+body+end' }
) & {
  /** Longest frame (payload) accepted; longer ones are dropped as bad, so memory stays bounded. */
  maxLength: number;
};

/** What the bytes from `from` on hold. `next` is where to look for the following frame. */
export type Found =
  | { kind: 'frame'; frame: Buffer; next: number }
  /**
   * `unfinished`: the frame was dropped before its end (its delimiter, or a pause) came; the bytes
   * up to that end are the rest of it, not a frame.
   */
  | { kind: 'bad'; problem: string; next: number; unfinished?: true }
  /** No complete frame yet; bytes before `keep` are noise that belongs to no frame. */
  | { kind: 'more'; keep: number };

/** The first frame in `buffer` from `from` on, a bad one, or 'more'. A gap framing finds frames only at silences (frameAtSilence). */
export function findFrame(framing: Framing, buffer: Buffer, from: number): Found {
  const available = buffer.length - from;
  switch (framing.type) {
    case 'delimiter': {
      const at = buffer.indexOf(framing.delimiter, from);
      if (at < 0) {
        // A line without its delimiter is dropped once it is longer than any frame may be.
        // The last bytes may be the first of the delimiter: they are where to look for it.
        if (available > framing.maxLength + framing.delimiter.length)
          return {
            kind: 'bad',
            problem: tooLong(framing, buffer.subarray(from), 'no delimiter'),
            next: buffer.length - framing.delimiter.length + 1,
            unfinished: true,
          };
        return { kind: 'more', keep: from };
      }
      const next = at + framing.delimiter.length;
      if (at - from > framing.maxLength) return { kind: 'bad', problem: tooLong(framing, buffer.subarray(from, at), undefined), next };
      return { kind: 'frame', frame: buffer.subarray(from, at), next };
    }
    case 'length':
      if (available < framing.length) return { kind: 'more', keep: from };
      return { kind: 'frame', frame: buffer.subarray(from, from + framing.length), next: from + framing.length };
    case 'gap':
      if (available > framing.maxLength)
        return {
          kind: 'bad',
          problem: `${tooLong(framing, buffer.subarray(from), 'no end')} without a pause`,
          next: buffer.length,
          unfinished: true,
        };
      return { kind: 'more', keep: from };
    case 'stx-etx':
      return findDelimited(framing, buffer, from);
  }
}

/** A gap framing's frame: everything received since the last one, once the line went quiet. */
export function frameAtSilence(framing: Framing, buffer: Buffer, from: number): Found {
  if (framing.type !== 'gap' || buffer.length <= from) return { kind: 'more', keep: from };
  return { kind: 'frame', frame: buffer.subarray(from), next: buffer.length };
}

function findDelimited(framing: Extract<Framing, { type: 'stx-etx' }>, buffer: Buffer, from: number): Found {
  const { start, end } = framing;
  let begin = buffer.indexOf(start, from);
  if (begin < 0) {
    // Noise before any start: only the tail that may be the beginning of a start sequence is kept.
    return { kind: 'more', keep: Math.max(from, buffer.length - start.length + 1) };
  }
  let stop = buffer.indexOf(end, begin + start.length);
  // A frame that lost its end and was followed by a new one: the newest start wins.
  for (let again = buffer.indexOf(start, begin + start.length); again >= 0 && (stop < 0 || again < stop); ) {
    begin = again;
    again = buffer.indexOf(start, begin + start.length);
  }
  if (stop < 0) {
    if (buffer.length - begin > framing.maxLength + start.length + end.length)
      return { kind: 'bad', problem: tooLong(framing, buffer.subarray(begin), 'no end'), next: begin + start.length };
    return { kind: 'more', keep: begin };
  }
  stop = buffer.indexOf(end, begin + start.length);
  const body = buffer.subarray(begin + start.length, stop);
  const afterEnd = stop + end.length;
  if (body.length > framing.maxLength) return { kind: 'bad', problem: tooLong(framing, body, undefined), next: afterEnd };
  if (!framing.checksum) return { kind: 'frame', frame: body, next: afterEnd };
  const size = checksumLength(framing.checksum);
  if (buffer.length < afterEnd + size) return { kind: 'more', keep: begin };
  const covered =
    framing.over === 'body'
      ? body
      : framing.over === 'body+end'
        ? buffer.subarray(begin + start.length, afterEnd)
        : buffer.subarray(begin, afterEnd);
  const expected = checksumBytes(framing.checksum, covered);
  const received = buffer.subarray(afterEnd, afterEnd + size);
  const same =
    framing.checksum.format === 'hex'
      ? received.toString('latin1').toUpperCase() === expected.toString('latin1')
      : received.equals(expected);
  if (!same)
    return {
      kind: 'bad',
      problem: `${framing.checksum.type} checksum mismatch: received ${showBytes(received)}, computed ${showBytes(expected)} for ${showBytes(body)}`,
      next: afterEnd + size,
    };
  return { kind: 'frame', frame: body, next: afterEnd + size };
}

/** `missing`: what did not come; a frame that came with its end was merely too long (it said "no delimiter" then too). */
function tooLong(framing: Framing, bytes: Buffer, missing: 'no delimiter' | 'no end' | undefined): string {
  return `frame longer than maxLength ${framing.maxLength} bytes${missing ? ` (${missing})` : ''}, dropped: ${showBytes(bytes, 40)}`;
}

/** The bytes a request goes out as: STX … ETX framings wrap requests like their replies (with checksum). */
export function frameRequest(framing: Framing, payload: Buffer): Buffer {
  if (framing.type !== 'stx-etx') return payload;
  const { start, end, checksum, over } = framing;
  const framed = Buffer.concat([start, payload, end]);
  if (!checksum) return framed;
  const covered = over === 'body' ? payload : over === 'body+end' ? framed.subarray(start.length) : framed;
  return Buffer.concat([framed, checksumBytes(checksum, covered)]);
}

/**
 * Splits the byte stream of a line into frames as bytes arrive (streamed frames). Keeps at most one
 * unfinished frame (bounded by maxLength); `onFrame` and `onBad` are called synchronously, and a
 * frame's bytes are valid only during its callback (they may be the splitter's own buffer, reused
 * for the next bytes: a serial port hands over a few bytes at a time, and a copy per read would
 * cost more than the parse).
 */
export class FrameSplitter {
  private readonly framing: Framing;
  private readonly onFrame: (frame: Buffer) => void;
  private readonly onBad: (problem: string) => void;
  /** The unfinished frame: the first `used` bytes of `store`. */
  private store: Buffer = Buffer.allocUnsafe(256);
  private used = 0;
  private pushedSinceReset = false;
  /** After reset(quietBoundary): when, and how long a silence says the next byte starts a frame. */
  private quietSince: { at: number; ms: number } | undefined;
  private gapTimer: NodeJS.Timeout | undefined;
  /**
   * After an unfinished frame was dropped, the bytes up to its delimiter (a gap framing's: up to the
   * next silence) are its rest: without this they came out as a frame of their own (the tail of a
   * line too long, "…12.5 kg", parsed as a good reading).
   */
  private dropping = false;
  /** Fixed-length frames: an unfinished frame is dropped after this much silence (ms), so one stray byte does not shift every later frame. */
  private readonly idleReset: number;
  private idleTimer: NodeJS.Timeout | undefined;

  constructor(framing: Framing, onFrame: (frame: Buffer) => void, onBad: (problem: string) => void, idleReset = 50) {
    this.framing = framing;
    this.onFrame = onFrame;
    this.onBad = onBad;
    this.idleReset = idleReset;
  }

  push(chunk: Buffer): void {
    this.pushedSinceReset = true;
    // A line that stayed quiet that long after a new connection was between frames: nothing was cut.
    if (this.quietSince) {
      if (this.dropping && Date.now() - this.quietSince.at >= this.quietSince.ms) this.dropping = false;
      this.quietSince = undefined;
    }
    let data: Buffer;
    if (this.used === 0) data = chunk;
    else {
      this.reserve(this.used + chunk.length);
      chunk.copy(this.store, this.used);
      this.used += chunk.length;
      data = this.store.subarray(0, this.used);
    }
    let from = 0;
    for (;;) {
      if (this.dropping) {
        if (this.framing.type !== 'delimiter') {
          from = data.length;
          break;
        }
        const { delimiter } = this.framing;
        const at = data.indexOf(delimiter, from);
        if (at < 0) {
          from = Math.max(from, data.length - delimiter.length + 1);
          break;
        }
        from = at + delimiter.length;
        this.dropping = false;
      }
      const found = findFrame(this.framing, data, from);
      if (found.kind === 'more') {
        from = found.keep;
        break;
      }
      from = found.next;
      if (found.kind === 'frame') this.onFrame(found.frame);
      else {
        if (found.unfinished) this.dropping = true;
        this.onBad(found.problem);
      }
    }
    // The unfinished rest is kept in the splitter's own buffer (never a whole chunk it came in).
    const rest = data.length - from;
    if (rest <= 0) this.used = 0;
    else if (data === chunk) {
      this.reserve(rest);
      chunk.copy(this.store, 0, from);
      this.used = rest;
    } else {
      this.store.copyWithin(0, from, this.used);
      this.used = rest;
    }
    if (this.framing.type === 'gap') {
      clearTimeout(this.gapTimer);
      if (this.used > 0 || this.dropping) this.gapTimer = setTimeout(() => this.silence(), this.framing.gap);
    }
    if (this.framing.type === 'length') {
      clearTimeout(this.idleTimer);
      if (this.used > 0) this.idleTimer = setTimeout(() => this.idle(), this.idleReset);
    }
  }

  /** Room for `bytes` in the store, keeping what it holds. */
  private reserve(bytes: number): void {
    if (bytes <= this.store.length) return;
    const grown = Buffer.allocUnsafe(Math.max(bytes, 2 * this.store.length));
    this.store.copy(grown, 0, 0, this.used);
    this.store = grown;
  }

  private idle(): void {
    if (this.used === 0) return;
    const partial = this.store.subarray(0, this.used);
    this.used = 0;
    this.onBad(`incomplete frame dropped after ${this.idleReset} ms of silence: ${showBytes(partial, 40)}`);
  }

  private silence(): void {
    const found = this.dropping ? undefined : frameAtSilence(this.framing, this.store.subarray(0, this.used), 0);
    this.dropping = false;
    this.used = 0;
    if (found?.kind === 'frame') this.onFrame(found.frame);
  }

  /**
   * Drops an unfinished frame (a new connection, a lost line, a request that flushed the input).
   * Where the next frame starts is then unknown: under a delimiter or gap framing the bytes up to
   * the next delimiter (or silence) may be the tail of a frame cut in two ("2.345 kg" of
   * "S S     12.345 kg") and are dropped too. STX/ETX frames find their start by themselves.
   * With `quietBoundary` (a new connection), a first byte that comes only after that much silence
   * starts a frame (the first scan of a barcode reader is kept).
   */
  reset(quietBoundary?: number): void {
    clearTimeout(this.gapTimer);
    clearTimeout(this.idleTimer);
    this.used = 0;
    this.pushedSinceReset = false;
    this.dropping = this.framing.type === 'delimiter' || this.framing.type === 'gap';
    this.quietSince = quietBoundary === undefined ? undefined : { at: Date.now(), ms: quietBoundary };
  }

  /** Bytes of an unfinished frame held now (diagnostics, tests). */
  get held(): number {
    return this.used;
  }

  /** The next byte starts a frame: nothing of one is held, and the position in the stream is known. */
  get between(): boolean {
    if (this.used > 0) return false;
    // After a new connection: a line quiet since then is between frames too.
    return !this.dropping || (this.quietSince !== undefined && Date.now() - this.quietSince.at >= this.quietSince.ms);
  }

  /** Bytes came since the last reset(). */
  get touched(): boolean {
    return this.pushedSinceReset;
  }

  /** The next byte starts a frame (what follows a complete reply). */
  atBoundary(): void {
    clearTimeout(this.gapTimer);
    clearTimeout(this.idleTimer);
    this.used = 0;
    this.dropping = false;
  }
}
