// Reading a config file: JSON with comments (JSONC) → ${ENV} interpolation → zod → semantic checks.
// Every problem is reported on its own line with its JSON path, what is wrong and what is expected.
import { readFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { ParseErrorCode, parseTree, type Node as JsonNode, type ParseError } from 'jsonc-parser';
import { z } from 'zod';
import { compileTopicTemplate, filterProblem, RESERVED_PLACEHOLDERS, topicProblem, type TopicTemplate } from '../northbound/topics.js';
import { commandTopic, renderStatusTopic, tagTopicSource, topicVariables } from '../northbound/json/topics.js';
import { configJsonSchema, configSchema, httpSection, type Config } from './schema.js';
import { SECRET_KEY } from './common.js';

export type JsonPath = ReadonlyArray<string | number>;

export interface ConfigProblem {
  path: JsonPath;
  message: string;
}

export class ConfigError extends Error {
  readonly file: string;
  readonly problems: ConfigProblem[];
  constructor(file: string, problems: ConfigProblem[]) {
    super(formatProblems(file, problems));
    this.name = 'ConfigError';
    this.file = file;
    this.problems = problems;
  }
}

export interface LoadedConfig {
  file: string;
  config: Config;
  /** gateway.dataDir resolved against the config file's folder. */
  dataDir: string;
}

/** Reads, interpolates, validates and checks a config file. Throws ConfigError listing every problem. */
export function loadConfigFile(file: string, env: NodeJS.ProcessEnv = process.env): LoadedConfig {
  const config = parseConfigText(readConfigText(file), file, env);
  return { file, config, dataDir: resolve(dirname(resolve(file)), config.gateway.dataDir) };
}

function readConfigText(file: string): string {
  try {
    return readFileSync(file, 'utf8');
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    const why = code === 'ENOENT' ? 'no such file' : code === 'EACCES' ? 'permission denied' : String(error);
    throw new ConfigError(file, [{ path: [], message: `cannot read the file: ${why}` }]);
  }
}

export function parseConfigText(text: string, file = '<config>', env: NodeJS.ProcessEnv = process.env): Config {
  const tree = parseJsoncTree(text, file);
  // A key written twice (a block pasted into a file that has it already) would silently replace
  // the first: refused, with where each one is.
  const duplicates = duplicateKeys(tree, text);
  if (duplicates.length > 0) throw new ConfigError(file, duplicates);
  const raw = tree === undefined ? undefined : nodeValue(tree);
  const envProblems: ConfigProblem[] = [];
  const interpolated = interpolateEnv(raw, env, [], envProblems);
  if (envProblems.length > 0) throw new ConfigError(file, envProblems);

  const result = configSchema.safeParse(interpolated, { reportInput: true });
  if (!result.success) {
    // Duplicate names are found on the raw file too, so one run lists them beside the schema errors.
    const problems = [...result.error.issues.flatMap((issue) => describeIssue(issue, interpolated)), ...checkDuplicateNames(interpolated)];
    throw new ConfigError(file, problems);
  }
  const problems = checkSemantics(result.data);
  if (problems.length > 0) throw new ConfigError(file, problems);
  ENV_REFERENCES.set(result.data, envReferences(raw, []));
  return result.data;
}

/** Per parsed config, the values the file wrote with ${VAR} references: their JSON path ("a.b.0") → the text as written. */
const ENV_REFERENCES = new WeakMap<Config, Map<string, string>>();

/** Where a config took values from environment variables, as written in its file (the console shows those, never the values). */
export function envReferencesOf(config: Config): ReadonlyMap<string, string> {
  return ENV_REFERENCES.get(config) ?? new Map();
}

function envReferences(value: unknown, path: JsonPath, found = new Map<string, string>()): Map<string, string> {
  if (typeof value === 'string' && /\$\{[A-Za-z_]/.test(value)) found.set(path.join('.'), value);
  else if (Array.isArray(value)) value.forEach((item, index) => envReferences(item, [...path, index], found));
  else if (value !== null && typeof value === 'object')
    for (const [key, item] of Object.entries(value)) envReferences(item, [...path, key], found);
  return found;
}

/**
 * Only the `http` section of a config file, with its defaults: all `plc2mqtt health` needs to find
 * the running gateway. Problems elsewhere in the file — invalid values, a syntax error the parser
 * can step over, `${ENV}` variables of other sections that are unset (a cron job lacks the
 * service's environment) — say nothing about the running gateway and are ignored.
 */
export function loadHttpSection(file: string, env: NodeJS.ProcessEnv = process.env): Config['http'] {
  const text = readConfigText(file).replace(/^\uFEFF/, ' ');
  const errors: ParseError[] = [];
  const tree = parseTree(text, errors, PARSE_OPTIONS);
  // With "http" written twice (a gateway started before such files were refused, or the file
  // edited since), the gateway took the last one, as JSON.parse does: so does health.
  const property = tree?.type === 'object' ? tree.children?.findLast((child) => child.children?.[0]?.value === 'http') : undefined;
  const node = property?.children?.[1];
  // A syntax error inside the section, or one that may have hidden it, leaves its address unknown.
  const spoiling = errors.find(
    (error) => property === undefined || (error.offset >= property.offset && error.offset <= property.offset + property.length),
  );
  if (spoiling !== undefined)
    throw new ConfigError(file, [
      {
        path: property === undefined ? [] : ['http'],
        message: `not valid JSON: ${describeSyntaxError(text, spoiling)} at ${lineAndColumn(text, spoiling.offset)}`,
      },
    ]);
  const problems: ConfigProblem[] = [];
  const raw = { http: interpolateEnv(node === undefined ? undefined : nodeValue(node), env, ['http'], problems) };
  if (problems.length > 0) throw new ConfigError(file, problems);
  const result = z.object({ http: httpSection }).safeParse(raw, { reportInput: true });
  if (!result.success)
    throw new ConfigError(
      file,
      result.error.issues.flatMap((issue) => describeIssue(issue, raw)),
    );
  return result.data.http;
}

// ---------------------------------------------------------------- JSON with comments

const PARSE_OPTIONS = { allowTrailingComma: true, disallowComments: false, allowEmptyContent: false } as const;

/**
 * Parses JSON with comments and trailing commas (JSONC, as VS Code's settings and the README's
 * examples). Throws a ConfigError naming line and column of the first syntax error.
 */
export function parseJsonc(text: string, file: string): unknown {
  const tree = parseJsoncTree(text, file);
  return tree === undefined ? undefined : nodeValue(tree);
}

function parseJsoncTree(text: string, file: string): JsonNode | undefined {
  const errors: ParseError[] = [];
  // A byte order mark (Windows editors write one) becomes a space, so columns stay as the editor shows them.
  const tree = parseTree(text.replace(/^\uFEFF/, ' '), errors, PARSE_OPTIONS);
  const first = errors[0];
  if (first !== undefined)
    throw new ConfigError(file, [
      { path: [], message: `not valid JSON: ${describeSyntaxError(text, first)} at ${lineAndColumn(text, first.offset)}` },
    ]);
  return tree;
}

/**
 * Keys written more than once in one object, anywhere in the file. JSON.parse (and nodeValue)
 * keep the last one without a word, so a section pasted from the README into a file that has it
 * already would silently replace the first one.
 */
function duplicateKeys(tree: JsonNode | undefined, text: string): ConfigProblem[] {
  const problems: ConfigProblem[] = [];
  const walk = (node: JsonNode, path: JsonPath): void => {
    if (node.type === 'array') {
      (node.children ?? []).forEach((item, index) => walk(item, [...path, index]));
      return;
    }
    if (node.type !== 'object') return;
    const firstKeys = new Map<string, JsonNode>();
    for (const property of node.children ?? []) {
      const [key, value] = property.children ?? [];
      if (key === undefined) continue;
      const name = String(key.value);
      const first = firstKeys.get(name);
      if (first === undefined) firstKeys.set(name, key);
      else {
        problems.push({
          path: [...path, name],
          message: `"${name}" written again at ${lineAndColumn(text, key.offset)} (first at ${lineAndColumn(text, first.offset)}); a key may appear only once in an object: merge the two or remove one (otherwise the last would silently replace the first)`,
        });
      }
      if (value !== undefined) walk(value, [...path, name]);
    }
  };
  if (tree !== undefined) walk(tree, []);
  return problems;
}

/**
 * The value of a parsed node. Keys become own properties, as with JSON.parse: a "__proto__" key is
 * a key like any other (and reported as unknown), never the prototype of the object.
 */
function nodeValue(node: JsonNode): unknown {
  switch (node.type) {
    case 'object': {
      const object: Record<string, unknown> = {};
      for (const property of node.children ?? []) {
        const [key, value] = property.children ?? [];
        if (key === undefined || value === undefined) continue;
        Object.defineProperty(object, String(key.value), { value: nodeValue(value), enumerable: true, writable: true, configurable: true });
      }
      return object;
    }
    case 'array':
      return (node.children ?? []).map(nodeValue);
    default:
      return node.value as unknown;
  }
}

function describeSyntaxError(text: string, error: ParseError): string {
  const found = text.slice(error.offset, error.offset + Math.max(1, error.length));
  switch (error.error) {
    case ParseErrorCode.InvalidSymbol:
      return `unexpected ${JSON.stringify(found)}${found.startsWith("'") ? ': names and strings take double quotes' : ''}`;
    case ParseErrorCode.InvalidNumberFormat:
    case ParseErrorCode.UnexpectedEndOfNumber:
      return 'not a valid number';
    case ParseErrorCode.PropertyNameExpected:
      return 'expected a name in double quotes';
    case ParseErrorCode.ValueExpected:
      return text.trim() === '' ? 'the file is empty; expected a JSON object' : 'expected a value';
    case ParseErrorCode.ColonExpected:
      return 'expected a colon (:) after the name';
    case ParseErrorCode.CommaExpected:
      return 'expected a comma (,) between two entries';
    case ParseErrorCode.CloseBraceExpected:
      return 'expected } to close the object';
    case ParseErrorCode.CloseBracketExpected:
      return 'expected ] to close the array';
    case ParseErrorCode.EndOfFileExpected:
      return 'unexpected text after the end of the config';
    case ParseErrorCode.InvalidCommentToken:
      return 'invalid comment';
    case ParseErrorCode.UnexpectedEndOfComment:
      return 'a /* comment is not closed with */';
    case ParseErrorCode.UnexpectedEndOfString:
      return 'a string is not closed (expected ")';
    case ParseErrorCode.InvalidUnicode:
      return 'invalid \\u escape in a string (expected 4 hex digits)';
    case ParseErrorCode.InvalidEscapeCharacter:
      return 'invalid escape in a string (after \\ come only " \\ / b f n r t or uXXXX)';
    case ParseErrorCode.InvalidCharacter:
      return 'a control character (line break, tab) inside a string; write it as \\n or \\t';
    default:
      return `unexpected ${JSON.stringify(found)}`;
  }
}

/** "line 3, column 7" (both 1-based; columns count characters). */
function lineAndColumn(text: string, offset: number): string {
  const before = text.slice(0, offset);
  const line = before.split('\n').length;
  const column = offset - before.lastIndexOf('\n');
  return `line ${line}, column ${column}`;
}

// ---------------------------------------------------------------- environment interpolation

const ENV_REFERENCE = /\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}/g;

/** Replaces ${VAR} and ${VAR:-default} in every string value; "$$" stands for a literal "$". */
export function interpolateEnv(value: unknown, env: NodeJS.ProcessEnv, path: JsonPath, problems: ConfigProblem[]): unknown {
  if (typeof value === 'string') {
    return value.replace(ENV_REFERENCE, (whole, variable: string | undefined, fallback: string | undefined) => {
      if (whole === '$$') return '$';
      const found = env[variable!];
      // As in the shell: ${VAR:-default} also replaces an empty value, ${VAR} keeps it.
      if (found !== undefined && (found !== '' || fallback === undefined)) return found;
      if (fallback !== undefined) return fallback;
      problems.push({ path, message: `environment variable ${variable} is not set (write \${${variable}:-default} to give a default)` });
      return whole;
    });
  }
  if (Array.isArray(value)) return value.map((item, index) => interpolateEnv(item, env, [...path, index], problems));
  if (value !== null && typeof value === 'object') {
    return Object.fromEntries(Object.entries(value).map(([key, item]) => [key, interpolateEnv(item, env, [...path, key], problems)]));
  }
  return value;
}

// ---------------------------------------------------------------- zod issues → readable lines

type Issue = z.core.$ZodIssue;

function describeIssue(issue: Issue, root: unknown): ConfigProblem[] {
  const path = issue.path.filter((key): key is string | number => typeof key !== 'symbol');
  const input = valueAt(root, path);
  switch (issue.code) {
    case 'unrecognized_keys': {
      const known = knownKeysAt(path, root);
      return issue.keys.map((key) => {
        const suggestion = closest(key, known);
        const hint = suggestion ? `; did you mean "${suggestion}"?` : known.length > 0 ? `; allowed here: ${known.join(', ')}` : '';
        return { path: [...path, key], message: `unknown key "${key}"${hint}` };
      });
    }
    case 'invalid_type': {
      if (input === undefined) return [{ path, message: `is required (expected ${issue.expected})` }];
      const hint = issue.expected === 'number' && typeof input === 'string' && /^-?\d/.test(input) ? ' (write numbers without quotes)' : '';
      return [{ path, message: `expected ${issue.expected}, got ${shown(input, path)}${hint}` }];
    }
    case 'invalid_value': {
      const options = issue.values.map((value) => JSON.stringify(value));
      if (input === undefined) return [{ path, message: `is required (one of ${options.join(', ')})` }];
      const suggestion = typeof input === 'string' ? closest(input, issue.values.map(String)) : undefined;
      const hint = suggestion ? `; did you mean "${suggestion}"?` : '';
      return [{ path, message: `got ${shown(input, path)}, expected one of ${options.join(', ')}${hint}` }];
    }
    case 'invalid_union': {
      if ('discriminator' in issue && issue.discriminator) {
        const options = ((issue as { options?: unknown[] }).options ?? []).map(String);
        const discriminatorPath = path[path.length - 1] === issue.discriminator ? path : [...path, issue.discriminator];
        const value = valueAt(root, discriminatorPath);
        if (value === undefined) return [{ path: discriminatorPath, message: `is required (one of ${options.join(', ')})` }];
        const suggestion = typeof value === 'string' ? closest(value, options) : undefined;
        return [
          {
            path: discriminatorPath,
            message: `unknown ${String(issue.discriminator)} ${describeValue(value)}, expected one of ${options.join(', ')}${suggestion ? `; did you mean "${suggestion}"?` : ''}`,
          },
        ];
      }
      // A union (e.g. number | duration string): report the branch that accepted the input's type.
      const branches = issue.errors.filter((branch) => !branch.some((sub) => sub.code === 'invalid_type' && sub.path.length === 0));
      if (branches.length > 0) {
        return branches[0]!.flatMap((sub) => describeIssue({ ...sub, path: [...issue.path, ...sub.path] } as Issue, root));
      }
      const expected = [
        ...new Set(
          issue.errors.flatMap((branch) =>
            branch.filter((sub) => sub.code === 'invalid_type').map((sub) => (sub as { expected: string }).expected),
          ),
        ),
      ];
      return [
        {
          path,
          message:
            input === undefined
              ? `is required (expected ${expected.join(' or ')})`
              : `expected ${expected.join(' or ')}, got ${shown(input, path)}`,
        },
      ];
    }
    case 'too_small':
    case 'too_big': {
      const bound = Number(issue.code === 'too_small' ? issue.minimum : issue.maximum);
      const inclusive = issue.inclusive !== false;
      const op = issue.code === 'too_small' ? (inclusive ? 'at least' : 'more than') : inclusive ? 'at most' : 'less than';
      if (issue.origin === 'array') {
        return [
          {
            path,
            message: `must have ${op} ${bound} item${bound === 1 ? '' : 's'}, got ${Array.isArray(input) ? input.length : shown(input, path)}`,
          },
        ];
      }
      const what = issue.origin === 'string' ? `${bound} characters long` : String(bound);
      return [{ path, message: `must be ${op} ${what}, got ${shown(input, path)}` }];
    }
    case 'invalid_format':
      return [
        {
          path,
          message: `${issue.message.startsWith('Invalid') ? `not a valid ${issue.format}` : issue.message}, got ${shown(input, path)}`,
        },
      ];
    default:
      return [{ path, message: issue.message }];
  }
}

function valueAt(root: unknown, path: JsonPath): unknown {
  let node: unknown = root;
  for (const key of path) {
    if (node === null || typeof node !== 'object') return undefined;
    node = (node as Record<string | number, unknown>)[key];
  }
  return node;
}

/** A value for a message, unless it sits under a secret's key (a password typed in the wrong field must not reach logs or the console). */
function shown(value: unknown, path: readonly (string | number)[]): string {
  const key = path.at(-1);
  return typeof key === 'string' && SECRET_KEY.test(key) ? 'a value that is not shown (a secret)' : describeValue(value);
}

function describeValue(value: unknown): string {
  if (value === undefined) return 'nothing';
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'an array';
  if (typeof value === 'object') return 'an object';
  const text = JSON.stringify(value);
  return text.length > 60 ? `${text.slice(0, 57)}…` : text;
}

type SchemaNode = {
  properties?: Record<string, SchemaNode>;
  items?: SchemaNode;
  anyOf?: SchemaNode[];
  oneOf?: SchemaNode[];
  additionalProperties?: SchemaNode | boolean;
  const?: unknown;
  allOf?: SchemaNode[];
};

/** The keys the schema allows at a path, found by walking the generated JSON Schema beside the input. */
function knownKeysAt(path: JsonPath, root: unknown): string[] {
  let node: SchemaNode | undefined = configJsonSchema() as SchemaNode;
  for (let depth = 0; depth <= path.length && node; depth++) {
    node = pickBranch(node, valueAt(root, path.slice(0, depth)));
    if (depth === path.length || !node) break;
    const key = path[depth]!;
    node =
      typeof key === 'number'
        ? node.items
        : (node.properties?.[key] ?? (typeof node.additionalProperties === 'object' ? node.additionalProperties : undefined));
  }
  return node?.properties ? Object.keys(node.properties) : [];
}

function pickBranch(node: SchemaNode, value: unknown): SchemaNode {
  const branches = node.anyOf ?? node.oneOf ?? node.allOf;
  if (!branches) return node;
  const objects = branches.filter((branch) => branch.properties);
  const matching = objects.find((branch) =>
    Object.entries(branch.properties!).every(
      ([key, property]) =>
        property.const === undefined ||
        (value !== null && typeof value === 'object' && (value as Record<string, unknown>)[key] === property.const),
    ),
  );
  return matching ?? objects[0] ?? node;
}

/** The closest candidate by edit distance, if it is close enough to be a typo. */
export function closest(word: string, candidates: readonly string[]): string | undefined {
  let best: string | undefined;
  let bestDistance = Infinity;
  for (const candidate of candidates) {
    const distance = editDistance(word.toLowerCase(), candidate.toLowerCase());
    if (distance < bestDistance) {
      best = candidate;
      bestDistance = distance;
    }
  }
  return best !== undefined && bestDistance <= Math.max(1, Math.floor(best.length / 3)) ? best : undefined;
}

/** Edit distance where swapping two neighbouring letters ("prot" for "port") counts as one edit. */
function editDistance(a: string, b: string): number {
  const d: number[][] = Array.from({ length: a.length + 1 }, (_, i) =>
    Array.from({ length: b.length + 1 }, (_, j) => (i === 0 ? j : j === 0 ? i : 0)),
  );
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      let best = Math.min(d[i - 1]![j]! + 1, d[i]![j - 1]! + 1, d[i - 1]![j - 1]! + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) best = Math.min(best, d[i - 2]![j - 2]! + 1);
      d[i]![j] = best;
    }
  }
  return d[a.length]![b.length]!;
}

// ---------------------------------------------------------------- checks zod can't express

export function checkSemantics(config: Config): ConfigProblem[] {
  const problems: ConfigProblem[] = [];
  const add = (path: JsonPath, message: string) => problems.push({ path, message });

  for (const [key, source] of [
    ['tag', config.topics.tag],
    ['batch', config.topics.batch],
    ['status', config.topics.status],
  ] as const) {
    try {
      const template = compileTopicTemplate(source);
      if (key === 'batch' && template.placeholders.includes('tag'))
        add(['topics', key], 'a batch topic carries every tag of a group: it cannot contain {tag}');
      if (key === 'status') {
        const unknown = template.placeholders.filter((placeholder) => placeholder !== 'gateway');
        if (unknown.length > 0) add(['topics', key], `the status topic may only use {gateway}, not {${unknown.join('}, {')}}`);
      }
    } catch (error) {
      add(['topics', key], (error as Error).message);
    }
  }

  if (config.uplink) checkUplink(config.uplink, add);
  checkBroker(config.broker, add);
  checkHttpPort(config, add);

  const deviceNames = new Map<string, number>();
  const topicOwners = new Map<string, string>();
  const claimTopic = (topic: string, owner: string, path: JsonPath) => {
    const previous = topicOwners.get(topic);
    if (previous) add(path, `topic "${topic}" is already the topic of ${previous}; give one of them another name or topic`);
    else topicOwners.set(topic, owner);
  };
  // The retained status topic is taken first: a tag publishing there would overwrite online/offline.
  try {
    claimTopic(renderStatusTopic(config.topics.status, config.gateway.name), 'the gateway status (topics.status)', ['topics', 'status']);
  } catch {
    // reported above
  }

  config.devices.forEach((device, deviceIndex) => {
    const devicePath = ['devices', deviceIndex];
    const firstIndex = deviceNames.get(device.name);
    if (firstIndex !== undefined) add([...devicePath, 'name'], `duplicate device name "${device.name}" (also devices[${firstIndex}])`);
    else deviceNames.set(device.name, deviceIndex);

    for (const key of Object.keys(device.meta)) {
      if ((RESERVED_PLACEHOLDERS as readonly string[]).includes(key))
        add([...devicePath, 'meta', key], `"${key}" is a built-in placeholder; choose another meta key`);
    }

    const tagNames = new Map<string, number>();
    device.tags.forEach((tag, tagIndex) => {
      const tagPath = [...devicePath, 'tags', tagIndex];
      const firstTag = tagNames.get(tag.name);
      if (firstTag !== undefined)
        add([...tagPath, 'name'], `duplicate tag name "${tag.name}" in device "${device.name}" (also tags[${firstTag}])`);
      else tagNames.set(tag.name, tagIndex);

      const group = tag.group ?? 'default';
      if (tag.group !== undefined && !(tag.group in device.pollGroups)) {
        const defined = Object.keys(device.pollGroups);
        add(
          [...tagPath, 'group'],
          `unknown poll group "${tag.group}"; device "${device.name}" defines ${defined.length > 0 ? defined.join(', ') : 'no pollGroups'}`,
        );
      }
      const where = tag.topic !== undefined ? [...tagPath, 'topic'] : ['topics', 'tag'];
      if (device.publish === 'per-tag' || tag.topic !== undefined || tag.writable) {
        // Rendered as the gateway renders it (northbound/json/topics.ts), with the problems reported.
        const topic = renderChecked({
          source: tagTopicSource(config.topics, tag),
          variables: topicVariables(config.gateway.name, device, group, tag.name),
          path: where,
          device: device.name,
          add,
        });
        if (topic !== undefined && (device.publish === 'per-tag' || tag.topic !== undefined))
          claimTopic(topic, `devices[${deviceIndex}].tags[${tagIndex}] (${device.name}/${tag.name})`, tagPath);
        // A command topic that is another tag's data topic would turn its values into writes.
        if (topic !== undefined && tag.writable)
          claimTopic(
            commandTopic(config.topics, topic),
            `the command topic of devices[${deviceIndex}].tags[${tagIndex}] (${device.name}/${tag.name})`,
            tagPath,
          );
      }
      if (tag.write !== undefined) {
        if (!tag.writable) add([...tagPath, 'write'], 'write checks apply to writable tags only; add "writable": true or remove "write"');
        if (tag.write.min !== undefined && tag.write.max !== undefined && tag.write.min > tag.write.max)
          add([...tagPath, 'write', 'min'], `min (${tag.write.min}) is greater than max (${tag.write.max})`);
      }
    });

    const usedGroups = new Set(device.tags.map((tag) => tag.group ?? 'default'));
    for (const group of Object.keys(device.pollGroups)) {
      if (!usedGroups.has(group))
        add(
          [...devicePath, 'pollGroups', group],
          `poll group "${group}" is used by no tag; set "group": "${group}" on the tags it should poll, or remove it`,
        );
    }

    if (device.publish === 'batch') {
      const groups = usedGroups;
      for (const group of groups) {
        const topic = renderChecked({
          source: config.topics.batch,
          variables: topicVariables(config.gateway.name, device, group),
          path: ['topics', 'batch'],
          device: device.name,
          add,
        });
        if (topic !== undefined) claimTopic(topic, `the batch of devices[${deviceIndex}] group "${group}"`, devicePath);
      }
    }
  });

  const simulatorNames = new Set<string>();
  const simulatorPorts = new Set<string>();
  config.simulators.forEach((simulator, index) => {
    if (simulatorNames.has(simulator.name)) add(['simulators', index, 'name'], `duplicate simulator name "${simulator.name}"`);
    simulatorNames.add(simulator.name);
    const endpoint = `${simulator.host}:${simulator.port}`;
    if (simulator.port !== 0 && simulatorPorts.has(endpoint))
      add(['simulators', index, 'port'], `another simulator already listens on ${endpoint}`);
    simulatorPorts.add(endpoint);
  });

  return problems;
}

/** Duplicate device names, and tag names within a device, read straight from the (unvalidated) file. */
function checkDuplicateNames(raw: unknown): ConfigProblem[] {
  const problems: ConfigProblem[] = [];
  const devices = valueAt(raw, ['devices']);
  if (!Array.isArray(devices)) return problems;
  const deviceNames = new Map<string, number>();
  devices.forEach((device: unknown, deviceIndex) => {
    const name = valueAt(device, ['name']);
    if (typeof name === 'string') {
      const first = deviceNames.get(name);
      if (first !== undefined)
        problems.push({ path: ['devices', deviceIndex, 'name'], message: `duplicate device name "${name}" (also devices[${first}])` });
      else deviceNames.set(name, deviceIndex);
    }
    const tags = valueAt(device, ['tags']);
    if (!Array.isArray(tags)) return;
    const tagNames = new Map<string, number>();
    tags.forEach((tag: unknown, tagIndex) => {
      const tagName = valueAt(tag, ['name']);
      if (typeof tagName !== 'string') return;
      const firstTag = tagNames.get(tagName);
      if (firstTag !== undefined)
        problems.push({
          path: ['devices', deviceIndex, 'tags', tagIndex, 'name'],
          message: `duplicate tag name "${tagName}" in device "${typeof name === 'string' ? name : `devices[${deviceIndex}]`}" (also tags[${firstTag}])`,
        });
      else tagNames.set(tagName, tagIndex);
    });
  });
  return problems;
}

function checkBroker(broker: Config['broker'], add: (path: JsonPath, message: string) => void): void {
  const endpoints = new Map<string, number>();
  broker.listeners.forEach((listener, index) => {
    const endpoint = `${listener.host}:${listener.port}`;
    const first = endpoints.get(endpoint);
    if (listener.port !== 0 && first !== undefined)
      add(['broker', 'listeners', index, 'port'], `listeners[${first}] already uses ${endpoint}`);
    else endpoints.set(endpoint, index);
  });
  const usernames = new Map<string, number>();
  broker.users.forEach((user, index) => {
    const first = usernames.get(user.username);
    if (first !== undefined) add(['broker', 'users', index, 'username'], `duplicate user "${user.username}" (also users[${first}])`);
    else usernames.set(user.username, index);
  });
  broker.acl?.forEach((rule, index) => {
    if (rule.user !== undefined && !usernames.has(rule.user)) {
      add(
        ['broker', 'acl', index, 'user'],
        `no user "${rule.user}" in broker.users${usernames.size > 0 ? ` (users: ${[...usernames.keys()].join(', ')})` : ''}`,
      );
    }
    for (const action of ['publish', 'subscribe'] as const) {
      rule[action].forEach((pattern, patternIndex) => {
        const problem = filterProblem(pattern.replaceAll('%u', 'u').replaceAll('%c', 'c'));
        if (problem) add(['broker', 'acl', index, action, patternIndex], problem);
      });
    }
  });
}

/** The operations endpoint on a broker listener's port would fail only at start; say so now. */
function checkHttpPort(config: Config, add: (path: JsonPath, message: string) => void): void {
  const { http } = config;
  if (!http.enabled || http.port === 0) return;
  const wildcard = (host: string) => host === '0.0.0.0' || host === '::';
  const index = config.broker.listeners.findIndex(
    (listener) => listener.port === http.port && (listener.host === http.host || wildcard(listener.host) || wildcard(http.host)),
  );
  if (index < 0) return;
  const listener = config.broker.listeners[index]!;
  add(
    ['http', 'port'],
    `${http.port} is also the port of broker.listeners[${index}] (${listener.type} on ${listener.host}:${listener.port}): the operations endpoint needs a port of its own; change http.port (default 9180) or the listener's port`,
  );
}

function checkUplink(uplink: NonNullable<Config['uplink']>, add: (path: JsonPath, message: string) => void): void {
  for (const direction of ['forward', 'receive'] as const) {
    (uplink[direction] ?? []).forEach((rule, index) => {
      const problem = filterProblem(rule.topic);
      if (problem) add(['uplink', direction, index, 'topic'], problem);
      for (const prefix of ['localPrefix', 'remotePrefix'] as const) {
        if (/[+#]/.test(rule[prefix]))
          add(['uplink', direction, index, prefix], `a prefix is plain topic text, it cannot contain + or #, got "${rule[prefix]}"`);
      }
    });
  }
  if (uplink.tls && /^(mqtt|ws):/.test(uplink.url)) {
    add(['uplink', 'tls'], `TLS settings need an encrypted url (mqtts:// or wss://), but the url is ${uplink.url.split(':')[0]}://`);
  }
  if (uplink.tls?.cert !== undefined && uplink.tls.key === undefined)
    add(['uplink', 'tls', 'key'], 'a client certificate (tls.cert) needs its private key (tls.key)');
  if (uplink.tls?.key !== undefined && uplink.tls.cert === undefined)
    add(['uplink', 'tls', 'cert'], 'a private key (tls.key) needs its client certificate (tls.cert)');
  if (uplink.statusTopic !== undefined) {
    try {
      const unknown = compileTopicTemplate(uplink.statusTopic).placeholders.filter((placeholder) => placeholder !== 'gateway');
      if (unknown.length > 0) add(['uplink', 'statusTopic'], `the status topic may only use {gateway}, not {${unknown.join('}, {')}}`);
    } catch (error) {
      add(['uplink', 'statusTopic'], (error as Error).message);
    }
  }
  if (uplink.format === 'sparkplug-b' && !uplink.sparkplug)
    add(['uplink', 'sparkplug'], 'the "sparkplug-b" format needs its settings: "sparkplug": { "groupId": "plant1" } at least');
  if (uplink.format === 'json' && uplink.sparkplug)
    add(
      ['uplink', 'format'],
      'there are "sparkplug" settings, but the format is "json": set "format": "sparkplug-b", or remove "sparkplug"',
    );
  if (uplink.format === 'sparkplug-b' && uplink.liveShare > 0)
    add(
      ['uplink', 'liveShare'],
      "Sparkplug B keeps the outbox in order (a device's DDEATH and DBIRTH stay between its data, history comes before live data): set liveShare to 0 or leave it out",
    );
  if (uplink.format === 'sparkplug-b' && uplink.statusTopic !== undefined)
    add(['uplink', 'statusTopic'], 'Sparkplug has its own birth and death messages (NBIRTH/NDEATH): remove statusTopic');
  if (uplink.reconnect.initial > uplink.reconnect.max)
    add(['uplink', 'reconnect', 'initial'], `must not be longer than reconnect.max (${uplink.reconnect.max} ms)`);
}

function renderChecked(options: {
  source: string;
  variables: Record<string, string>;
  path: JsonPath;
  device: string;
  add: (path: JsonPath, message: string) => void;
}): string | undefined {
  let template: TopicTemplate;
  try {
    template = compileTopicTemplate(options.source);
  } catch (error) {
    options.add(options.path, (error as Error).message);
    return undefined;
  }
  const missing = template.placeholders.filter((placeholder) => options.variables[placeholder] === undefined);
  if (missing.length > 0) {
    options.add(
      options.path,
      `placeholder {${missing.join('}, {')}} is not defined for device "${options.device}"; add it to the device's "meta" or remove it from the template`,
    );
    return undefined;
  }
  const topic = template.render(options.variables);
  const problem = topicProblem(topic);
  if (problem) {
    options.add(options.path, `for device "${options.device}": ${problem}`);
    return undefined;
  }
  return topic;
}

// ---------------------------------------------------------------- the report

export function formatPath(path: JsonPath): string {
  let text = '';
  for (const key of path)
    text +=
      typeof key === 'number' ? `[${key}]` : /^[A-Za-z_$][A-Za-z0-9_$]*$/.test(key) ? (text ? `.${key}` : key) : `[${JSON.stringify(key)}]`;
  return text || '(top level)';
}

export function formatProblems(file: string, problems: readonly ConfigProblem[]): string {
  const header = `${file}: ${problems.length} problem${problems.length === 1 ? '' : 's'}`;
  return [header, ...problems.map((problem) => `  ${formatPath(problem.path)}: ${problem.message}`)].join('\n');
}
