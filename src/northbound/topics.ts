// Topic templates: "acme/{site}/{line}/{device}/{tag}" compiled once at start into a render
// function, so the poll loop only concatenates strings.

export const RESERVED_PLACEHOLDERS = ['gateway', 'device', 'group', 'tag'] as const;
export type TopicVariables = Record<string, string>;

export interface TopicTemplate {
  readonly source: string;
  readonly placeholders: readonly string[];
  render(variables: TopicVariables): string;
}

const PLACEHOLDER = /\{([A-Za-z][A-Za-z0-9_]*)\}/g;

/** Splits a template into literal text and placeholders. Throws on malformed braces. */
export function compileTopicTemplate(source: string): TopicTemplate {
  const parts: Array<{ literal: string } | { variable: string }> = [];
  const placeholders: string[] = [];
  let last = 0;
  for (const match of source.matchAll(PLACEHOLDER)) {
    if (match.index > last) parts.push({ literal: source.slice(last, match.index) });
    parts.push({ variable: match[1]! });
    if (!placeholders.includes(match[1]!)) placeholders.push(match[1]!);
    last = match.index + match[0].length;
  }
  if (last < source.length) parts.push({ literal: source.slice(last) });
  const stray = parts.some((part) => 'literal' in part && /[{}]/.test(part.literal));
  if (stray) throw new Error(`malformed placeholder in "${source}"; placeholders look like {device}`);
  return {
    source,
    placeholders,
    render(variables) {
      let topic = '';
      for (const part of parts) {
        if ('literal' in part) topic += part.literal;
        else {
          const value = variables[part.variable];
          if (value === undefined) throw new Error(`placeholder {${part.variable}} has no value`);
          topic += value;
        }
      }
      return topic;
    },
  };
}

/** Why a topic can't be published to, or undefined if it can. */
export function topicProblem(topic: string): string | undefined {
  if (topic.length === 0) return 'the topic is empty';
  if (/[+#]/.test(topic)) return `"${topic}" contains an MQTT wildcard (+ or #); published topics can't`;
  if (topic.includes('\u0000')) return `"${topic}" contains a NUL character`;
  if (topic.startsWith('$')) return `"${topic}" starts with "$", which brokers reserve for themselves ($SYS)`;
  if (topic.split('/').some((level) => level.length === 0)) return `"${topic}" has an empty level ("//" or a leading/trailing "/")`;
  if (Buffer.byteLength(topic) > 65535) return 'the topic is longer than 65535 bytes';
  return undefined;
}

/** MQTT topic filter matching: "+" one level, "#" the rest (including the parent level itself). */
export function topicMatches(filter: string, topic: string): boolean {
  const filterLevels = filter.split('/');
  const topicLevels = topic.split('/');
  for (let index = 0; index < filterLevels.length; index++) {
    const level = filterLevels[index]!;
    if (level === '#') return true;
    if (index >= topicLevels.length) return false;
    if (level !== '+' && level !== topicLevels[index]) return false;
  }
  return filterLevels.length === topicLevels.length;
}

/** Why a subscription filter is malformed, or undefined when it is fine. */
export function filterProblem(filter: string): string | undefined {
  if (filter.length === 0) return 'the filter is empty';
  const levels = filter.split('/');
  for (let index = 0; index < levels.length; index++) {
    const level = levels[index]!;
    if (level.includes('#') && (level !== '#' || index !== levels.length - 1))
      return `"${filter}": "#" must be a whole level and the last one`;
    if (level.includes('+') && level !== '+') return `"${filter}": "+" must be a whole level`;
  }
  return undefined;
}
