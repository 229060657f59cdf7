// The one source of truth for the config file: types (z.output), validation, defaults,
// descriptions and the JSON Schema shipped in config/schema.json all come from here.
import { z } from 'zod';
import { DRIVERS } from '../pipeline/registry.js';
import { duration, name } from './common.js';

const host = z.string().min(1).meta({ description: 'Bind address: 127.0.0.1 for this box only, 0.0.0.0 for every interface.' });
const port = z.number().int().min(0).max(65535).meta({ description: 'TCP port (0 = any free port, for tests).' });

export const gatewaySection = z
  .strictObject({
    name: name('Gateway').default('plc2mqtt').meta({ description: 'Name of this gateway, the {gateway} placeholder in topics.' }),
    dataDir: z
      .string()
      .min(1)
      .default('./data')
      .meta({ description: 'Where the gateway keeps its state (outbox, retained messages, PKI). Relative to the config file.' }),
    logLevel: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace']).default('info'),
    shutdownTimeout: duration('How long a graceful shutdown may take before the process exits anyway.').default(5000),
  })
  .prefault({});

const BYTE_SIZE = /^(\d+(?:\.\d+)?)\s*(B|kB|KB|MB|GB)$/;
const BYTE_UNITS: Record<string, number> = { B: 1, kB: 1e3, KB: 1024, MB: 1024 ** 2, GB: 1024 ** 3 };
const byteSize = (description: string) =>
  z
    .union([
      z.number().int().positive(),
      z.string().regex(BYTE_SIZE, { message: 'expected a size such as "500MB", "2GB" or a number of bytes' }),
    ])
    .transform((value) => {
      if (typeof value === 'number') return value;
      const [, amount, unit] = BYTE_SIZE.exec(value)!;
      return Math.round(Number(amount) * BYTE_UNITS[unit!]!);
    })
    .meta({ description: `${description} Bytes, or a string such as "500MB", "2GB".` });

const tlsFiles = {
  cert: z.string().min(1).meta({ description: 'PEM file of the server certificate (with its chain).' }),
  key: z.string().min(1).meta({ description: "PEM file of the server certificate's private key." }),
  ca: z
    .string()
    .min(1)
    .optional()
    .meta({ description: 'PEM file of the CA that signs client certificates (for requireClientCertificate).' }),
  requireClientCertificate: z
    .boolean()
    .default(false)
    .meta({ description: 'Refuse clients without a certificate signed by "ca" (mutual TLS).' }),
};
const wsPath = z
  .string()
  .regex(/^\//, { message: 'a path starts with "/", e.g. "/mqtt"' })
  .default('/mqtt')
  .meta({ description: 'HTTP path of the WebSocket endpoint.' });

const listenerSchema = z.discriminatedUnion('type', [
  z.strictObject({ type: z.literal('tcp'), host: host.default('127.0.0.1'), port: port.default(1883) }),
  z.strictObject({ type: z.literal('tls'), host: host.default('127.0.0.1'), port: port.default(8883), ...tlsFiles }),
  z.strictObject({ type: z.literal('ws'), host: host.default('127.0.0.1'), port: port.default(8080), path: wsPath }),
  z.strictObject({ type: z.literal('wss'), host: host.default('127.0.0.1'), port: port.default(8443), path: wsPath, ...tlsFiles }),
]);
export type ListenerConfig = z.output<typeof listenerSchema>;

const topicPatterns = z
  .array(z.string().min(1))
  .default([])
  .meta({ description: 'Topic filters (+ and #); %u is the username, %c the client id.' });

const denyPatterns = z
  .array(
    z
      .string()
      .min(1)
      .refine((pattern) => !/%[uc]/.test(pattern), {
        message: 'deny patterns take no %u or %c (a name that cannot be put in would make the deny match nothing)',
      }),
  )
  .default([])
  .meta({ description: 'Topic filters (+ and #), without %u/%c.' });

export const brokerSection = z
  .strictObject({
    // The integrated MQTT broker: local HMIs, historians and MQTT devices connect to its listeners.
    listeners: z
      .array(listenerSchema)
      .min(1)
      .default([{ type: 'tcp', host: '127.0.0.1', port: 1883 }]),
    allowAnonymous: z
      .boolean()
      .default(false)
      .meta({ description: 'Let clients connect without a username. Off by default; the demo turns it on for 127.0.0.1 only.' }),
    users: z
      .array(
        z.strictObject({
          username: z.string().min(1).max(256),
          passwordHash: z
            .string()
            .regex(/^scrypt\$\d+\$\d+\$\d+\$[A-Za-z0-9+/]{11,}={0,2}\$[A-Za-z0-9+/]{22,}={0,2}$/, {
              message: 'expected a hash from `plc2mqtt passwd` ("scrypt$16384$8$1$…"), never a plain password',
            })
            .meta({ description: 'scrypt hash printed by `plc2mqtt passwd`.' }),
          console: z.enum(['viewer', 'operator']).optional().meta({
            description:
              'Web console access: "viewer" sees everything, "operator" may also write writable tags. Without it the user cannot log in to the console.',
          }),
        }),
      )
      .default([]),
    acl: z
      .array(
        z.strictObject({
          user: z
            .string()
            .min(1)
            .optional()
            .meta({ description: 'Username the rule is for; without it the rule applies to every client (anonymous ones too).' }),
          publish: topicPatterns,
          subscribe: topicPatterns,
          deny: z.strictObject({ publish: denyPatterns, subscribe: denyPatterns }).optional().meta({
            description:
              'Refused even where an allow (of any rule) covers it, like mosquitto\'s "topic deny": checked before the allows, for the clients the rule is for. publish: topics nobody of them may publish on. subscribe: what they never receive; a subscription entirely inside it is refused, a wider one (e.g. "plant/#" next to a denied "plant/secret/#") is granted but its messages on denied topics are not delivered.',
          }),
        }),
      )
      .optional()
      .meta({
        description:
          'Who may publish and subscribe where. Without acl everything is allowed but reading $SYS; with it, what a deny of a rule for the client refuses is denied, then what no rule allows. $SYS only for a rule that names it ("$SYS/#"), never through "#" or "+".',
      }),
    limits: z
      .strictObject({
        maxConnections: z.number().int().positive().default(1000),
        maxPacketSize: byteSize('Largest MQTT packet a client may send; bigger ones disconnect it.').default(1024 * 1024),
        maxInflight: z.number().int().positive().max(65_000).default(100).meta({
          description:
            'QoS 1/2 messages in flight with one client, each way. Outgoing: deliveries it has not acknowledged yet; more wait in its queue (maxQueued). Incoming: QoS 2 messages it sent whose PUBREL has not come; a client that sends more is disconnected.',
        }),
        maxQueued: z.number().int().positive().default(100_000).meta({
          description:
            'QoS 1/2 deliveries that may wait for one client beyond maxInflight. A client that falls further behind is disconnected with a reason (never a silent drop); a persistent session keeps up to maxInflight + maxQueued messages while its client is away (more are not kept for it: counted and logged).',
        }),
        maxSessionExpiry: duration(
          'Longest a session outlives its connection: MQTT 5 Session Expiry Intervals above it are cut to it (the CONNACK says so), and MQTT 3.1.1 persistent sessions (Clean Session 0) end after it.',
          1000,
        ).default(86_400_000),
        maxSubscriptions: z.number().int().positive().default(1000).meta({
          description:
            'Subscriptions one client may hold. A SUBSCRIBE that would take it over the limit gets 0x80 (MQTT 5: 0x97 Quota exceeded) for the filters beyond it, the client stays connected; subscribing again to a filter it has does not count. Logged once per client.',
        }),
        keepAlive: z
          .strictObject({
            min: duration(
              'Shortest keep-alive a client may ask for; 0 allows clients without keep-alive. MQTT 3.1.1 clients outside the bounds are refused; MQTT 5 clients get the nearest bound (CONNACK Server Keep Alive).',
            ).default(0),
            max: duration('Longest keep-alive a client may ask for (see min).', 1000).default(3_600_000),
          })
          .prefault({}),
      })
      .prefault({}),
    persistRetained: z
      .boolean()
      .default(true)
      .meta({ description: "Keep retained messages (the tags' last values, the status) in dataDir across restarts." }),
  })
  .prefault({});

export const topicsSection = z
  .strictObject({
    tag: z.string().min(1).default('plc2mqtt/{gateway}/{device}/{tag}').meta({
      description:
        'Topic of each tag (per-tag publishing). Placeholders: {gateway}, {device}, {group}, {tag} and any key of the device\'s meta, e.g. "acme/{site}/{line}/{device}/{tag}".',
    }),
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
    command: z
      .string()
      .regex(/^\/[^+#]*[^/+#]$/, { message: 'expected a suffix such as "/set": starting with "/", without wildcards, not ending in "/"' })
      .default('/set')
      .meta({
        description:
          'Writes: a tag\'s command topic is its topic plus this suffix, e.g. plc2mqtt/gw/press/setpoint/set. The answer goes to the command topic plus "/result" (or to an MQTT 5 response topic).',
      }),
    retain: z
      .boolean()
      .default(true)
      .meta({ description: 'Publish tag values retained, so a new subscriber sees the current state at once.' }),
    qos: z.literal([0, 1]).default(0).meta({ description: 'QoS of tag messages inside the integrated broker.' }),
    timestamp: z
      .enum(['ms', 'iso'])
      .default('ms')
      .meta({ description: '"ms": milliseconds since the epoch (number). "iso": ISO 8601 string.' }),
  })
  .prefault({});

/** Mosquitto-style bridge rule: local "<localPrefix><topic>" ⇄ remote "<remotePrefix><topic>". */
const bridgeRule = (direction: 'out' | 'in') =>
  z.strictObject({
    topic: z
      .string()
      .min(1)
      .meta({
        description:
          direction === 'out'
            ? 'Pattern (with + and #) of local topics, after localPrefix, that go up to the cloud.'
            : 'Pattern (with + and #) of cloud topics, after remotePrefix, that come down into the integrated broker.',
      }),
    localPrefix: z.string().default('').meta({ description: 'Prefix of the topic in the integrated broker, e.g. "plc2mqtt/".' }),
    remotePrefix: z.string().default('').meta({ description: 'Prefix of the topic on the cloud broker, e.g. "acme/edge-7/".' }),
    qos: z
      .literal([0, 1])
      .default(1)
      .meta({
        description:
          direction === 'out'
            ? 'QoS to the cloud. 1 (default): a message leaves the outbox only after the cloud acknowledged it. 0: sent at QoS 0, and it leaves the outbox once a ping round trip after it proved the broker read it.'
            : 'QoS of the cloud subscription.',
      }),
  });

export const outboxSection = z
  .strictObject({
    maxMessages: z
      .number()
      .int()
      .positive()
      .default(1_000_000)
      .meta({ description: 'Most messages the outbox holds; beyond it the policy drops.' }),
    maxBytes: byteSize(
      'Most bytes (topic + payload) the outbox holds; on disk it takes 1.3–1.7× that (more for small messages), plus up to 4 MB of WAL (README: Disk space).',
    ).default(512 * 1024 ** 2),
    maxAge: duration(
      'Messages older than this are dropped (counted) and never sent, also when the cloud comes back in between. 0 = keep until delivered or pushed out by the bounds.',
    ).default(0),
    policy: z
      .enum(['drop-oldest', 'drop-newest'])
      .default('drop-oldest')
      .meta({ description: 'What goes when a bound is reached: the oldest buffered messages (default) or the new ones.' }),
    synchronous: z.enum(['normal', 'full']).default('normal').meta({
      description:
        'SQLite synchronous mode. "normal": a power cut may lose the last commit (≈ commitInterval); "full": fsync every commit, about 4× slower appends.',
    }),
    commitInterval: duration(
      'Appends are committed in one transaction per interval (also the most a power cut can lose with synchronous "normal"). A message waits up to this long before it can go to the cloud. With synchronous "full" every commit is an fsync: on slow flash raise it, e.g. to "50ms".',
      1,
    ).default(1),
  })
  .prefault({});

/** Sparkplug ids are topic levels: UTF-8 without "+", "/" or "#" [tck-id-topic-structure-namespace-valid-group-id]. */
const sparkplugId = (description: string) =>
  z
    .string()
    .min(1)
    .max(128)
    .regex(/^[^+/#]+$/, { message: 'Sparkplug ids are one topic level: no "+", "/" or "#"' })
    .meta({ description });

export const uplinkSection = z.strictObject({
  url: z
    .string()
    .regex(/^(mqtts?|wss?):\/\/[^/]+/, {
      message: 'expected mqtt://, mqtts://, ws:// or wss:// followed by the host, e.g. "mqtts://broker.example.com:8883"',
    })
    .meta({ description: 'Cloud broker: mqtt://host:1883, mqtts://host:8883, ws://host/mqtt or wss://host/mqtt.' }),
  protocolVersion: z.literal([4, 5]).default(4).meta({ description: 'MQTT 3.1.1 (4) or 5.' }),
  clientId: z
    .string()
    .min(1)
    .max(128)
    .optional()
    .meta({ description: 'Client id on the cloud broker. Default: "plc2mqtt-<gateway name>". Must be stable for a persistent session.' }),
  username: z.string().optional(),
  password: z.string().optional().meta({ description: 'Put it in an environment variable: "${CLOUD_PASSWORD}". Never logged.' }),
  tls: z
    .strictObject({
      ca: z.string().optional().meta({ description: "PEM file of the CA that signed the broker's certificate (default: the system CAs)." }),
      cert: z.string().optional().meta({ description: "PEM file of this gateway's client certificate (mutual TLS, e.g. AWS IoT Core)." }),
      key: z.string().optional().meta({ description: "PEM file of the client certificate's private key." }),
      passphrase: z.string().optional().meta({ description: 'Passphrase of the key, if it has one. Use an environment variable.' }),
      rejectUnauthorized: z.boolean().default(true).meta({ description: "Verify the broker's certificate. Only turn off to debug." }),
      servername: z.string().optional().meta({ description: 'TLS SNI name, when it differs from the URL host.' }),
    })
    .optional(),
  keepalive: duration('MQTT keep-alive.', 1000).default(30_000),
  cleanSession: z.boolean().default(false).meta({
    description: 'false (default): a persistent session, so commands sent while the gateway was offline are delivered when it reconnects.',
  }),
  sessionExpiry: duration(
    'MQTT 5: how long the broker keeps the persistent session after a disconnect (brokers may cap it, e.g. AWS IoT at 1 h by default).',
    1000,
  ).default(7 * 24 * 3_600_000),
  reconnect: z
    .strictObject({
      initial: duration('First reconnect delay.', 100).default(1000),
      max: duration('Longest reconnect delay (exponential back-off with jitter in between).', 100).default(60_000),
    })
    .prefault({}),
  statusTopic: z
    .string()
    .min(1)
    .optional()
    .meta({ description: 'Retained "online"/"offline" status on the cloud (last will). Default: topics.status. Placeholder {gateway}.' }),
  format: z.enum(['json', 'sparkplug-b']).default('json').meta({
    description:
      '"json" (default): the gateway\'s JSON topics, through the forward rules. "sparkplug-b": an Eclipse Sparkplug B 3.0 edge node (births, deaths, aliases, DDATA, NCMD/DCMD), see "sparkplug" and README "Sparkplug B".',
  }),
  sparkplug: z
    .strictObject({
      groupId: sparkplugId('Group id: the second level of every Sparkplug topic, e.g. "plant1".'),
      edgeNodeId: sparkplugId('Edge node id. Default: gateway.name.').optional(),
      primaryHostId: sparkplugId(
        "The primary host application's id: births go out only while spBv1.0/STATE/<id> says it is online; when it goes offline the gateway leaves the broker, keeps buffering, and comes back when the host does.",
      ).optional(),
      quality: z.enum(['sparkplug', 'ignition']).default('sparkplug').meta({
        description:
          'Quality property of a tag that is not good. "sparkplug" (default, the specification\'s codes): bad and uncertain 0 (good 192 is left out, as the spec allows). "ignition": Ignition 8 codes, uncertain 1073742080, bad -2147483136.',
      }),
      nodeMetricsInterval: duration(
        'How often the node metrics (outbox depth, reconnects) are published in NDATA when they changed.',
        1000,
      ).default(10_000),
    })
    .optional()
    .meta({ description: 'Sparkplug B settings: required with "format": "sparkplug-b".' }),
  forward: z.array(bridgeRule('out')).optional().meta({
    description:
      'Local topics that go up to the cloud through the outbox (first matching rule wins). Default with format "json": everything the gateway publishes and every topic MQTT clients publish locally ([{"topic": "#"}]). Default with "sparkplug-b": none (the gateway\'s tags go as Sparkplug metrics; rules here forward local clients\' topics as they are).',
  }),
  receive: z
    .array(bridgeRule('in'))
    .default([])
    .meta({ description: 'Cloud topics that come down into the integrated broker (e.g. commands).' }),
  inFlight: z.number().int().min(1).max(10_000).default(500).meta({
    description:
      "QoS 1 messages sent and not yet acknowledged at once. 100–1000 gets most of the broker's rate; more than 65535 would break MQTT message ids.",
  }),
  liveShare: z.number().min(0).max(0.9).default(0).meta({
    description:
      'After an outage: the share of the in-flight window given to new messages while the backlog is replayed. 0 (default): strict FIFO, so per-topic order always holds. 0.5: live data is not held up behind a long backlog, but a topic\'s new values may arrive before its replayed ones (order by "ts").',
  }),
  outbox: outboxSection,
});

export const simulatorSchema = z
  .discriminatedUnion('type', [
    z.strictObject({
      name: name('Simulator'),
      type: z
        .literal('modbus-tcp')
        .meta({ description: 'A simulated Modbus TCP PLC with changing registers (see README "Demo PLC register map").' }),
      host: host.default('127.0.0.1'),
      port: z.number().int().min(1).max(65535).default(5020),
    }),
    z.strictObject({
      name: name('Simulator'),
      type: z.literal('serial-scale').meta({
        description:
          'A simulated weighing scale speaking MT-SICS (SI, T, Z, SIR, @, I4) on a TCP port, like a scale behind a serial device server, for the serial driver (see README "Demo scale").',
      }),
      host: host.default('127.0.0.1'),
      port: z.number().int().min(1).max(65535).default(5021),
    }),
  ])
  .meta({ description: 'A built-in simulated device.' });

export const writesSection = z
  .strictObject({
    maxAge: duration(
      'A command whose payload carries "ts" (ms since the epoch or ISO 8601) older than this is refused as stale, e.g. one a persistent cloud session replays after an outage.',
      1000,
    ).default(60_000),
    maxWaiting: z
      .number()
      .int()
      .min(1)
      .max(1000)
      .default(10)
      .meta({ description: 'Commands that may wait for one tag while an earlier write to it is in progress; more are refused.' }),
    waitTimeout: duration(
      'A command that waited this long for earlier writes to the same tag is refused instead of landing late.',
      100,
    ).default(10_000),
  })
  .prefault({})
  .meta({ description: "Limits of the write path (commands on the tags' command topics)." });

export const httpSection = z
  .strictObject({
    enabled: z
      .boolean()
      .default(true)
      .meta({ description: 'Serve the web console (/), /healthz, /readyz, /metrics (Prometheus) and /api/status.' }),
    host: host.default('127.0.0.1'),
    port: port.default(9180),
    console: z
      .strictObject({
        enabled: z.boolean().default(true).meta({ description: 'Serve the web console at /.' }),
        updateInterval: duration(
          'How often a browser gets the tag values that changed (at most): 10,000 changing tags cost one message per interval.',
          50,
        ).default(250),
        trendMinutes: z.number().int().min(1).max(30).default(5).meta({
          description:
            'Minutes of history per numeric or boolean tag kept in memory for the trend: one point per second at most, 12 bytes each (10,000 tags changing every second for 5 minutes: 36 MB; at most 30 minutes: 216 MB).',
        }),
      })
      .prefault({}),
    tls: z
      .strictObject({
        cert: z.string().min(1).meta({ description: "PEM file of the endpoint's certificate (chain)." }),
        key: z.string().min(1).meta({ description: 'PEM file of its private key.' }),
      })
      .optional()
      .meta({ description: "Serve HTTPS instead of HTTP (the console's session cookie is then Secure)." }),
    metricsToken: z.string().min(16).optional().meta({
      description:
        'When set, /metrics asks for "Authorization: Bearer <token>". Use an environment variable: "${METRICS_TOKEN}". At least 16 characters.',
    }),
  })
  .prefault({})
  .meta({
    description:
      'The operations endpoint: the web console, health checks, Prometheus metrics and a status API. Bound to 127.0.0.1 by default (no login needed there); on any other address the console asks for a login (broker.users with a "console" role).',
  });

const deviceSchemas = Object.values(DRIVERS).map((driver) => driver.schema);
export const deviceSchema = z.discriminatedUnion('driver', deviceSchemas as [(typeof deviceSchemas)[number], ...typeof deviceSchemas]);

export const configSchema = z
  .strictObject({
    $schema: z.string().optional().meta({ description: 'Path or URL of the JSON Schema, for editor completion.' }),
    gateway: gatewaySection,
    broker: brokerSection,
    topics: topicsSection,
    writes: writesSection,
    http: httpSection,
    uplink: uplinkSection.optional().meta({
      description:
        'The cloud broker. Every message bound for it goes through a SQLite outbox in dataDir first, so outages and restarts lose nothing.',
    }),
    simulators: z.array(simulatorSchema).default([]).meta({
      description:
        'Built-in simulated devices (a Modbus TCP PLC, a serial scale) started inside the gateway, for demos and trying configs without hardware.',
    }),
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
