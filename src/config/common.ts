// Schema pieces shared by the core config and every driver's device/tag schema.
import { z } from 'zod';

const DURATION = /^(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)$/;
const UNIT_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/** Parses "250ms", "1s", "1.5m", "2h", "7d". Returns undefined for anything else. */
export function parseDuration(text: string): number | undefined {
  const match = DURATION.exec(text.trim());
  if (!match) return undefined;
  return Math.round(Number(match[1]) * UNIT_MS[match[2]!]!);
}

/** A duration given as milliseconds (number) or as a string such as "500ms", "1s", "5m". Parsed to ms. */
export const duration = (description: string, minimum = 0) =>
  z
    .union([
      z.number().int().min(minimum),
      z.string().regex(DURATION, { message: 'expected a duration such as "500ms", "1s", "5m", "1h" or "7d"' }),
    ])
    .transform((value) => (typeof value === 'number' ? value : parseDuration(value)!))
    .refine((ms) => ms >= minimum, { message: `must be at least ${minimum} ms` })
    .meta({ description: `${description} Milliseconds, or a string such as "500ms", "1s", "5m", "7d".` });

/** Names end up inside MQTT topics: no wildcards, no separators, nothing invisible. */
export const NAME_PATTERN = /^[A-Za-z0-9_.-]+$/;
export const name = (what: string) =>
  z
    .string()
    .min(1)
    .max(128)
    .regex(NAME_PATTERN, {
      message: `${what} names may use letters, digits, "_", "-" and "." only (they become MQTT topic levels)`,
    });

export const deadband = z
  .union([
    z.number().nonnegative().meta({ description: 'Absolute deadband in engineering units (after scale/offset).' }),
    z.strictObject({ absolute: z.number().nonnegative().meta({ description: 'Absolute deadband in engineering units.' }) }),
    z.strictObject({
      percent: z
        .number()
        .positive()
        .max(100)
        .meta({ description: 'Report when the value moved by more than this percentage of the last reported value.' }),
    }),
  ])
  .meta({ description: 'Report-by-exception: a numeric value is published only when it moved beyond the deadband.' });
export type Deadband = z.output<typeof deadband>;

export const reportMode = z.enum(['change', 'always']).meta({
  description:
    '"change": publish a tag when its value or quality changes (report by exception, with deadband and maxSilence heartbeat). "always": publish every poll.',
});

/** Fields every tag has, whatever its driver. Driver tag schemas extend this. */
export const baseTagFields = {
  name: name('Tag'),
  description: z.string().optional().meta({ description: 'Free text for humans; not published.' }),
  group: name('Poll group')
    .optional()
    .meta({ description: "Poll group (a key of the device's pollGroups). Default: the device's main poll interval." }),
  scale: z.number().optional().meta({ description: 'Engineering value = raw * scale + offset. Numeric tags only.' }),
  offset: z.number().optional().meta({ description: 'Added after scale.' }),
  unit: z.string().max(32).optional().meta({ description: 'Engineering unit, published with the value (e.g. "°C", "bar").' }),
  deadband: deadband.optional(),
  report: reportMode.optional().meta({ description: "Overrides the device's report mode for this tag." }),
  maxSilence: duration('Heartbeat: republish an unchanged value after this long (report mode "change").').optional(),
  topic: z.string().min(1).optional().meta({ description: 'Topic template for this tag, overriding topics.tag. Same placeholders.' }),
  writable: z
    .boolean()
    .default(false)
    .meta({ description: 'Allow writes to this tag from MQTT (its command topic, topics.command). Writes are refused unless true.' }),
  write: z
    .strictObject({
      min: z
        .number()
        .optional()
        .meta({ description: 'Smallest value a write may set, in engineering units (after scale/offset). Each element, for arrays.' }),
      max: z.number().optional().meta({ description: 'Largest value a write may set, in engineering units.' }),
      allowed: z
        .array(z.union([z.number(), z.string(), z.boolean()]))
        .min(1)
        .optional()
        .meta({ description: 'The only values a write may set, e.g. [0, 1, 2] for a mode selector.' }),
      minInterval: duration('Rate limit: a write within this time of the previous accepted one is refused.').optional(),
      readBack: z
        .boolean()
        .default(false)
        .meta({ description: 'Read the tag again after writing and answer ok only if it holds the written value.' }),
    })
    .optional()
    .meta({ description: 'Checks for writes to a writable tag. A write that fails one writes nothing and is answered with the reason.' }),
};

/** Fields every device has, whatever its driver. */
export const baseDeviceFields = {
  name: name('Device'),
  description: z.string().optional(),
  enabled: z.boolean().default(true).meta({ description: 'Set false to keep a device in the file without polling it.' }),
  pollInterval: duration('Main poll interval for tags without a group.', 10).default(1000),
  pollGroups: z
    .record(
      name('Poll group').refine((key) => key !== 'default', {
        message: '"default" is the group of tags without one; it polls at pollInterval',
      }),
      z.strictObject({ interval: duration('Poll interval of this group.', 10) }),
    )
    .default({})
    .meta({ description: 'Extra poll groups with their own interval, e.g. {"fast": {"interval": "100ms"}}.' }),
  report: reportMode.default('change'),
  maxSilence: duration('Default heartbeat for tags of this device (report mode "change").').default(60_000),
  publish: z.enum(['per-tag', 'batch']).default('per-tag').meta({
    description:
      '"per-tag": one message per tag on its own topic. "batch": one message per poll cycle with all tags of the group, on topics.batch.',
  }),
  meta: z
    .record(z.string().regex(/^[A-Za-z][A-Za-z0-9_]*$/), z.string().regex(/^[^/+#\u0000]+$/))
    .default({})
    .meta({ description: 'Extra placeholders for topic templates, e.g. {"site": "plant1", "line": "press"} for {site}/{line}.' }),
};

/** Keys whose values are secrets wherever they are in a config: never shown in messages, logs or the console. */
export const SECRET_KEY = /^(password|passwordHash|passphrase|metricsToken|token|secret|apiKey)$/i;
