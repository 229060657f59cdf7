// The one source of truth for the config file: types (z.output), validation, defaults,
// descriptions and the JSON Schema shipped in config/schema.json all come from here.
import { z } from 'zod';
import { DRIVERS } from '../drivers.js';
import { duration, name } from './common.js';

const host = z.string().min(1).meta({ description: 'Bind address: 127.0.0.1 for this box only, 0.0.0.0 for every interface.' });
const port = z.number().int().min(0).max(65535).meta({ description: 'TCP port (0 = any free port, for tests).' });

export const gatewaySection = z
  .strictObject({
    name: name('Gateway').default('plc2mqtt').meta({ description: 'Name of this gateway, the {gateway} placeholder in topics.' }),
    dataDir: z.string().min(1).default('./data').meta({ description: 'Where the gateway keeps its state (outbox, retained messages, PKI). Relative to the config file.' }),
    logLevel: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace']).default('info'),
    shutdownTimeout: duration('How long a graceful shutdown may take before the process exits anyway.').default(5000),
  })
  .prefault({});

const tcpListener = z.strictObject({
  type: z.literal('tcp'),
  host: host.default('127.0.0.1'),
  port: port.default(1883),
});

export const brokerSection = z
  .strictObject({
    // The integrated MQTT broker: local HMIs, historians and MQTT devices connect to its listeners.
    listeners: z.array(z.discriminatedUnion('type', [tcpListener])).min(1).default([{ type: 'tcp', host: '127.0.0.1', port: 1883 }]),
  })
  .prefault({});

export const topicsSection = z
  .strictObject({
    tag: z
      .string()
      .min(1)
      .default('plc2mqtt/{gateway}/{device}/{tag}')
      .meta({ description: 'Topic of each tag (per-tag publishing). Placeholders: {gateway}, {device}, {group}, {tag} and any key of the device\'s meta, e.g. "acme/{site}/{line}/{device}/{tag}".' }),
    batch: z
      .string()
      .min(1)
      .default('plc2mqtt/{gateway}/{device}/{group}')
      .meta({ description: 'Topic of a device\'s batch message (publish: "batch"). Same placeholders but {tag}.' }),
    status: z
      .string()
      .min(1)
      .default('plc2mqtt/{gateway}/status')
      .meta({ description: 'Retained gateway status topic: "online" while running, "offline" after shutdown.' }),
    retain: z.boolean().default(true).meta({ description: 'Publish tag values retained, so a new subscriber sees the current state at once.' }),
    qos: z.literal([0, 1]).default(0).meta({ description: 'QoS of tag messages inside the integrated broker.' }),
    timestamp: z.enum(['ms', 'iso']).default('ms').meta({ description: '"ms": milliseconds since the epoch (number). "iso": ISO 8601 string.' }),
  })
  .prefault({});

export const simulatorSchema = z.strictObject({
  name: name('Simulator'),
  type: z.literal('modbus-tcp').meta({ description: 'A simulated Modbus TCP PLC with changing registers (see README "Demo PLC register map").' }),
  host: host.default('127.0.0.1'),
  port: z.number().int().min(1).max(65535).default(5020),
});

const deviceSchemas = Object.values(DRIVERS).map((driver) => driver.schema);
export const deviceSchema = z.discriminatedUnion('driver', deviceSchemas as [typeof deviceSchemas[number], ...typeof deviceSchemas]);

export const configSchema = z
  .strictObject({
    $schema: z.string().optional().meta({ description: 'Path or URL of the JSON Schema, for editor completion.' }),
    gateway: gatewaySection,
    broker: brokerSection,
    topics: topicsSection,
    simulators: z.array(simulatorSchema).default([]).meta({ description: 'Built-in simulated PLCs started inside the gateway, for demos and trying configs without hardware.' }),
    devices: z.array(deviceSchema).default([]),
  })
  .meta({ title: 'plc2mqtt configuration', description: 'Maps PLC tags to MQTT topics. See README.md.' });

export type Config = z.output<typeof configSchema>;
export type DeviceConfig = Config['devices'][number];
export type TagConfig = DeviceConfig['tags'][number];
export type SimulatorConfig = Config['simulators'][number];

/** The JSON Schema of the config file, as committed in config/schema.json. */
export function configJsonSchema(): Record<string, unknown> {
  const schema = z.toJSONSchema(configSchema, { io: 'input', unrepresentable: 'any', target: 'draft-2020-12' });
  return { ...schema, $id: 'https://github.com/plc2mqtt/plc2mqtt/config/schema.json' };
}
