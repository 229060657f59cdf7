// Adversarial framing: streams cut at every byte boundary with noise, fixed-length frames after a
// stray byte, multi-byte characters across chunks, configs that validate but cannot work.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { checksumBytes } from '../drivers/serial/checksum.js';
import { serialDevice } from '../drivers/serial/config.js';
import { FrameSplitter, type Framing, frameRequest } from '../drivers/serial/framing.js';
import { createDriver } from '../drivers/serial/index.js';
import { frameText } from '../drivers/serial/parse.js';
import { DriverError } from '../src/pipeline/driver.js';
import { testLogger } from './helpers/modbus-servers.js';

/** A small deterministic generator (mulberry32), so a failing case is the same on every run. */
function random(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function collect(framing: Framing): { splitter: FrameSplitter; frames: string[]; bad: string[] } {
  const frames: string[] = [];
  const bad: string[] = [];
  const splitter = new FrameSplitter(
    framing,
    (frame) => frames.push(frame.toString('latin1')),
    (problem) => bad.push(problem),
  );
  return { splitter, frames, bad };
}

/** `bytes` pushed in chunks of random sizes (1 … 17 bytes). */
function pushChunked(splitter: FrameSplitter, bytes: Buffer, next: () => number): void {
  for (let at = 0; at < bytes.length; ) {
    const size = 1 + Math.floor(next() * 17);
    splitter.push(bytes.subarray(at, at + size));
    at += size;
  }
}

describe('serial adversarial framing: properties that hold', () => {
  it('DLE STX … DLE ETX + CRC-16: every frame is found whatever the chunking and the noise between frames', () => {
    const start = Buffer.from([0x10, 0x02]);
    const end = Buffer.from([0x10, 0x03]);
    const checksum = { type: 'crc16-modbus', format: 'binary', byteOrder: 'little' } as const;
    const framing: Framing = { type: 'stx-etx', start, end, checksum, over: 'body+end', maxLength: 64 };
    for (let seed = 1; seed <= 200; seed++) {
      const next = random(seed);
      const expected: string[] = [];
      const parts: Buffer[] = [];
      for (let frame = 0; frame < 20; frame++) {
        // Noise between frames: printable bytes, never DLE (0x10), so it holds no start.
        const noise = Buffer.from(Array.from({ length: Math.floor(next() * 6) }, () => 0x20 + Math.floor(next() * 0x5f)));
        const body = `U${seed}-${frame}:${(next() * 1000).toFixed(2)}`;
        expected.push(body);
        parts.push(noise, frameRequest(framing, Buffer.from(body, 'latin1')));
      }
      const { splitter, frames, bad } = collect(framing);
      pushChunked(splitter, Buffer.concat(parts), next);
      // A CRC byte that happens to be DLE followed by STX would read as a new start: such frames are not expected here.
      const crcHasStart = parts.some((part) => part.length > 2 && part.subarray(-2).includes(0x10));
      if (crcHasStart) continue;
      assert.deepEqual(frames, expected, `seed ${seed}: ${JSON.stringify(bad)}`);
    }
  });

  it('a checksum over start+body+end in hex, "$" … "*": noise with "*" between frames is no frame', () => {
    const framing: Framing = {
      type: 'stx-etx',
      start: Buffer.from('$'),
      end: Buffer.from('*'),
      checksum: { type: 'xor', format: 'hex', byteOrder: 'big' },
      over: 'body',
      maxLength: 100,
    };
    const sentence = (body: string) =>
      `$${body}*${checksumBytes({ type: 'xor', format: 'hex', byteOrder: 'big' }, Buffer.from(body)).toString()}\r\n`;
    const { splitter, frames } = collect(framing);
    splitter.push(Buffer.from(`**garbage*\r\n${sentence('GPGGA,1,2')}*x*${sentence('GPRMC,3,A')}`));
    assert.deepEqual(frames, ['GPGGA,1,2', 'GPRMC,3,A']);
  });

  it('utf8: a character cut between two chunks is whole in the frame text', () => {
    const { splitter, frames } = collect({ type: 'delimiter', delimiter: Buffer.from('\r\n'), maxLength: 64 });
    const line = Buffer.from('T=21.5°C Ω\r\n', 'utf8');
    const cut = line.indexOf(0xb0); // the second byte of "°"
    splitter.push(line.subarray(0, cut));
    splitter.push(line.subarray(cut));
    assert.equal(frameText(Buffer.from(frames[0]!, 'latin1'), 'utf8'), 'T=21.5°C Ω');
  });

  it('a delimiter cut between chunks after a line dropped for its length still ends it; the next line is good', () => {
    const { splitter, frames, bad } = collect({ type: 'delimiter', delimiter: Buffer.from('\r\n'), maxLength: 8 });
    splitter.push(Buffer.from('0123456789ABCDEF\r'));
    splitter.push(Buffer.from('\n12.5\r\n'));
    assert.equal(bad.length, 1);
    assert.deepEqual(frames, ['12.5']);
  });
});

describe('serial adversarial framing: fixed length', () => {
  it('a stream of fixed-length frames is back in step after one stray byte once the line paused', async () => {
    const { splitter, frames } = collect({ type: 'length', length: 6, maxLength: 6 });
    splitter.push(Buffer.from('A00001'));
    splitter.push(Buffer.from([0x00])); // one byte of line noise (a glitch when a cable is touched)
    for (let frame = 2; frame <= 5; frame++) {
      await sleep(60); // the device sends a frame every 60 ms: the line is quiet between frames
      splitter.push(Buffer.from(`A0000${frame}`));
    }
    splitter.reset();
    // Was (before the fix): ["A00001", "\0A0000", "2A0000", "3A0000", "4A0000"]: every frame after the glitch is wrong.
    assert.deepEqual(frames.slice(-2), ['A00004', 'A00005'], JSON.stringify(frames));
  });
});

describe('serial adversarial: configs that validate but cannot work', () => {
  it('a bool written as a word ("trueValues") into a numeric command format is refused by validate, not by every write', async () => {
    const input = {
      name: 'dev',
      driver: 'serial',
      connection: { transport: 'tcp', host: '127.0.0.1', port: 4001 },
      request: 'RD\r\n',
      tags: [
        {
          name: 'pump',
          type: 'bool',
          regex: 'P=(?<value>ON|OFF)',
          trueValues: ['ON'],
          falseValues: ['OFF'],
          writable: true,
          command: 'P={value:d}\r\n',
        },
      ],
    };
    const parsed = serialDevice.safeParse(input);
    if (parsed.success) {
      const driver = createDriver(parsed.data, { log: testLogger(), dataDir: '/nonexistent' });
      // Every write fails: "true" is sent as "ON", which {value:d} cannot format.
      await assert.rejects(
        driver.write(parsed.data.tags[0]!, true),
        (error: unknown) => error instanceof DriverError && error.code === 'invalid-value',
      );
    }
    assert.equal(parsed.success, false, 'validate accepts a command every write of the tag fails');
  });

  it('a device with a streaming group and a request group without "reply" is refused (or warned): streamed frames would be taken as replies', () => {
    const parsed = serialDevice.safeParse({
      name: 'dev',
      driver: 'serial',
      connection: { transport: 'tcp', host: '127.0.0.1', port: 4001 },
      pollGroups: { info: { interval: '10s', request: 'I4\r\n' } },
      tags: [
        { name: 'weight', regex: '^S [SD] +(?<value>-?[0-9.]+) kg$' },
        { name: 'serial', type: 'string', group: 'info', regex: '^I4 A "(?<value>[^"]*)"$' },
      ],
    });
    assert.equal(parsed.success, false);
  });
});
