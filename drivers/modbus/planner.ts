// Request coalescing: turns the tags of one poll group (one unit id) into as few read requests as
// the device allows. Pure: no I/O, no clock, so it is tested by table and re-run whenever the driver
// learns a new "hole" (an address range the device answered with exception 2).
//
// Same idea as Telegraf's Modbus "shrink" optimisation: per area, sort by address and grow a
// request while the span stays within the device's limit and the unused gap between two tags stays
// small; a request that would have to cover a known hole is cut there instead.

import type { ModbusArea } from './address.js';
import type { ModbusAddress } from './address.js';
import { registersPerElement, type ModbusType } from './config.js';

/** The part of a Modbus tag the planner looks at. */
export interface PlannableTag {
  name: string;
  address: ModbusAddress;
  type: ModbusType;
  length?: number | undefined;
  count?: number | undefined;
}

export interface PlannerOptions {
  maxRegistersPerRequest: number;
  maxBitsPerRequest: number;
  maxGap: number;
}

/**
 * An address range [start, end) that a request must never cover entirely: the device answered
 * "illegal data address" for it. A tag whose own range covers a hole cannot be read at all.
 */
export interface Hole {
  area: ModbusArea;
  start: number;
  end: number;
  /** Reported for the tags the hole excludes, e.g. "exception 2: illegal data address". */
  reason: string;
}

/** One wire request: FC1/2/3/4 from start, count units (registers or bits). */
export interface ReadRequest {
  start: number;
  count: number;
}

export interface PlannedTag<T> {
  tag: T;
  /** First unit of the tag (absolute address). */
  start: number;
  /** One past its last unit. */
  end: number;
}

/**
 * A contiguous range read as one piece. Almost always one request; a single tag (or overlapping
 * tags) larger than the per-request limit is read as several consecutive requests and reassembled.
 */
export interface Block<T> {
  area: ModbusArea;
  start: number;
  end: number;
  tags: PlannedTag<T>[];
  requests: ReadRequest[];
}

export interface Plan<T> {
  blocks: Block<T>[];
  /** Tags not requested at all because they cover a known hole. */
  excluded: { tag: T; reason: string }[];
}

const AREA_ORDER: readonly ModbusArea[] = ['holding', 'input', 'coil', 'discrete'];

export const isBitArea = (area: ModbusArea): boolean => area === 'coil' || area === 'discrete';

/** The units [start, end) a tag occupies in its area: bits for coils/discretes, registers otherwise. */
export function tagRange(tag: PlannableTag): { start: number; end: number } {
  const start = tag.address.address;
  if (isBitArea(tag.address.area)) return { start, end: start + (tag.count ?? 1) };
  if (tag.address.bit !== undefined) return { start, end: start + 1 };
  return { start, end: start + registersPerElement(tag.type, tag.length) * (tag.count ?? 1) };
}

export function maxPerRequest(area: ModbusArea, options: PlannerOptions): number {
  return isBitArea(area) ? options.maxBitsPerRequest : options.maxRegistersPerRequest;
}

/** Cuts [start, end) into requests of at most max units. */
export function chunkRange(start: number, end: number, max: number): ReadRequest[] {
  const requests: ReadRequest[] = [];
  for (let at = start; at < end; at += max) requests.push({ start: at, count: Math.min(max, end - at) });
  return requests;
}

const covers = (start: number, end: number, hole: Hole): boolean => start <= hole.start && hole.end <= end;

export function planRequests<T extends PlannableTag>(tags: readonly T[], options: PlannerOptions, holes: readonly Hole[] = []): Plan<T> {
  const blocks: Block<T>[] = [];
  const excluded: { tag: T; reason: string }[] = [];

  for (const area of AREA_ORDER) {
    const areaHoles = holes.filter((hole) => hole.area === area);
    const max = maxPerRequest(area, options);
    const planned: PlannedTag<T>[] = [];
    for (const tag of tags) {
      if (tag.address.area !== area) continue;
      const range = tagRange(tag);
      const hole = areaHoles.find((h) => covers(range.start, range.end, h));
      if (hole) excluded.push({ tag, reason: hole.reason });
      else planned.push({ tag, start: range.start, end: range.end }); // (a spread would give each a second property store)
    }
    // Longest first among equal starts, so a short tag inside a long one never opens a block.
    planned.sort((a, b) => a.start - b.start || b.end - a.end);

    let current: PlannedTag<T>[] = [];
    let start = 0;
    let end = 0;
    const flush = (): void => {
      if (current.length > 0) blocks.push({ area, start, end, tags: current, requests: chunkRange(start, end, max) });
    };
    for (const item of planned) {
      if (current.length > 0) {
        const mergedEnd = Math.max(end, item.end);
        const overlaps = item.start < end;
        const fits = item.start - end <= options.maxGap && mergedEnd - start <= max;
        // Overlapping tags always share a block (reading the same registers twice buys nothing);
        // a block larger than one request is then simply read in several requests.
        const hitsHole = areaHoles.some((hole) => covers(start, mergedEnd, hole));
        if ((overlaps || fits) && !hitsHole) {
          current.push(item);
          end = mergedEnd;
          continue;
        }
        flush();
      }
      current = [item];
      start = item.start;
      end = item.end;
    }
    flush();
  }
  return { blocks, excluded };
}

/** Builds a block around some planned tags (used when the driver splits a failed block). */
export function blockOf<T>(area: ModbusArea, tags: PlannedTag<T>[], max: number): Block<T> {
  const start = Math.min(...tags.map((t) => t.start));
  const end = Math.max(...tags.map((t) => t.end));
  return { area, start, end, tags, requests: chunkRange(start, end, max) };
}

/**
 * Halves a block to locate an illegal address by bisection. Tags with the same range stay
 * together (they succeed or fail together). Returns undefined when the block is a single range,
 * i.e. the culprit has been found.
 */
export function splitBlock<T>(block: Block<T>, max: number): [Block<T>, Block<T>] | undefined {
  const units = new Map<string, PlannedTag<T>[]>();
  for (const item of block.tags) {
    const key = `${item.start}:${item.end}`;
    const unit = units.get(key);
    if (unit) unit.push(item);
    else units.set(key, [item]);
  }
  if (units.size < 2) return undefined;
  const list = [...units.values()];
  const half = Math.ceil(list.length / 2);
  return [blockOf(block.area, list.slice(0, half).flat(), max), blockOf(block.area, list.slice(half).flat(), max)];
}

const AREA_LABEL: Record<ModbusArea, string> = { holding: 'holding', input: 'input', coil: 'coils', discrete: 'discrete' };

/** "3 requests: holding 0..24 (25 regs), input 100..101 (2 regs), coils 0..15 (16 bits)". */
export function describeBlocks(blocks: readonly Block<unknown>[]): string {
  const parts: string[] = [];
  for (const block of blocks) {
    for (const request of block.requests) {
      const unit = isBitArea(block.area) ? 'bit' : 'reg';
      const plural = request.count === 1 ? '' : 's';
      parts.push(`${AREA_LABEL[block.area]} ${request.start}..${request.start + request.count - 1} (${request.count} ${unit}${plural})`);
    }
  }
  let text = `${parts.length} request${parts.length === 1 ? '' : 's'}`;
  if (parts.length > 0) text += `: ${parts.join(', ')}`;
  return text;
}

/**
 * The plan as it runs, with the known holes that shape it: "2 requests: holding 40..43 (4 regs),
 * holding 47..49 (3 regs); known illegal addresses: holding 45..45 (1 tag not requested)". A hole
 * counts when it lies within the range of this plan's tags in its area.
 */
export function describePlan<T extends PlannableTag>(plan: Plan<T>, holes: readonly Hole[]): string {
  const text = describeBlocks(plan.blocks);
  const spans = new Map<ModbusArea, { start: number; end: number }>();
  const widen = (area: ModbusArea, start: number, end: number): void => {
    const span = spans.get(area);
    spans.set(area, span ? { start: Math.min(span.start, start), end: Math.max(span.end, end) } : { start, end });
  };
  for (const block of plan.blocks) widen(block.area, block.start, block.end);
  for (const { tag } of plan.excluded) {
    const range = tagRange(tag);
    widen(tag.address.area, range.start, range.end);
  }
  const notes = holes
    .filter((hole) => {
      const span = spans.get(hole.area);
      return span !== undefined && hole.start < span.end && span.start < hole.end;
    })
    .sort((a, b) => AREA_ORDER.indexOf(a.area) - AREA_ORDER.indexOf(b.area) || a.start - b.start)
    .map((hole) => {
      const excluded = plan.excluded.filter(({ tag }) => {
        const range = tagRange(tag);
        return tag.address.area === hole.area && covers(range.start, range.end, hole);
      }).length;
      const effect = excluded > 0 ? `${excluded} tag${excluded === 1 ? '' : 's'} not requested` : 'not read across';
      return `${AREA_LABEL[hole.area]} ${hole.start}..${hole.end - 1} (${effect})`;
    });
  return notes.length > 0 ? `${text}; known illegal addresses: ${notes.join(', ')}` : text;
}
