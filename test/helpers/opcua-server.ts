// A real node-opcua server for the OPC UA driver tests: variables of every supported type that
// change on a timer, nodes with odd statuses and access levels, writable nodes, optional security,
// users and operation limits. In-process (startTestServer) or as a child process
// (opcua-server-child.ts) for tests that kill and restart it.
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { OPCUACertificateManager } from 'node-opcua-certificate-manager';
import { DataType, MessageSecurityMode, SecurityPolicy, StatusCodes, Variant, VariantArrayType } from 'node-opcua-client';
import { OPCUAServer } from 'node-opcua-server';

export interface TestServerOptions {
  /** 0 = any free port. */
  port?: number;
  /** Folder for the server's PKI (reused across starts: the certificate is made once). */
  pkiDir: string;
  /** Only SignAndEncrypt endpoints (Basic256Sha256 and Aes256_Sha256_RsaPss), no anonymous users. */
  secure?: boolean;
  /** username → password; enables the user manager. */
  users?: Record<string, string>;
  /** Accept X.509 user identities (any user certificate). */
  x509Users?: boolean;
  /** Trust every client certificate (default) or only those in <pkiDir>/server/trusted/certs. */
  trustAllClients?: boolean;
  maxNodesPerRead?: number;
  maxMonitoredItemsPerCall?: number;
  /** Period of the changing variables (ms). */
  period?: number;
  /**
   * Namespaces registered before LINE2_NAMESPACE, each with a decoy Line2.Speed of -1: they move
   * LINE2_NAMESPACE to another index, as a reconfigured server would.
   */
  namespacesBefore?: string[];
}

/** A namespace of its own (index 2 unless `namespacesBefore` pushes it up) with Line2.Speed = 42, writable. */
export const LINE2_NAMESPACE = 'urn:plc2mqtt:test:line2';
/** After LINE2_NAMESPACE, a URI with ";" and "%" in it (escaped in an nsu= NodeId), with Line2.Speed = 7. */
export const ODD_NAMESPACE = 'urn:plc2mqtt:test:odd;name%20';

export interface RunningTestServer {
  server: OPCUAServer;
  port: number;
  endpointUrl: string;
  /** Kind of user identity token of every activated session ("AnonymousIdentityToken", "X509IdentityToken" …). */
  identities: () => string[];
  /** How many periods the changing variables have counted (from 1). */
  tick: () => number;
  /** Requests of one service the server has received so far, e.g. "ReadRequest" (to see batching). */
  requests: (name: string) => number;
  stop(): Promise<void>;
}

export const NS = 'ns=1';
/** A node with a GUID NodeId and one with an opaque (ByteString) NodeId. */
export const GUID_NODE = `${NS};g=72962b91-fa75-4ae6-8d28-b404dc7daf63`;
export const OPAQUE_NODE = `${NS};b=M/RbKBsRVkePCePcx24oRA==`;
export const NUMERIC_NODE = `${NS};i=1001`;
/**
 * A variable whose Value the server never finishes reading (a device behind the server that
 * hangs): a Read of it with maxAge 0 gets no answer, while the rest of the server keeps working.
 */
export const STUCK_NODE = `${NS};s=Stuck.Value`;

interface Changing {
  name: string;
  dataType: DataType;
  array?: boolean;
  value: (tick: number) => unknown;
}

/** Variables under Line1 that change every period; tick counts from 1. */
const CHANGING: Changing[] = [
  // Booleans flip every 3rd tick: slower than any test's sampling, so no flip is aliased away.
  { name: 'Bool', dataType: DataType.Boolean, value: (tick) => Math.floor(tick / 3) % 2 === 0 },
  { name: 'SByte', dataType: DataType.SByte, value: (tick) => -(tick % 100) },
  { name: 'Byte', dataType: DataType.Byte, value: (tick) => tick % 200 },
  { name: 'Int16', dataType: DataType.Int16, value: (tick) => -1000 - (tick % 1000) },
  { name: 'UInt16', dataType: DataType.UInt16, value: (tick) => 60000 + (tick % 1000) },
  { name: 'Int32', dataType: DataType.Int32, value: (tick) => -100000 - tick },
  { name: 'UInt32', dataType: DataType.UInt32, value: (tick) => 4000000000 + tick },
  // Beyond 2^53: only a bigint carries these exactly. [high, low] words as node-opcua wants them.
  { name: 'Int64', dataType: DataType.Int64, value: (tick) => words(-(2n ** 60n) - BigInt(tick)) },
  { name: 'UInt64', dataType: DataType.UInt64, value: (tick) => words(2n ** 63n + BigInt(tick)) },
  { name: 'Float', dataType: DataType.Float, value: (tick) => 0.5 + tick },
  { name: 'Double', dataType: DataType.Double, value: (tick) => tick / 10 },
  { name: 'String', dataType: DataType.String, value: (tick) => `tick ${tick}` },
  { name: 'DateTime', dataType: DataType.DateTime, value: (tick) => new Date(Date.UTC(2026, 0, 1) + tick * 1000) },
  { name: 'ByteString', dataType: DataType.ByteString, value: (tick) => Buffer.from([1, 2, 3, tick % 256]) },
  { name: 'DoubleArray', dataType: DataType.Double, array: true, value: (tick) => new Float64Array([tick, tick + 0.5, -tick]) },
  { name: 'Int32Array', dataType: DataType.Int32, array: true, value: (tick) => new Int32Array([tick, -tick]) },
  { name: 'StringArray', dataType: DataType.String, array: true, value: (tick) => ['a', `t${tick}`] },
  { name: 'BoolArray', dataType: DataType.Boolean, array: true, value: (tick) => [true, Math.floor(tick / 3) % 2 === 0] },
];

/** Writable variables under Line1.W with their initial values. */
const WRITABLE: Array<{ name: string; dataType: DataType; array?: boolean; initial: unknown }> = [
  { name: 'Double', dataType: DataType.Double, initial: 0 },
  { name: 'Int16', dataType: DataType.Int16, initial: 0 },
  { name: 'Int64', dataType: DataType.Int64, initial: [0, 0] },
  { name: 'UInt64', dataType: DataType.UInt64, initial: [0, 0] },
  { name: 'Bool', dataType: DataType.Boolean, initial: false },
  { name: 'String', dataType: DataType.String, initial: '' },
  { name: 'DateTime', dataType: DataType.DateTime, initial: new Date(0) },
  { name: 'ByteString', dataType: DataType.ByteString, initial: Buffer.alloc(0) },
  { name: 'DoubleArray', dataType: DataType.Double, array: true, initial: new Float64Array([0, 0]) },
];

function words(value: bigint): [number, number] {
  const unsigned = BigInt.asUintN(64, value);
  return [Number(unsigned >> 32n), Number(unsigned & 0xffffffffn)];
}

function variant(dataType: DataType, value: unknown, array = false): Variant {
  return new Variant({ dataType, arrayType: array ? VariantArrayType.Array : VariantArrayType.Scalar, value });
}

export async function startTestServer(options: TestServerOptions): Promise<RunningTestServer> {
  const serverPki = join(options.pkiDir, 'server');
  mkdirSync(serverPki, { recursive: true });
  const certificateManager = new OPCUACertificateManager({
    rootFolder: serverPki,
    automaticallyAcceptUnknownCertificate: options.trustAllClients ?? true,
  });
  await certificateManager.initialize();
  const users = options.users;
  const userCertificateManager = options.x509Users
    ? new OPCUACertificateManager({ rootFolder: join(options.pkiDir, 'users'), automaticallyAcceptUnknownCertificate: true })
    : undefined;
  await userCertificateManager?.initialize();
  const server = new OPCUAServer({
    ...(userCertificateManager ? { userCertificateManager } : {}),
    port: options.port ?? 0,
    hostname: '127.0.0.1',
    serverCertificateManager: certificateManager,
    ...(options.secure
      ? {
          securityModes: [MessageSecurityMode.SignAndEncrypt],
          securityPolicies: [SecurityPolicy.Basic256Sha256, SecurityPolicy.Aes256_Sha256_RsaPss],
          allowAnonymous: false,
        }
      : { securityModes: [MessageSecurityMode.None], securityPolicies: [SecurityPolicy.None] }),
    ...(users ? { userManager: { isValidUser: (username: string, password: string) => users[username] === password } } : {}),
    serverCapabilities: {
      operationLimits: {
        ...(options.maxNodesPerRead === undefined ? {} : { maxNodesPerRead: options.maxNodesPerRead }),
        ...(options.maxMonitoredItemsPerCall === undefined ? {} : { maxMonitoredItemsPerCall: options.maxMonitoredItemsPerCall }),
      },
    },
  });
  await server.initialize();
  const addressSpace = server.engine.addressSpace!;
  const namespace = addressSpace.getOwnNamespace();
  const line = namespace.addObject({ organizedBy: addressSpace.rootFolder.objects, browseName: 'Line1', nodeId: 's=Line1' });

  let tick = 1;
  const changing = CHANGING.map((spec) =>
    namespace.addVariable({
      componentOf: line,
      browseName: spec.name,
      nodeId: `s=Line1.${spec.name}`,
      dataType: DataType[spec.dataType],
      valueRank: spec.array ? 1 : -1,
      minimumSamplingInterval: 0,
      value: variant(spec.dataType, spec.value(tick), spec.array),
    }),
  );
  const update = () => {
    tick++;
    CHANGING.forEach((spec, index) =>
      changing[index]!.setValueFromSource(variant(spec.dataType, spec.value(tick), spec.array), StatusCodes.Good, new Date()),
    );
  };
  const timer = setInterval(update, options.period ?? 100);

  // Odd ones: a value with Uncertain status, a node nobody may read, NodeIds of every form.
  const uncertain = namespace.addVariable({
    componentOf: line,
    browseName: 'Uncertain',
    nodeId: 's=Line1.Uncertain',
    dataType: 'Double',
    minimumSamplingInterval: 0,
    value: variant(DataType.Double, 0),
  });
  uncertain.setValueFromSource(variant(DataType.Double, 42.5), StatusCodes.UncertainLastUsableValue, new Date());
  namespace.addVariable({
    componentOf: line,
    browseName: 'Secret',
    nodeId: 's=Line1.Secret',
    dataType: 'Double',
    accessLevel: 'CurrentWrite',
    userAccessLevel: 'CurrentWrite',
    minimumSamplingInterval: 0,
    value: variant(DataType.Double, 1),
  });
  namespace.addVariable({
    componentOf: line,
    browseName: 'ReadOnly',
    nodeId: 's=Line1.ReadOnly',
    dataType: 'Double',
    accessLevel: 'CurrentRead',
    userAccessLevel: 'CurrentRead',
    minimumSamplingInterval: 0,
    value: variant(DataType.Double, 7),
  });
  namespace.addVariable({
    componentOf: line,
    browseName: 'ByGuid',
    nodeId: GUID_NODE.replace(`${NS};`, ''),
    dataType: 'Int32',
    minimumSamplingInterval: 0,
    value: variant(DataType.Int32, 11),
  });
  namespace.addVariable({
    componentOf: line,
    browseName: 'ByOpaque',
    nodeId: OPAQUE_NODE.replace(`${NS};`, ''),
    dataType: 'Int32',
    minimumSamplingInterval: 0,
    value: variant(DataType.Int32, 22),
  });
  namespace.addVariable({
    componentOf: line,
    browseName: 'ByNumber',
    nodeId: NUMERIC_NODE.replace(`${NS};`, ''),
    dataType: 'Int32',
    minimumSamplingInterval: 0,
    value: variant(DataType.Int32, 33),
  });

  const stuck = namespace.addObject({ organizedBy: addressSpace.rootFolder.objects, browseName: 'Stuck', nodeId: 's=Stuck' });
  namespace.addVariable({
    componentOf: stuck,
    browseName: 'Value',
    nodeId: STUCK_NODE.replace(`${NS};`, ''),
    dataType: 'Double',
    minimumSamplingInterval: 0,
    value: { refreshFunc: () => undefined },
  });

  const writable = namespace.addObject({ componentOf: line, browseName: 'W', nodeId: 's=Line1.W' });
  for (const spec of WRITABLE) {
    namespace.addVariable({
      componentOf: writable,
      browseName: spec.name,
      nodeId: `s=Line1.W.${spec.name}`,
      dataType: DataType[spec.dataType],
      valueRank: spec.array ? 1 : -1,
      accessLevel: 'CurrentRead | CurrentWrite',
      userAccessLevel: 'CurrentRead | CurrentWrite',
      minimumSamplingInterval: 0,
      value: variant(spec.dataType, spec.initial, spec.array),
    });
  }

  // Line2.Speed in LINE2_NAMESPACE, after any decoys: its index depends on what came before.
  const decoys = options.namespacesBefore ?? [];
  for (const [index, uri] of [...decoys, LINE2_NAMESPACE, ODD_NAMESPACE].entries()) {
    const value = index < decoys.length ? -1 : uri === LINE2_NAMESPACE ? 42 : 7;
    const other = addressSpace.registerNamespace(uri);
    const folder = other.addObject({ organizedBy: addressSpace.rootFolder.objects, browseName: `Line2 (${uri})`, nodeId: 's=Line2' });
    other.addVariable({
      componentOf: folder,
      browseName: 'Speed',
      nodeId: 's=Line2.Speed',
      dataType: 'Double',
      accessLevel: 'CurrentRead | CurrentWrite',
      userAccessLevel: 'CurrentRead | CurrentWrite',
      minimumSamplingInterval: 0,
      value: variant(DataType.Double, value),
    });
  }

  const identities: string[] = [];
  server.on('session_activated', (_session: unknown, token: { constructor: { name: string } }) => identities.push(token.constructor.name));
  const requests = new Map<string, number>();
  server.on('request', (request: { constructor: { name: string } }) =>
    requests.set(request.constructor.name, (requests.get(request.constructor.name) ?? 0) + 1),
  );

  await server.start();
  const port = server.endpoints[0]!.port;
  return {
    server,
    port,
    endpointUrl: `opc.tcp://127.0.0.1:${port}`,
    identities: () => identities,
    tick: () => tick,
    requests: (name) => requests.get(name) ?? 0,
    stop: async () => {
      clearInterval(timer);
      await server.shutdown(0);
      await certificateManager.dispose();
      await userCertificateManager?.dispose();
    },
  };
}
