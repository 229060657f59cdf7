import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { TagReading } from '../src/pipeline/driver.js';
import { TagNormalizer, type TagNormalizerOptions } from '../src/pipeline/normalize.js';
import { encodeBatchPayload, encodeTagPayload } from '../src/northbound/json/payload.js';

const base: TagNormalizerOptions = { device: 'd', group: 'default', tag: 't', report: 'change', maxSilence: 0 };
const good = (value: TagReading['value']): TagReading => ({ tag: 't', value, quality: 'good' });

describe('scaling and typing', () => {
  const cases: Array<[string, Partial<TagNormalizerOptions>, TagReading['value'], unknown]> = [
    ['no scale keeps the raw value', {}, 123, 123],
    ['scale', { scale: 0.1 }, 215, 21.5],
    ['scale and offset', { scale: 2, offset: -10 }, 15, 20],
    ['offset only', { offset: 273.15 }, 0, 273.15],
    ['arrays element by element', { scale: 10 }, [1, 2, 3], [10, 20, 30]],
    ['int64 with scale becomes a number', { scale: 0.5 }, 10n, 5],
    ['int64 without scale stays exact', {}, 9007199254740993n, 9007199254740993n],
    ['booleans ignore scale', { scale: 3 }, true, true],
    ['strings pass through', {}, 'PLC2MQTT', 'PLC2MQTT'],
  ];
  for (const [title, options, raw, expected] of cases) {
    it(title, () => {
      const sample = new TagNormalizer({ ...base, ...options }).normalize(good(raw), 1000);
      assert.deepEqual(sample.value, expected);
      assert.equal(sample.quality, 'good');
    });
  }

  it('a bad reading has no value and carries the reason', () => {
    const sample = new TagNormalizer(base).normalize({ tag: 't', quality: 'bad', reason: 'exception 2: illegal data address' }, 5);
    assert.deepEqual(sample, {
      device: 'd',
      group: 'default',
      tag: 't',
      value: null,
      quality: 'bad',
      reason: 'exception 2: illegal data address',
      ts: 5,
    });
  });

  it('NaN from the device is bad, never a silent null', () => {
    const sample = new TagNormalizer(base).normalize(good(Number.NaN), 5);
    assert.equal(sample.quality, 'bad');
    assert.equal(sample.reason, 'the device returned NaN or infinity');
  });

  it('uses the source timestamp when the device gives one, gateway time otherwise', () => {
    const normalizer = new TagNormalizer(base);
    assert.equal(normalizer.normalize({ ...good(1), sourceTs: 42 }, 1000).ts, 42);
    assert.equal(normalizer.normalize(good(1), 1000).ts, 1000);
  });

  it('uncertain keeps its value and reason', () => {
    const sample = new TagNormalizer(base).normalize({ tag: 't', value: 3, quality: 'uncertain', reason: 'sensor calibrating' }, 1);
    assert.equal(sample.value, 3);
    assert.equal(sample.quality, 'uncertain');
    assert.equal(sample.reason, 'sensor calibrating');
  });
});

describe('report by exception', () => {
  /** Feeds values at t = 0, 1000, 2000, … and returns which were reported. */
  function reported(options: Partial<TagNormalizerOptions>, readings: TagReading[]): boolean[] {
    const normalizer = new TagNormalizer({ ...base, ...options });
    return readings.map((reading, index) => normalizer.shouldReport(normalizer.normalize(reading, index * 1000), index * 1000));
  }
  const values = (...list: number[]) => list.map((value) => good(value));

  const cases: Array<[string, Partial<TagNormalizerOptions>, TagReading[], boolean[]]> = [
    ['first value always goes out; unchanged values do not', {}, values(1, 1, 1, 2), [true, false, false, true]],
    ['report "always" publishes every poll', { report: 'always' }, values(1, 1, 1), [true, true, true]],
    [
      'absolute deadband compares with the last reported value',
      { deadband: 0.5 },
      values(10, 10.3, 10.6, 10.2, 9.9),
      [true, false, true, false, true],
    ],
    ['absolute deadband as an object', { deadband: { absolute: 1 } }, values(0, 0.9, 1.1), [true, false, true]],
    [
      'percent deadband of the last reported value',
      { deadband: { percent: 10 } },
      values(100, 109, 111, 121, 123),
      [true, false, true, false, true],
    ],
    ['percent deadband from zero reports any change', { deadband: { percent: 10 } }, values(0, 0, 0.001), [true, false, true]],
    ['slow drift is caught once it adds up', { deadband: 1 }, values(0, 0.4, 0.8, 1.2), [true, false, false, true]],
    ['maxSilence republishes an unchanged value', { maxSilence: 2000 }, values(5, 5, 5, 5, 5), [true, false, true, false, true]],
    [
      'quality change always goes out, whatever the deadband',
      { deadband: 100 },
      [good(1), { tag: 't', quality: 'bad', reason: 'timeout' }, { tag: 't', quality: 'bad', reason: 'timeout' }, good(1)],
      [true, true, false, true],
    ],
    [
      'a new reason for bad quality goes out',
      {},
      [
        { tag: 't', quality: 'bad', reason: 'timeout' },
        { tag: 't', quality: 'bad', reason: 'connection refused' },
      ],
      [true, true],
    ],
    ['booleans report on change', {}, [good(true), good(true), good(false)], [true, false, true]],
    [
      'arrays report when any element moved beyond the deadband',
      { deadband: 1 },
      [good([1, 2]), good([1.5, 2]), good([1, 3.5])],
      [true, false, true],
    ],
  ];
  for (const [title, options, readings, expected] of cases) {
    it(title, () => assert.deepEqual(reported(options, readings), expected));
  }
});

describe('payloads', () => {
  it('per tag: value, quality, ts and unit', () => {
    const sample = { device: 'd', group: 'g', tag: 't', value: 21.5, quality: 'good' as const, unit: '°C', ts: 1_700_000_000_000 };
    assert.equal(encodeTagPayload(sample, 'ms'), '{"value":21.5,"quality":"good","ts":1700000000000,"unit":"°C"}');
    assert.equal(encodeTagPayload(sample, 'iso'), '{"value":21.5,"quality":"good","ts":"2023-11-14T22:13:20.000Z","unit":"°C"}');
  });

  it('bad quality: null value and the reason', () => {
    assert.equal(
      encodeTagPayload({ device: 'd', group: 'g', tag: 't', value: null, quality: 'bad', reason: 'timeout', ts: 1 }, 'ms'),
      '{"value":null,"quality":"bad","ts":1,"reason":"timeout"}',
    );
  });

  it('int64 beyond 2^53 travels as a string, smaller ones as numbers', () => {
    const payload = (value: bigint) =>
      JSON.parse(encodeTagPayload({ device: 'd', group: 'g', tag: 't', value, quality: 'good', ts: 1 }, 'ms')) as { value: unknown };
    assert.equal(payload(9007199254740993n).value, '9007199254740993');
    assert.equal(payload(-42n).value, -42);
  });

  it('batch: every tag of the cycle under values', () => {
    const samples = [
      { device: 'd', group: 'g', tag: 'a', value: 1, quality: 'good' as const, ts: 5 },
      { device: 'd', group: 'g', tag: 'b', value: null, quality: 'bad' as const, reason: 'x', ts: 5 },
    ];
    assert.deepEqual(JSON.parse(encodeBatchPayload('d', 'g', 5, samples, 'ms')), {
      device: 'd',
      group: 'g',
      ts: 5,
      values: { a: { value: 1, quality: 'good', ts: 5 }, b: { value: null, quality: 'bad', ts: 5, reason: 'x' } },
    });
  });
});
