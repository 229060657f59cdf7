import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { type ChecksumSpec, type ChecksumType, checksumBytes, checksumLength, checksumValue } from '../drivers/serial/checksum.js';
import { FrameSplitter, type Framing, findFrame, frameAtSilence, frameRequest } from '../drivers/serial/framing.js';
import { showBytes } from '../drivers/serial/text.js';

const STX = '\x02';
const ETX = '\x03';
const bin = (text: string): Buffer => Buffer.from(text, 'latin1');

const delimited = (delimiter: string, maxLength = 1024): Framing => ({ type: 'delimiter', delimiter: bin(delimiter), maxLength });
const stxEtx = (
  checksum: ChecksumSpec | undefined,
  over: 'body' | 'body+end' | 'start+body+end' = 'body+end',
  options: { start?: string; end?: string; maxLength?: number } = {},
): Framing => ({
  type: 'stx-etx',
  start: bin(options.start ?? STX),
  end: bin(options.end ?? ETX),
  checksum,
  over,
  maxLength: options.maxLength ?? 1024,
});
const spec = (type: ChecksumType, format: 'binary' | 'hex' = 'binary', byteOrder: 'big' | 'little' = 'big'): ChecksumSpec => ({
  type,
  format,
  byteOrder,
});

/** A splitter that records what comes out, in order: "F:<frame as latin1>" or "B:<problem>". */
function record(framing: Framing): { splitter: FrameSplitter; events: string[]; frames: () => string[]; bads: () => string[] } {
  const events: string[] = [];
  const splitter = new FrameSplitter(
    framing,
    (frame) => events.push(`F:${frame.toString('latin1')}`),
    (problem) => events.push(`B:${problem}`),
  );
  return {
    splitter,
    events,
    frames: () => events.filter((event) => event.startsWith('F:')).map((event) => event.slice(2)),
    bads: () => events.filter((event) => event.startsWith('B:')).map((event) => event.slice(2)),
  };
}

/** The bytes the splitter keeps of an unfinished frame (its memory). */
const kept = (splitter: FrameSplitter): number => splitter.held;

/** `wire` pushed in pieces of the given sizes (cycled). */
function pushInPieces(splitter: FrameSplitter, wire: Buffer, sizes: readonly number[]): void {
  for (let at = 0, index = 0; at < wire.length; index++) {
    const size = sizes[index % sizes.length]!;
    splitter.push(Buffer.from(wire.subarray(at, at + size)));
    at += size;
  }
}

// ---- checksums --------------------------------------------------------------------------------

// The standard check values (CRC catalogue: the CRC of the ASCII bytes "123456789"); xor, sum8 and
// lrc by hand: 0x31 ^ 0x32 ^ … ^ 0x39 = 0x31; 0x31 + … + 0x39 = 477 = 0x1DD → 0xDD; 0x100 - 0xDD = 0x23.
const CHECK: ReadonlyArray<{ type: ChecksumType; value: number; big: number[]; hex: string }> = [
  { type: 'xor', value: 0x31, big: [0x31], hex: '31' },
  { type: 'sum8', value: 0xdd, big: [0xdd], hex: 'DD' },
  { type: 'lrc', value: 0x23, big: [0x23], hex: '23' },
  { type: 'crc16-modbus', value: 0x4b37, big: [0x4b, 0x37], hex: '4B37' },
  { type: 'crc16-ccitt-false', value: 0x29b1, big: [0x29, 0xb1], hex: '29B1' },
  { type: 'crc16-xmodem', value: 0x31c3, big: [0x31, 0xc3], hex: '31C3' },
  { type: 'crc16-kermit', value: 0x2189, big: [0x21, 0x89], hex: '2189' },
  { type: 'crc16-arc', value: 0xbb3d, big: [0xbb, 0x3d], hex: 'BB3D' },
];
const CHECK_INPUT = bin('123456789');

describe('serial checksums', () => {
  for (const { type, value } of CHECK)
    it(`${type} of "123456789" is 0x${value.toString(16).toUpperCase()}`, () => assert.equal(checksumValue(type, CHECK_INPUT), value));

  it('xor, sum8 and lrc of a short input, by hand', () => {
    const input = Buffer.from([0x10, 0x20, 0xf0, 0x05]);
    assert.equal(checksumValue('xor', input), 0xc5); // 0x10 ^ 0x20 = 0x30, ^ 0xF0 = 0xC0, ^ 0x05 = 0xC5
    assert.equal(checksumValue('sum8', input), 0x25); // 0x125 mod 256
    assert.equal(checksumValue('lrc', input), 0xdb); // 0x100 - 0x25
    assert.equal(checksumValue('lrc', Buffer.from([0x00])), 0x00);
  });

  it('the NMEA checksum is the xor of the bytes between $ and *', () => {
    const sentence = '$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47';
    const star = sentence.indexOf('*');
    assert.equal(checksumValue('xor', bin(sentence.slice(1, star))), Number.parseInt(sentence.slice(star + 1), 16));
    assert.equal(checksumValue('xor', bin(sentence.slice(1, star))), 0x47);
  });

  it('checksumLength: one or two bytes, twice that as hex digits', () => {
    assert.equal(checksumLength(spec('xor')), 1);
    assert.equal(checksumLength(spec('lrc', 'hex')), 2);
    assert.equal(checksumLength(spec('crc16-modbus')), 2);
    assert.equal(checksumLength(spec('crc16-arc', 'hex')), 4);
  });

  it('checksumBytes: binary in either byte order, hex as uppercase digits padded to the width', () => {
    assert.deepEqual([...checksumBytes(spec('crc16-modbus', 'binary', 'big'), CHECK_INPUT)], [0x4b, 0x37]);
    assert.deepEqual([...checksumBytes(spec('crc16-modbus', 'binary', 'little'), CHECK_INPUT)], [0x37, 0x4b]);
    assert.equal(checksumBytes(spec('crc16-modbus', 'hex'), CHECK_INPUT).toString('latin1'), '4B37');
    assert.equal(checksumBytes(spec('sum8', 'hex'), Buffer.from([0x01, 0x02])).toString('latin1'), '03');
    assert.equal(checksumBytes(spec('crc16-xmodem', 'hex'), Buffer.alloc(0)).toString('latin1'), '0000');
    assert.deepEqual([...checksumBytes(spec('xor', 'binary', 'little'), Buffer.from([0x0f]))], [0x0f]);
  });
});

// ---- delimiter, length, gap -----------------------------------------------------------------

describe('serial framing: delimiter', () => {
  it('\\r\\n: several frames in one chunk', () => {
    const { splitter, frames, bads } = record(delimited('\r\n'));
    splitter.push(bin('S S      12.345 kg\r\nS D      12.346 kg\r\nES\r\n'));
    assert.deepEqual(frames(), ['S S      12.345 kg', 'S D      12.346 kg', 'ES']);
    assert.deepEqual(bads(), []);
    assert.equal(kept(splitter), 0);
  });

  it('\\r\\n: a frame byte by byte, and a partial frame kept for the next push', () => {
    const { splitter, frames } = record(delimited('\r\n'));
    for (const byte of bin('S S 1.0 kg\r\nS S 2')) splitter.push(Buffer.from([byte]));
    assert.deepEqual(frames(), ['S S 1.0 kg']);
    assert.equal(kept(splitter), 5);
    splitter.push(bin('.0 kg\r'));
    assert.deepEqual(frames(), ['S S 1.0 kg']);
    splitter.push(bin('\n'));
    assert.deepEqual(frames(), ['S S 1.0 kg', 'S S 2.0 kg']);
  });

  it('\\r alone', () => {
    const { splitter, frames } = record(delimited('\r'));
    splitter.push(bin('+0012.50\r+0012.'));
    splitter.push(bin('75\r'));
    assert.deepEqual(frames(), ['+0012.50', '+0012.75']);
  });

  it('a multi-byte delimiter (a blank line ends a multi-line ticket), split across pushes', () => {
    const { splitter, frames } = record(delimited('\r\n\r\n'));
    pushInPieces(splitter, bin('Gross 12.5\r\nTare 0.5\r\n\r\nGross 13.0\r\nTare 0.5\r\n\r\n'), [3]);
    assert.deepEqual(frames(), ['Gross 12.5\r\nTare 0.5', 'Gross 13.0\r\nTare 0.5']);
  });

  it('ETX as the delimiter', () => {
    const { splitter, frames } = record(delimited(ETX));
    splitter.push(bin('A+12.0\x03A+13.0\x03'));
    assert.deepEqual(frames(), ['A+12.0', 'A+13.0']);
  });

  it('a frame of exactly maxLength is good, one byte more is bad and the next frame is found', () => {
    const { splitter, events } = record(delimited('\r\n', 8));
    splitter.push(bin('12345678\r\n123456789\r\nOK\r\n'));
    assert.deepEqual(events, ['F:12345678', 'B:frame longer than maxLength 8 bytes, dropped: "123456789"', 'F:OK']);
  });

  it('findFrame: nothing yet keeps the bytes from where it looked', () => {
    assert.deepEqual(findFrame(delimited('\r\n'), bin('xxS S 1'), 2), { kind: 'more', keep: 2 });
    const found = findFrame(delimited('\r\n'), bin('a\r\nb\r\n'), 3);
    assert.equal(found.kind, 'frame');
    assert.equal(found.kind === 'frame' && found.frame.toString('latin1'), 'b');
    assert.equal(found.kind === 'frame' && found.next, 6);
  });
});

describe('serial framing: memory stays bounded on a line that never sends its delimiter', () => {
  it('1 MB in 1 kB chunks: kept bytes never exceed maxLength + delimiter; bad frames reported; the next frame is parsed', () => {
    const maxLength = 1024;
    const { splitter, frames, bads } = record(delimited('\r\n', maxLength));
    const chunk = Buffer.alloc(1024, 'A');
    let most = 0;
    for (let sent = 0; sent < 1024 * 1024; sent += chunk.length) {
      splitter.push(chunk);
      most = Math.max(most, kept(splitter));
    }
    assert.ok(most <= maxLength + 2, `kept ${most} bytes`);
    assert.ok(bads().length >= 1);
    assert.match(bads()[0]!, /^frame longer than maxLength 1024 bytes \(no delimiter\), dropped: "A{40}"… \(\d+ bytes\)$/);
    // The end of the flood is the end of that bad frame; the frame after it is whole and alone.
    splitter.push(bin('\r\nS S 1.0 kg\r\n'));
    assert.deepEqual(frames(), ['S S 1.0 kg']);
    assert.equal(kept(splitter), 0);
  });

  it('the tail of a dropped line is no frame', () => {
    const { splitter, events } = record(delimited('\r\n', 16));
    splitter.push(bin('A'.repeat(20)));
    splitter.push(bin('TAIL 12.5\r\n'));
    splitter.push(bin('S S 1.0 kg\r\n'));
    assert.deepEqual(events, ['B:frame longer than maxLength 16 bytes (no delimiter), dropped: "AAAAAAAAAAAAAAAAAAAA"', 'F:S S 1.0 kg']);
  });

  it('a delimiter split by the drop still ends the dropped line', () => {
    const { splitter, frames, bads } = record(delimited('\r\n', 16));
    splitter.push(bin(`${'B'.repeat(18)}\r`));
    splitter.push(bin('\nGOOD\r\n'));
    assert.equal(bads().length, 1);
    assert.deepEqual(frames(), ['GOOD']);
  });

  it('reset(): where the next frame starts is unknown, so the bytes up to the next delimiter are dropped; atBoundary(): what follows is a frame', () => {
    const { splitter, frames } = record(delimited('\r\n', 16));
    splitter.push(bin('A'.repeat(20)));
    splitter.reset();
    splitter.push(bin('2.345 kg\r\nGOOD\r\n'));
    assert.deepEqual(frames(), ['GOOD']);
    splitter.push(bin('PART'));
    splitter.atBoundary();
    splitter.push(bin('NEXT\r\n'));
    assert.deepEqual(frames(), ['GOOD', 'NEXT']);
  });
});

describe('serial framing: fixed length', () => {
  it('cuts every length bytes, keeps the rest', () => {
    const framing: Framing = { type: 'length', length: 4, maxLength: 4 };
    const { splitter, frames } = record(framing);
    splitter.push(bin('ABCDEFGHIJ'));
    assert.deepEqual(frames(), ['ABCD', 'EFGH']);
    assert.equal(kept(splitter), 2);
    splitter.push(bin('KL'));
    assert.deepEqual(frames(), ['ABCD', 'EFGH', 'IJKL']);
  });

  it('byte by byte', () => {
    const { splitter, frames } = record({ type: 'length', length: 3, maxLength: 3 });
    for (const byte of bin('\x01\x02\x03\x04\x05\x06\x07')) splitter.push(Buffer.from([byte]));
    assert.deepEqual(frames(), ['\x01\x02\x03', '\x04\x05\x06']);
  });
});

describe('serial framing: gap (inter-byte silence)', () => {
  const gap = (maxLength = 64): Framing => ({ type: 'gap', gap: 20, maxLength });

  it('findFrame never ends a gap frame by itself; frameAtSilence takes everything since `from`', () => {
    assert.deepEqual(findFrame(gap(), bin('ABC'), 0), { kind: 'more', keep: 0 });
    const found = frameAtSilence(gap(), bin('xxABC'), 2);
    assert.equal(found.kind === 'frame' && found.frame.toString('latin1'), 'ABC');
    assert.equal(found.kind === 'frame' && found.next, 5);
    assert.deepEqual(frameAtSilence(gap(), bin('ABC'), 3), { kind: 'more', keep: 3 });
    assert.deepEqual(frameAtSilence(delimited('\r\n'), bin('ABC'), 0), { kind: 'more', keep: 0 });
  });

  it('findFrame: more than maxLength without a pause is bad', () => {
    const found = findFrame(gap(4), bin('ABCDE'), 0);
    assert.equal(found.kind, 'bad');
    assert.equal(found.kind === 'bad' && found.problem, 'frame longer than maxLength 4 bytes (no end), dropped: "ABCDE" without a pause');
  });

  it('the splitter ends a frame when the line stays silent', async () => {
    const { splitter, frames } = record(gap());
    splitter.push(bin('\x01\x03\x02'));
    splitter.push(bin('\x00\x7b'));
    assert.deepEqual(frames(), []);
    await sleep(150);
    assert.deepEqual(frames(), ['\x01\x03\x02\x00\x7b']);
    splitter.push(bin('NEXT'));
    await sleep(150);
    assert.deepEqual(frames(), ['\x01\x03\x02\x00\x7b', 'NEXT']);
    assert.equal(kept(splitter), 0);
  });

  it('reset() drops the unfinished frame and its timer', async () => {
    const { splitter, events } = record(gap());
    splitter.push(bin('HALF'));
    splitter.reset();
    await sleep(150);
    assert.deepEqual(events, []);
  });

  it('a flood without a pause: kept bytes stay within maxLength, and its tail is no frame', async () => {
    const { splitter, frames, bads } = record(gap(64));
    const chunk = Buffer.alloc(1024, 'X');
    let most = 0;
    for (let sent = 0; sent < 1024 * 1024; sent += chunk.length) {
      splitter.push(chunk);
      most = Math.max(most, kept(splitter));
    }
    splitter.push(bin('TAIL'));
    most = Math.max(most, kept(splitter));
    assert.ok(most <= 64, `kept ${most} bytes`);
    await sleep(150);
    assert.ok(bads().length >= 1);
    assert.match(bads()[0]!, /without a pause$/);
    assert.deepEqual(frames(), []);
    splitter.push(bin('OK'));
    await sleep(150);
    assert.deepEqual(frames(), ['OK']);
  });
});

// ---- STX … ETX --------------------------------------------------------------------------------

describe('serial framing: STX … ETX with each checksum', () => {
  for (const { type, big, hex } of CHECK) {
    const orders: Array<'big' | 'little'> = big.length === 2 ? ['big', 'little'] : ['big'];
    const wires: Array<[string, ChecksumSpec, number[]]> = [
      ...orders.map((order): [string, ChecksumSpec, number[]] => [
        `binary${big.length === 2 ? ` ${order}` : ''}`,
        spec(type, 'binary', order),
        order === 'big' ? big : [...big].reverse(),
      ]),
      ['hex', spec(type, 'hex'), [...bin(hex)]],
    ];
    for (const [how, checksum, tail] of wires) {
      const framing = stxEtx(checksum, 'body');
      const wire = Buffer.concat([bin(`${STX}123456789${ETX}`), Buffer.from(tail)]);

      it(`${type} ${how}: a good frame is found, byte by byte too`, () => {
        const { splitter, events } = record(framing);
        splitter.push(wire);
        for (const byte of wire) splitter.push(Buffer.from([byte]));
        assert.deepEqual(events, ['F:123456789', 'F:123456789']);
      });

      it(`${type} ${how}: frameRequest wraps the payload the same way`, () => {
        assert.deepEqual([...frameRequest(framing, bin('123456789'))], [...wire]);
      });

      it(`${type} ${how}: a wrong checksum is bad, with both values`, () => {
        const corrupt = Buffer.from(wire);
        corrupt[corrupt.length - 1]! ^= 0x01;
        const { splitter, events } = record(framing);
        splitter.push(Buffer.concat([corrupt, wire]));
        const received = corrupt.subarray(corrupt.length - tail.length);
        assert.deepEqual(events, [
          `B:${type} checksum mismatch: received ${showBytes(received)}, computed ${showBytes(Buffer.from(tail))} for "123456789"`,
          'F:123456789',
        ]);
      });
    }
  }

  it('a hex checksum in lowercase is accepted', () => {
    const { splitter, frames } = record(stxEtx(spec('crc16-modbus', 'hex'), 'body'));
    splitter.push(bin(`${STX}123456789${ETX}4b37`));
    assert.deepEqual(frames(), ['123456789']);
  });

  it('a checksum mismatch names the received and the computed checksum', () => {
    const { splitter, events } = record(stxEtx(spec('xor', 'hex')));
    // xor over body+end: 0x41 ^ 0x42 ^ 0x43 ^ 0x03 = 0x43; and 0x44 ^ 0x45 ^ 0x46 ^ 0x03 = 0x44.
    splitter.push(bin(`${STX}ABC${ETX}00${STX}DEF${ETX}44`));
    assert.deepEqual(events, ['B:xor checksum mismatch: received "00", computed "43" for "ABC"', 'F:DEF']);
    const binary = record(stxEtx(spec('crc16-modbus', 'binary', 'little'), 'body'));
    binary.splitter.push(bin(`${STX}123456789${ETX}\x00\x00`));
    assert.deepEqual(binary.events, ['B:crc16-modbus checksum mismatch: received "\\x00\\x00", computed "7K" for "123456789"']);
  });
});

describe('serial framing: what the checksum covers', () => {
  // xor of "ABC" is 0x40; with ETX 0x43; with STX too 0x41.
  const cases: Array<['body' | 'body+end' | 'start+body+end', string]> = [
    ['body', '40'],
    ['body+end', '43'],
    ['start+body+end', '41'],
  ];
  for (const [over, hex] of cases) {
    it(`over ${over}`, () => {
      const framing = stxEtx(spec('xor', 'hex'), over);
      assert.equal(frameRequest(framing, bin('ABC')).toString('latin1'), `${STX}ABC${ETX}${hex}`);
      const { splitter, events } = record(framing);
      splitter.push(bin(`${STX}ABC${ETX}${hex}`));
      assert.deepEqual(events, ['F:ABC']);
      // The checksum of another coverage is a mismatch.
      for (const [other, otherHex] of cases) {
        if (other === over) continue;
        const wrong = record(framing);
        wrong.splitter.push(bin(`${STX}ABC${ETX}${otherHex}`));
        assert.match(wrong.events.join(), /^B:xor checksum mismatch/, `${over} took the checksum over ${other}`);
      }
    });
  }

  it('sum8 over start+body+end, binary', () => {
    // 0x02 + 0x41 + 0x42 + 0x43 + 0x03 = 0xCB
    const framing = stxEtx(spec('sum8'), 'start+body+end');
    assert.deepEqual([...frameRequest(framing, bin('ABC'))], [0x02, 0x41, 0x42, 0x43, 0x03, 0xcb]);
  });
});

describe('serial framing: STX … ETX on a real line', () => {
  const withXor = stxEtx(spec('xor'));
  const framed = (...bodies: string[]): Buffer => Buffer.concat(bodies.map((body) => frameRequest(withXor, bin(body))));

  it('several frames in one chunk', () => {
    const { splitter, frames } = record(withXor);
    splitter.push(framed('A+12.0', 'B+13.5', 'C-0.25'));
    assert.deepEqual(frames(), ['A+12.0', 'B+13.5', 'C-0.25']);
  });

  it('frames split across many pushes of every size', () => {
    for (const sizes of [[1], [2], [3, 1], [5, 7, 2]]) {
      const { splitter, frames, bads } = record(withXor);
      pushInPieces(splitter, framed('A+12.0', 'B+13.5', 'C-0.25'), sizes);
      assert.deepEqual(frames(), ['A+12.0', 'B+13.5', 'C-0.25'], `pieces of ${sizes.join(',')}`);
      assert.deepEqual(bads(), []);
    }
  });

  it('noise before a frame is skipped', () => {
    const { splitter, events } = record(withXor);
    splitter.push(bin('\x00\xffnoise\x03\r\n'));
    splitter.push(framed('OK'));
    assert.deepEqual(events, ['F:OK']);
  });

  it('noise is not kept', () => {
    const { splitter } = record(withXor);
    for (let index = 0; index < 1024; index++) splitter.push(Buffer.alloc(1024, 'n'));
    assert.equal(kept(splitter), 0);
  });

  it('a multi-byte start split across pushes after noise', () => {
    const framing = stxEtx(undefined, 'body', { start: '<<', end: '>>' });
    const { splitter, frames } = record(framing);
    splitter.push(bin('noise<'));
    assert.ok(kept(splitter) <= 1);
    splitter.push(bin('<ABC>'));
    splitter.push(bin('>'));
    assert.deepEqual(frames(), ['ABC']);
  });

  it('a frame that lost its ETX is skipped and the good one after it is found', () => {
    const { splitter, frames } = record(withXor);
    splitter.push(bin(`${STX}LOST+12`));
    splitter.push(framed('GOOD+13'));
    assert.deepEqual(frames(), ['GOOD+13']);
    const again = record(withXor);
    for (const byte of Buffer.concat([bin(`${STX}LOST`), framed('GOOD')])) again.splitter.push(Buffer.from([byte]));
    assert.deepEqual(again.frames(), ['GOOD']);
  });

  it('a checksum byte that equals STX is no start', () => {
    // xor over body+end of "@A": 0x40 ^ 0x41 ^ 0x03 = 0x02.
    assert.deepEqual([...framed('@A')], [0x02, 0x40, 0x41, 0x03, 0x02]);
    const { splitter, frames } = record(withXor);
    for (const byte of framed('@A', 'OK')) splitter.push(Buffer.from([byte]));
    assert.deepEqual(frames(), ['@A', 'OK']);
  });

  it('a frame without its end is dropped at maxLength, memory stays bounded, the next frame is found', () => {
    const framing = stxEtx(spec('xor'), 'body+end', { maxLength: 64 });
    const { splitter, frames, bads } = record(framing);
    splitter.push(bin(STX));
    let most = 0;
    for (let index = 0; index < 1024; index++) {
      splitter.push(Buffer.alloc(1024, 'A'));
      most = Math.max(most, kept(splitter));
    }
    assert.ok(most <= 64 + 2 + 1, `kept ${most} bytes`);
    assert.equal(bads().length, 1);
    assert.match(bads()[0]!, /^frame longer than maxLength 64 bytes \(no end\), dropped: "\\x02A{36}"… \(\d+ bytes\)$/);
    splitter.push(Buffer.concat([bin(ETX), frameRequest(framing, bin('GOOD'))]));
    assert.deepEqual(frames(), ['GOOD']);
  });

  it('a body longer than maxLength is bad even with its end', () => {
    const { splitter, events } = record(stxEtx(undefined, 'body', { maxLength: 4 }));
    splitter.push(bin(`${STX}TOO LONG${ETX}${STX}OK${ETX}`));
    assert.deepEqual(events, ['B:frame longer than maxLength 4 bytes, dropped: "TOO LONG"', 'F:OK']);
  });
});

describe('serial framing: frameRequest', () => {
  it('leaves requests of other framings as they are', () => {
    assert.equal(frameRequest(delimited('\r\n'), bin('SI\r\n')).toString('latin1'), 'SI\r\n');
    assert.equal(frameRequest({ type: 'gap', gap: 20, maxLength: 64 }, bin('\x01\x03')).toString('latin1'), '\x01\x03');
  });

  it('wraps STX/ETX without a checksum', () => {
    assert.equal(frameRequest(stxEtx(undefined), bin('RD')).toString('latin1'), `${STX}RD${ETX}`);
  });

  it('wraps STX/ETX and appends the checksum', () => {
    // xor over body+end: 0x52 ^ 0x44 ^ 0x03 = 0x15
    assert.deepEqual([...frameRequest(stxEtx(spec('xor')), bin('RD'))], [0x02, 0x52, 0x44, 0x03, 0x15]);
    assert.equal(
      frameRequest(stxEtx(spec('crc16-kermit', 'hex'), 'body'), bin('123456789')).toString('latin1'),
      `${STX}123456789${ETX}2189`,
    );
  });
});
