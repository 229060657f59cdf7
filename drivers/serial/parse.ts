// Frames → tag readings. Each tag picks its field out of a frame's text (a regex capture, a
// field of a split, or a fixed-width slice), parses it into its type and takes its quality from a
// status field when it has a quality rule. A pattern shared by several tags of a group runs once
// per frame.
import type { Quality, TagReading, TagValue } from '../../src/pipeline/driver.js';
import { regexGroups, type SerialTag, type SerialType } from './config.js';
import { showBytes } from './text.js';

type Selector =
  | { kind: 'regex'; pattern: RegExp; capture: string | number }
  | { kind: 'split'; separator: string; index: number }
  | { kind: 'slice'; start: number; end: number | undefined }
  | { kind: 'whole' };

interface QualityRule {
  selector: Selector;
  good: ReadonlySet<string>;
  uncertain: ReadonlySet<string>;
  bad: ReadonlySet<string>;
}

export interface CompiledTag {
  readonly tag: SerialTag;
  readonly match: RegExp | undefined;
  readonly selector: Selector;
  readonly quality: QualityRule | undefined;
  readonly parse: (text: string) => TagValue | { problem: string };
}

/** What one frame gave a tag: a reading, or nothing when the frame is not for it (its `match`). */
export type FrameResult = TagReading | undefined;

const DEFAULT_TRUE = new Set(['1', 'true', 'on', 'yes']);
const DEFAULT_FALSE = new Set(['0', 'false', 'off', 'no']);
const NUMBER = /^[+-]?\s*(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?$/;

/** Patterns are shared between tags, so each distinct one runs once per frame. */
class PatternCache {
  private readonly patterns = new Map<string, RegExp>();
  get(source: string): RegExp {
    let pattern = this.patterns.get(source);
    if (!pattern) {
      pattern = new RegExp(source);
      this.patterns.set(source, pattern);
    }
    return pattern;
  }
}

export function compileTags(tags: readonly SerialTag[]): CompiledTag[] {
  const cache = new PatternCache();
  return tags.map((tag) => {
    const selector = selectorOf(tag, cache);
    const rule = tag.quality;
    let quality: QualityRule | undefined;
    if (rule) {
      // The quality field's selector defaults to the tag's own: a capture of the tag's regex, a field of its split.
      const inherited = {
        regex: rule.regex ?? (rule.split === undefined && rule.start === undefined ? tag.regex : undefined),
        capture: rule.capture,
        split: rule.split ?? (rule.regex === undefined && rule.start === undefined ? tag.split : undefined),
        index: rule.index,
        start: rule.start,
        length: rule.length,
      };
      quality = {
        selector: selectorOf(inherited, cache),
        good: new Set(rule.good),
        uncertain: new Set(rule.uncertain),
        bad: new Set(rule.bad),
      };
    }
    return { tag, match: tag.match === undefined ? undefined : cache.get(tag.match), selector, quality, parse: parserOf(tag) };
  });
}

function selectorOf(
  spec: {
    regex?: string | undefined;
    capture?: string | number | undefined;
    split?: string | undefined;
    index?: number | undefined;
    start?: number | undefined;
    length?: number | undefined;
  },
  cache: PatternCache,
): Selector {
  if (spec.regex !== undefined) {
    const pattern = cache.get(spec.regex);
    const groups = regexGroups(spec.regex);
    const capture = spec.capture ?? (groups.names.includes('value') ? 'value' : groups.count >= 1 ? 1 : 0);
    return { kind: 'regex', pattern, capture };
  }
  if (spec.split !== undefined) return { kind: 'split', separator: spec.split, index: spec.index ?? 0 };
  if (spec.start !== undefined)
    return { kind: 'slice', start: spec.start, end: spec.length === undefined ? undefined : spec.start + spec.length };
  return { kind: 'whole' };
}

function parserOf(tag: SerialTag): (text: string) => TagValue | { problem: string } {
  const type: SerialType = tag.type;
  switch (type) {
    case 'string':
      return (text) => text;
    case 'bool': {
      const trueValues = tag.trueValues ? new Set(tag.trueValues) : undefined;
      const falseValues = tag.falseValues ? new Set(tag.falseValues) : undefined;
      return (raw) => {
        const text = raw.trim();
        const folded = text.toLowerCase();
        if (trueValues ? trueValues.has(text) : DEFAULT_TRUE.has(folded)) return true;
        if (falseValues ? falseValues.has(text) : DEFAULT_FALSE.has(folded)) return false;
        return { problem: `not a bool: ${JSON.stringify(text)}` };
      };
    }
    case 'float64': {
      const comma = tag.decimal === ',';
      return (raw) => {
        const text = (comma ? raw.replace(',', '.') : raw).trim();
        if (!NUMBER.test(text)) return { problem: `not a number: ${JSON.stringify(raw.trim())}` };
        return Number(text.replace(/\s+/g, ''));
      };
    }
    case 'int32':
    case 'int64': {
      const base = tag.base;
      const digits =
        base === 16 ? /^[+-]?\s*[0-9A-Fa-f]+$/ : base === 8 ? /^[+-]?\s*[0-7]+$/ : base === 2 ? /^[+-]?\s*[01]+$/ : /^[+-]?\s*\d+$/;
      const prefix = base === 16 ? '0x' : base === 8 ? '0o' : base === 2 ? '0b' : '';
      return (raw) => {
        const text = raw.trim().replace(/\s+/g, '');
        if (!digits.test(text)) return { problem: `not a base-${base} integer: ${JSON.stringify(raw.trim())}` };
        const negative = text.startsWith('-');
        const magnitude = BigInt(prefix + text.replace(/^[+-]/, ''));
        const value = negative ? -magnitude : magnitude;
        if (type === 'int32') {
          if (value < -2147483648n || value > 2147483647n) return { problem: `${value} does not fit int32` };
          return Number(value);
        }
        if (value < -(2n ** 63n) || value >= 2n ** 63n) return { problem: `${value} does not fit int64` };
        return value;
      };
    }
  }
}

/** The text a selector picks from a frame, or why it could not; `matches` holds each pattern's result for this frame. */
function select(selector: Selector, text: string, matches: Map<RegExp, RegExpExecArray | null>): string | { problem: string } {
  switch (selector.kind) {
    case 'whole':
      return text;
    case 'slice':
      if (text.length < selector.start + 1)
        return { problem: `the frame has ${text.length} characters, the field starts at ${selector.start}` };
      // A frame that ends inside a fixed-width field lost its end: "+0021.3" cut to "+00" is not 0.
      if (selector.end !== undefined && text.length < selector.end)
        return { problem: `the frame has ${text.length} characters, the field ends at ${selector.end}` };
      return text.slice(selector.start, selector.end);
    case 'split': {
      const fields = text.split(selector.separator);
      const field = fields[selector.index];
      if (field === undefined) return { problem: `the frame has ${fields.length} fields, not ${selector.index + 1}` };
      return field;
    }
    case 'regex': {
      let match = matches.get(selector.pattern);
      if (match === undefined) {
        match = selector.pattern.exec(text);
        matches.set(selector.pattern, match);
      }
      if (!match) return { problem: `does not match /${selector.pattern.source}/` };
      const value = typeof selector.capture === 'number' ? match[selector.capture] : match.groups?.[selector.capture];
      if (value === undefined)
        return { problem: `group ${JSON.stringify(selector.capture)} of /${selector.pattern.source}/ matched nothing` };
      return value;
    }
  }
}

/**
 * Parses one frame into readings of `tags`. A tag whose `match` the frame fails gets none (the
 * frame is not for it) unless `required`, when it is bad: a reply must carry its group's tags.
 */
export function parseFrame(
  tags: readonly CompiledTag[],
  frame: Buffer,
  text: string,
  sourceTs: number | undefined,
  required: boolean,
): FrameResult[] {
  const matches = new Map<RegExp, RegExpExecArray | null>();
  const results: FrameResult[] = [];
  for (const compiled of tags) {
    const name = compiled.tag.name;
    const bad = (why: string): TagReading => ({ tag: name, quality: 'bad', reason: `${why} in ${showBytes(frame)}`, code: 'bad-reply' });
    if (compiled.match) {
      let match = matches.get(compiled.match);
      if (match === undefined) {
        match = compiled.match.exec(text);
        matches.set(compiled.match, match);
      }
      if (!match) {
        results.push(required ? bad(`the reply does not match /${compiled.match.source}/`) : undefined);
        continue;
      }
    }
    const field = select(compiled.selector, text, matches);
    if (typeof field !== 'string') {
      results.push(bad(`unparsed: ${field.problem}`));
      continue;
    }
    let quality: Quality = 'good';
    let reason: string | undefined;
    if (compiled.quality) {
      const status = select(compiled.quality.selector, text, matches);
      if (typeof status !== 'string') {
        results.push(bad(`no status field: ${status.problem}`));
        continue;
      }
      const key = status.trim();
      if (compiled.quality.good.has(key)) quality = 'good';
      else if (compiled.quality.uncertain.has(key)) {
        quality = 'uncertain';
        reason = `status ${JSON.stringify(key)}`;
      } else {
        results.push(bad(`status ${JSON.stringify(key)} is ${compiled.quality.bad.has(key) ? 'bad' : 'not a listed status'}`));
        continue;
      }
    }
    const value = compiled.parse(field);
    if (typeof value === 'object' && !Array.isArray(value) && value !== null && 'problem' in value) {
      results.push(bad(`unparsed: ${value.problem}`));
      continue;
    }
    const reading: TagReading = { tag: name, value, quality };
    if (reason !== undefined) reading.reason = reason;
    if (sourceTs !== undefined) reading.sourceTs = sourceTs;
    results.push(reading);
  }
  return results;
}

/** Frame bytes → the text tags parse, in the device's encoding. */
export function frameText(frame: Buffer, encoding: 'latin1' | 'ascii' | 'utf8' | 'hex'): string {
  return encoding === 'hex' ? frame.toString('hex').toUpperCase() : frame.toString(encoding);
}
