// Secrets never reach the console: the running config is shown with every secret replaced and
// every value that came from an environment variable as the file wrote it (${NAME}).
import { redactUrl } from '../cloud/uplink.js';
import { SECRET_KEY } from '../config/common.js';
import { envReferencesOf } from '../config/load.js';
import type { Config } from '../config/schema.js';

export const REDACTED = '<redacted>';

/** The config with secrets replaced, environment variables as referenced, and URLs without credentials. */
export function redactConfig(config: Config): unknown {
  return redact(config, undefined, [], envReferencesOf(config));
}

function redact(value: unknown, key: string | undefined, path: Array<string | number>, references: ReadonlyMap<string, string>): unknown {
  if (key !== undefined && SECRET_KEY.test(key) && value !== undefined && value !== null) return REDACTED;
  const written = references.get(path.join('.'));
  if (written !== undefined) return key === 'url' ? redactUrl(written) : written;
  if (key === 'url' && typeof value === 'string') return redactUrl(value);
  if (Array.isArray(value)) return value.map((item, index) => redact(item, undefined, [...path, index], references));
  if (value !== null && typeof value === 'object') {
    const result: Record<string, unknown> = {};
    for (const [entryKey, entry] of Object.entries(value)) result[entryKey] = redact(entry, entryKey, [...path, entryKey], references);
    return result;
  }
  if (typeof value === 'bigint') return value.toString();
  return value;
}

/**
 * The environment pasted configs are validated with: every variable stands for its own reference
 * text, so no value of the gateway's environment can be read back through a problem message.
 */
export const UNRESOLVED_ENV: NodeJS.ProcessEnv = new Proxy(
  {},
  { get: (_target, name) => (typeof name === 'string' ? `\${${name}}` : undefined) },
);
