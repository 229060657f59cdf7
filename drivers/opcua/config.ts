// Config schema of the OPC UA driver. Kept free of node-opcua (it costs ~65 MB of RSS): the core
// validates every config with it, also those of gateways that have no OPC UA device at all.
import { z } from 'zod';
import { baseDeviceFields, baseTagFields, duration } from '../../src/config/common.js';
import { nodeIdProblem } from './nodeid.js';

export const SECURITY_MODES = ['None', 'Sign', 'SignAndEncrypt'] as const;
/** The policies of OPC 10000-7 that node-opcua offers; the last two are deprecated by the OPC Foundation. */
export const SECURITY_POLICIES = [
  'None',
  'Basic256Sha256',
  'Aes128_Sha256_RsaOaep',
  'Aes256_Sha256_RsaPss',
  'Basic256',
  'Basic128Rsa15',
] as const;
export type SecurityModeName = (typeof SECURITY_MODES)[number];
export type SecurityPolicyName = (typeof SECURITY_POLICIES)[number];

const nodeId = z
  .string()
  .superRefine((text, ctx) => {
    const problem = nodeIdProblem(text);
    if (problem) ctx.addIssue({ code: 'custom', message: problem });
  })
  .meta({
    description:
      'NodeId of the variable: "ns=3;s=Line1.Speed", "ns=2;i=1001", "ns=2;g=<GUID>" or "ns=2;b=<base64>"; "nsu=<namespace URI>;s=…" instead of "ns=" stays right when the server renumbers its namespaces. `plc2mqtt browse` lists them.',
  });

const serverDeadband = z
  .union([
    z.strictObject({
      absolute: z
        .number()
        .nonnegative()
        .meta({ description: "Report a change only when the value moved by more than this, in the server's raw units." }),
    }),
    z.strictObject({
      percent: z.number().positive().max(100).meta({
        description:
          "Report a change only when the value moved by more than this percentage of the variable's EURange (the server must define EURange for the node, or it refuses the item).",
      }),
    }),
  ])
  .meta({ description: 'Server-side deadband of the data-change filter.' });

const dataChangeFilter = z
  .strictObject({
    trigger: z
      .enum(['status', 'status-value', 'status-value-timestamp'])
      .default('status-value')
      .meta({ description: 'What counts as a change: the status only, status or value (default), or also the source timestamp.' }),
    deadband: serverDeadband.optional(),
  })
  .meta({
    description:
      'OPC UA data-change filter evaluated by the server, so unchanged or jittering values never cross the network. The tag\'s "deadband" works in the gateway in addition, on engineering units.',
  });

/** OPC UA built-in DataType names a tag may declare (src/northbound/sparkplug/tags.ts maps them). */
const OPCUA_VALUE_TYPES = [
  'Boolean',
  'SByte',
  'Byte',
  'Int16',
  'UInt16',
  'Int32',
  'UInt32',
  'Int64',
  'UInt64',
  'Float',
  'Double',
  'String',
  'DateTime',
  'ByteString',
  'Guid',
  'XmlElement',
  'NodeId',
  'ExpandedNodeId',
  'StatusCode',
  'QualifiedName',
  'LocalizedText',
] as const;

const tagSchema = z.strictObject({
  ...baseTagFields,
  nodeId,
  samplingInterval: duration(
    'How often the server samples this node (subscription mode). 0 = as fast as the server can, on change for most servers. Overrides subscription.samplingInterval.',
  ).optional(),
  queueSize: z.number().int().min(1).max(10_000).optional().meta({
    description: 'Values the server queues for this node between two publishes (subscription mode). Overrides subscription.queueSize.',
  }),
  dataChangeFilter: dataChangeFilter.optional(),
  type: z.enum(OPCUA_VALUE_TYPES).optional().meta({
    description:
      "The node's DataType, for typed cloud formats (Sparkplug B datatypes: DateTime, Bytes, Int64 …). Default: taken from the first value (number → Double, text → String).",
  }),
});

const anonymous = z.strictObject({ type: z.literal('anonymous') });
const username = z.strictObject({
  type: z.literal('username'),
  username: z.string().min(1),
  password: z.string().meta({ description: 'Put it in an environment variable: "${OPCUA_PASSWORD}". Never logged.' }),
});
const certificate = z.strictObject({
  type: z.literal('certificate'),
  certificate: z.string().min(1).meta({ description: 'PEM or DER file of the user certificate (X.509 user identity).' }),
  privateKey: z.string().min(1).meta({ description: "PEM file of the user certificate's private key." }),
});

export const opcuaConnection = z
  .strictObject({
    endpointUrl: z
      .string()
      .regex(/^opc\.tcp:\/\/[^\s/:]+(?::\d{1,5})?(?:\/\S*)?$/, {
        message: 'expected "opc.tcp://host:port[/path]", e.g. "opc.tcp://192.168.10.30:4840"',
      })
      .meta({
        description:
          'Endpoint of the server, e.g. "opc.tcp://192.168.10.30:4840". The server\'s own hostname in its endpoint list may differ; the gateway always connects to this address.',
      }),
    securityMode: z
      .enum(SECURITY_MODES)
      .default('None')
      .meta({ description: 'Message security: None, Sign, or SignAndEncrypt (recommended whenever passwords cross the network).' }),
    securityPolicy: z.enum(SECURITY_POLICIES).optional().meta({
      description:
        'Default: None when securityMode is None, Basic256Sha256 otherwise. Basic256 and Basic128Rsa15 are deprecated and need RSA PKCS#1 v1.5, which Node.js only allows with --security-revert=CVE-2023-46809.',
    }),
    auth: z.discriminatedUnion('type', [anonymous, username, certificate]).default({ type: 'anonymous' }).meta({
      description:
        'User identity: {"type": "anonymous"} (default), {"type": "username", "username": …, "password": "${ENV}"} or {"type": "certificate", "certificate": file, "privateKey": file}.',
    }),
    trustOnFirstUse: z.boolean().default(false).meta({
      description:
        "Accept a server certificate the gateway does not know yet and store it as trusted (dataDir/pki/trusted/certs). Off by default: put the server's certificate there yourself. Turn it off again after commissioning.",
    }),
    applicationName: z
      .string()
      .min(1)
      .default('plc2mqtt')
      .meta({ description: "Application name in the gateway's certificate and sessions." }),
    connectTimeout: duration('Longest time to open the channel and activate the session.', 100).default(10_000),
    requestTimeout: duration(
      'Longest time one request (read, write, create…) may take before the connection is considered broken.',
      100,
    ).default(10_000),
    sessionTimeout: duration('Session timeout requested from the server: how long it keeps the session of a silent gateway.', 1000).default(
      60_000,
    ),
    keepAliveInterval: duration(
      'With no traffic for this long the gateway reads the server state, so a dead link is noticed within keepAliveInterval + requestTimeout.',
      100,
    ).default(5000),
  })
  .transform((connection) => ({
    ...connection,
    securityPolicy: connection.securityPolicy ?? (connection.securityMode === 'None' ? 'None' : 'Basic256Sha256'),
  }));

const subscriptionSettings = z
  .strictObject({
    samplingInterval: duration(
      "Default sampling interval of the monitored items. Default: the publishing interval (the poll group's interval).",
    ).optional(),
    queueSize: z
      .number()
      .int()
      .min(1)
      .max(10_000)
      .default(1)
      .meta({ description: 'Values the server queues per item between two publishes. 1 = only the newest.' }),
    discardOldest: z.boolean().default(true).meta({ description: 'When a queue is full, drop the oldest value (true) or the newest.' }),
    maxKeepAliveCount: z
      .number()
      .int()
      .min(1)
      .max(10_000)
      .default(10)
      .meta({ description: 'Publishing intervals without changes after which the server sends a keep-alive.' }),
    lifetimeCount: z.number().int().min(3).max(100_000).default(60).meta({
      description:
        'Publishing intervals without a publish request after which the server deletes the subscription. At least 3 × maxKeepAliveCount.',
    }),
    maxNotificationsPerPublish: z
      .number()
      .int()
      .min(0)
      .default(0)
      .meta({ description: 'Most changes in one publish response (0 = no limit).' }),
    dataChangeFilter: dataChangeFilter.optional().meta({ description: "Default data-change filter of the device's tags." }),
  })
  .prefault({})
  .meta({
    description:
      "Subscription mode: each poll group becomes one subscription whose publishing interval is the group's interval (pollInterval for tags without a group).",
  });

const pollingSettings = z
  .strictObject({
    maxNodesPerRead: z.number().int().min(1).max(100_000).default(1000).meta({
      description: 'Nodes per Read request when the server does not state its MaxNodesPerRead operation limit (it is used when it does).',
    }),
    maxAge: duration('Read requests accept server-cached values up to this old (0 = read from the device).').default(0),
  })
  .prefault({});

export const opcuaDevice = z
  .strictObject({
    ...baseDeviceFields,
    driver: z.literal('opcua'),
    connection: opcuaConnection,
    mode: z.enum(['subscription', 'polling']).default('subscription').meta({
      description:
        '"subscription" (default): monitored items, the server reports changes. "polling": the Read service every poll interval.',
    }),
    subscription: subscriptionSettings,
    polling: pollingSettings,
    tags: z.array(tagSchema).min(1),
  })
  .superRefine((device, ctx) => {
    const { securityMode, securityPolicy } = device.connection;
    if (securityMode === 'None' && securityPolicy !== 'None') {
      ctx.addIssue({
        code: 'custom',
        path: ['connection', 'securityPolicy'],
        message: `securityMode None sends plain messages; securityPolicy ${securityPolicy} needs securityMode Sign or SignAndEncrypt`,
      });
    }
    if (securityMode !== 'None' && securityPolicy === 'None') {
      ctx.addIssue({
        code: 'custom',
        path: ['connection', 'securityPolicy'],
        message: `securityMode ${securityMode} needs a securityPolicy such as Basic256Sha256, not None`,
      });
    }
    if (device.subscription.lifetimeCount < 3 * device.subscription.maxKeepAliveCount) {
      ctx.addIssue({
        code: 'custom',
        path: ['subscription', 'lifetimeCount'],
        message: `must be at least 3 × maxKeepAliveCount (${3 * device.subscription.maxKeepAliveCount})`,
      });
    }
    if (device.mode === 'polling') {
      device.tags.forEach((tag, index) => {
        for (const key of ['samplingInterval', 'queueSize', 'dataChangeFilter'] as const) {
          if (tag[key] !== undefined)
            ctx.addIssue({
              code: 'custom',
              path: ['tags', index, key],
              message: `"${key}" is a subscription setting, but this device uses mode "polling"`,
            });
        }
      });
    }
  });

export type OpcUaDeviceConfig = z.output<typeof opcuaDevice>;
export type OpcUaConnection = OpcUaDeviceConfig['connection'];
export type OpcUaTag = OpcUaDeviceConfig['tags'][number];
export type DataChangeFilterConfig = z.output<typeof dataChangeFilter>;
