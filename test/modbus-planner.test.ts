import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { ModbusArea } from '../drivers/modbus/address.js';
import type { ModbusType } from '../drivers/modbus/config.js';
import {
  blockOf,
  chunkRange,
  describePlan,
  planRequests,
  splitBlock,
  tagRange,
  type Hole,
  type PlannableTag,
  type PlannerOptions,
} from '../drivers/modbus/planner.js';

function tag(
  name: string,
  area: ModbusArea,
  address: number,
  type: ModbusType = area === 'coil' || area === 'discrete' ? 'bool' : 'uint16',
  extra: { length?: number; count?: number; bit?: number } = {},
): PlannableTag {
  const { bit, ...rest } = extra;
  return { name, address: bit === undefined ? { area, address } : { area, address, bit }, type, ...rest };
}

const DEFAULTS: PlannerOptions = { maxRegistersPerRequest: 125, maxBitsPerRequest: 2000, maxGap: 10 };

interface Case {
  name: string;
  tags: PlannableTag[];
  options?: Partial<PlannerOptions>;
  holes?: Hole[];
  /** describePlan() of the result. */
  expect: string;
  /** Tag names per block, when the grouping matters. */
  groups?: string[][];
  excluded?: string[];
}

const CASES: Case[] = [
  {
    name: 'contiguous registers become one request',
    tags: [tag('a', 'holding', 0), tag('b', 'holding', 1), tag('c', 'holding', 2, 'float32')],
    expect: '1 request: holding 0..3 (4 regs)',
  },
  {
    name: 'the example of the docs: three areas',
    tags: [
      tag('x', 'holding', 0),
      tag('y', 'holding', 20, 'float64', { count: 1 }),
      tag('in', 'input', 100, 'int32'),
      tag('c0', 'coil', 0),
      tag('c15', 'coil', 15),
    ],
    options: { maxGap: 20 },
    expect: '3 requests: holding 0..23 (24 regs), input 100..101 (2 regs), coils 0..15 (16 bits)',
  },
  {
    name: 'a gap of exactly maxGap is bridged',
    tags: [tag('a', 'holding', 0), tag('b', 'holding', 11)],
    expect: '1 request: holding 0..11 (12 regs)',
  },
  {
    name: 'a gap one beyond maxGap splits',
    tags: [tag('a', 'holding', 0), tag('b', 'holding', 12)],
    expect: '2 requests: holding 0..0 (1 reg), holding 12..12 (1 reg)',
  },
  {
    name: 'maxGap 0 merges only adjacent tags',
    tags: [tag('a', 'input', 0), tag('b', 'input', 1), tag('c', 'input', 3)],
    options: { maxGap: 0 },
    expect: '2 requests: input 0..1 (2 regs), input 3..3 (1 reg)',
    groups: [['a', 'b'], ['c']],
  },
  {
    name: 'the span limit starts a new request',
    tags: [tag('a', 'holding', 0, 'float64'), tag('b', 'holding', 4), tag('c', 'holding', 5, 'uint32')],
    options: { maxRegistersPerRequest: 4 },
    expect: '2 requests: holding 0..3 (4 regs), holding 4..6 (3 regs)',
  },
  {
    name: 'input order does not matter',
    tags: [tag('c', 'holding', 8), tag('a', 'holding', 0), tag('b', 'holding', 4)],
    expect: '1 request: holding 0..8 (9 regs)',
    groups: [['a', 'b', 'c']],
  },
  {
    name: 'overlapping and duplicated tags share a block',
    tags: [
      tag('whole', 'holding', 10, 'uint32'),
      tag('low', 'holding', 11),
      tag('dup', 'holding', 10, 'uint32'),
      tag('bit', 'holding', 10, 'bool', { bit: 3 }),
    ],
    options: { maxGap: 0 },
    expect: '1 request: holding 10..11 (2 regs)',
    groups: [['whole', 'dup', 'bit', 'low']],
  },
  {
    name: 'overlap forces sharing even beyond the span limit (read in two requests)',
    tags: [tag('a', 'holding', 0, 'float64'), tag('b', 'holding', 2, 'float64')],
    options: { maxRegistersPerRequest: 4 },
    expect: '2 requests: holding 0..3 (4 regs), holding 4..5 (2 regs)',
    groups: [['a', 'b']],
  },
  {
    name: 'a tag larger than one request is read in parts',
    tags: [tag('text', 'holding', 100, 'string', { length: 100 })],
    options: { maxRegistersPerRequest: 64 },
    expect: '2 requests: holding 100..163 (64 regs), holding 164..199 (36 regs)',
  },
  {
    name: 'coil arrays and bit limits',
    tags: [tag('bank', 'coil', 0, 'bool', { count: 20 }), tag('far', 'coil', 1000)],
    options: { maxBitsPerRequest: 8 },
    expect: '4 requests: coils 0..7 (8 bits), coils 8..15 (8 bits), coils 16..19 (4 bits), coils 1000..1000 (1 bit)',
  },
  {
    name: 'discrete inputs merge over small gaps like registers',
    tags: [tag('d1', 'discrete', 5), tag('d2', 'discrete', 9)],
    expect: '1 request: discrete 5..9 (5 bits)',
  },
  {
    name: 'arrays occupy count * element size',
    tags: [tag('arr', 'input', 0, 'float32', { count: 3 }), tag('next', 'input', 6)],
    options: { maxGap: 0 },
    expect: '1 request: input 0..6 (7 regs)',
  },
  {
    name: 'a tag covering a known hole is excluded',
    tags: [tag('a', 'holding', 0), tag('bad', 'holding', 3, 'uint32'), tag('c', 'holding', 6)],
    holes: [{ area: 'holding', start: 3, end: 5, reason: 'exception 2: illegal data address' }],
    expect: '2 requests: holding 0..0 (1 reg), holding 6..6 (1 reg); known illegal addresses: holding 3..4 (1 tag not requested)',
    excluded: ['bad'],
  },
  {
    name: 'a request is never stretched over a known hole',
    tags: [tag('a', 'holding', 0), tag('b', 'holding', 6)],
    holes: [{ area: 'holding', start: 2, end: 4, reason: 'exception 2: illegal data address' }],
    expect: '2 requests: holding 0..0 (1 reg), holding 6..6 (1 reg); known illegal addresses: holding 2..3 (not read across)',
  },
  {
    name: 'a short tag inside a failing long tag is still read',
    tags: [tag('long', 'holding', 4, 'float64'), tag('short', 'holding', 4)],
    holes: [{ area: 'holding', start: 4, end: 8, reason: 'exception 2: illegal data address' }],
    expect: '1 request: holding 4..4 (1 reg); known illegal addresses: holding 4..7 (1 tag not requested)',
    excluded: ['long'],
  },
  {
    name: 'holes of another area do not matter',
    tags: [tag('a', 'input', 0), tag('b', 'input', 6)],
    holes: [{ area: 'holding', start: 2, end: 4, reason: 'x' }],
    expect: '1 request: input 0..6 (7 regs)',
  },
  {
    name: 'a hole outside the tags of the plan is not mentioned',
    tags: [tag('a', 'holding', 0), tag('b', 'holding', 1)],
    holes: [{ area: 'holding', start: 100, end: 102, reason: 'exception 2: illegal data address' }],
    expect: '1 request: holding 0..1 (2 regs)',
  },
  { name: 'no tags', tags: [], expect: '0 requests' },
];

describe('planner: tag sets -> requests', () => {
  for (const c of CASES) {
    it(c.name, () => {
      const plan = planRequests(c.tags, { ...DEFAULTS, ...c.options }, c.holes);
      assert.equal(describePlan(plan, c.holes ?? []), c.expect);
      if (c.groups)
        assert.deepEqual(
          plan.blocks.map((b) => b.tags.map((t) => t.tag.name)),
          c.groups,
        );
      assert.deepEqual(
        plan.excluded.map((e) => e.tag.name),
        c.excluded ?? [],
      );
      if (c.excluded) for (const e of plan.excluded) assert.match(e.reason, /illegal data address/);
      // Every tag is either planned exactly once or excluded.
      const planned = plan.blocks.flatMap((b) => b.tags.map((t) => t.tag.name));
      assert.deepEqual([...planned, ...plan.excluded.map((e) => e.tag.name)].sort(), c.tags.map((t) => t.name).sort());
      // Each planned tag lies within its block, and requests tile the block.
      for (const block of plan.blocks) {
        for (const t of block.tags) assert.ok(t.start >= block.start && t.end <= block.end);
        assert.equal(
          block.requests.reduce((n, r) => n + r.count, 0),
          block.end - block.start,
        );
      }
    });
  }
});

describe('planner: helpers', () => {
  it('tagRange counts bits for coils, one register for register bits', () => {
    assert.deepEqual(tagRange(tag('c', 'coil', 7, 'bool', { count: 9 })), { start: 7, end: 16 });
    assert.deepEqual(tagRange(tag('b', 'holding', 7, 'bool', { bit: 15 })), { start: 7, end: 8 });
    assert.deepEqual(tagRange(tag('s', 'holding', 7, 'string', { length: 5, count: 2 })), { start: 7, end: 17 });
  });

  it('chunkRange tiles a range', () => {
    assert.deepEqual(chunkRange(10, 20, 4), [
      { start: 10, count: 4 },
      { start: 14, count: 4 },
      { start: 18, count: 2 },
    ]);
  });

  it('splitBlock halves by distinct ranges and keeps identical ranges together', () => {
    const tags = [
      tag('a', 'holding', 0),
      tag('a2', 'holding', 0),
      tag('b', 'holding', 2),
      tag('c', 'holding', 4),
      tag('d', 'holding', 8, 'uint32'),
    ];
    const [block] = planRequests(tags, DEFAULTS).blocks;
    const halves = splitBlock(block!, 125);
    assert.ok(halves);
    const [left, right] = halves;
    assert.deepEqual(
      left.tags.map((t) => t.tag.name),
      ['a', 'a2', 'b'],
    );
    assert.deepEqual([left.start, left.end, right.start, right.end], [0, 3, 4, 10]);
    assert.equal(splitBlock(blockOf('holding', left.tags.slice(0, 2), 125), 125), undefined);
  });
});
