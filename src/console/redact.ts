// Secrets never reach the console: the running config is shown with every secret replaced, and a
// validation report never repeats the value of an environment variable the pasted text refers to.
import { redactUrl } from '../cloud/uplink.js';
import type { Config } from '../config/schema.js';

export const REDACTED = '<redacted>';

/** Keys whose values are secrets wherever they are (passwords, hashes, passphrases, tokens). */
const SECRET_KEYS = /^(password|passwordHash|passphrase|metricsToken|token|secret|apiKey)$/i;

/** The config with secrets replaced and URLs without credentials. */
export function redactConfig(config: Config): unknown {
  return redact(config, undefined);
}

function redact(value: unknown, key: string | undefined): unknown {
  if (key !== undefined && SECRET_KEYS.test(key) && value !== undefined && value !== null) return REDACTED;
  if (key === 'url' && typeof value === 'string') return redactUrl(value);
  if (Array.isArray(value)) return value.map((item) => redact(item, undefined));
  if (value !== null && typeof value === 'object') {
    const result: Record<string, unknown> = {};
    for (const [entryKey, entry] of Object.entries(value)) result[entryKey] = redact(entry, entryKey);
    return result;
  }
  if (typeof value === 'bigint') return value.toString();
  return value;
}

/** `message` with the value of every environment variable `text` refers to (${NAME}) put back as ${NAME}. */
export function scrubSecrets(text: string, message: string, env: NodeJS.ProcessEnv = process.env): string {
  let scrubbed = message;
  for (const match of text.matchAll(/\$\{([A-Za-z_][A-Za-z0-9_]*)/g)) {
    const name = match[1]!;
    const value = env[name];
    if (value !== undefined && value.length >= 3) scrubbed = scrubbed.split(value).join(`\${${name}}`);
  }
  return scrubbed;
}
