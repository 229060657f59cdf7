// One connection to an OPC UA server: secure channel + session, opened in one go and thrown away
// whole when anything about it breaks.
//
// Self-healing is deliberately NOT node-opcua's internal reconnection (which retries forever
// inside the client, transfers subscriptions, and can leave a half-repaired session behind).
// The client is created with connectionStrategy.maxRetry = 0, so a broken channel ends it; every
// sign of trouble (channel closed, keep-alive read failed, session closed, subscription gone)
// marks the connection lost, the driver reports `connected = false`, and the core closes it and
// connects again with back-off: a fresh channel, session, subscriptions and monitored items.
//
// requestTimeout is enforced here, not by node-opcua: its client secure channel raises every
// transaction timeout below 5 s to 5 s (minTransactionTimeout), so a Read with "1s" configured
// would wait 5 s for a hung server. Every service call of the driver goes through request(), and
// the keep-alive read is ours too (node-opcua's keep-alive has the same floor).
import { readFileSync } from 'node:fs';
import type { Logger } from 'pino';
import type { OPCUACertificateManager } from 'node-opcua-certificate-manager';
import {
  AttributeIds,
  MessageSecurityMode,
  OPCUAClient,
  SecurityPolicy,
  UserTokenType,
  VariableIds,
  type ClientSession,
  type StatusCode,
  type UserIdentityInfo,
} from 'node-opcua-client';
import { DriverError } from '../../src/pipeline/driver.js';
import type { OpcUaDeviceConfig } from './config.js';
import {
  applicationCertificateFile,
  openCertificateManager,
  readPrivateKeyPem,
  readUserCertificate,
  rejectedCertificatesFolder,
  trustedCertificatesFolder,
} from './pki.js';
import { failureName, isStatusCodeName, statusName } from './values.js';

/** The server's operation limits that matter here; 0 = the server states none. */
export interface OperationLimits {
  maxNodesPerRead: number;
  maxNodesPerWrite: number;
  maxMonitoredItemsPerCall: number;
  maxNodesPerBrowse: number;
}

/** Service results that mean the session or channel is gone, not that one request was refused. */
const CONNECTION_STATUSES = new Set([
  'BadSessionIdInvalid',
  'BadSessionClosed',
  'BadSessionNotActivated',
  'BadSecureChannelClosed',
  'BadSecureChannelIdInvalid',
  'BadConnectionClosed',
  'BadCommunicationError',
  'BadServerHalted',
  'BadShutdown',
  'BadTimeout',
  'BadRequestTimeout',
  'BadNotConnected',
  'BadServerNotConnected',
  'BadDisconnect',
  'BadTcpInternalError',
]);

/** What withTimeout() rejects with when the time is up. */
export class TimeoutError extends Error {}

/** Rejects with a TimeoutError(`message`) when `promise` takes longer than `ms`. The timer never holds the process. */
export async function withTimeout<T>(promise: Promise<T>, ms: number, message: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      promise,
      new Promise<never>((_resolve, reject) => {
        timer = setTimeout(() => reject(new TimeoutError(message)), ms);
        timer.unref();
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/** The ServiceResult of a failed request, when the server answered with a ServiceFault. */
export function serviceResultOf(error: unknown): StatusCode | undefined {
  const response = (error as { response?: { responseHeader?: { serviceResult?: StatusCode } } } | null)?.response;
  return response?.responseHeader?.serviceResult;
}

export interface ConnectionOptions {
  device: OpcUaDeviceConfig;
  dataDir: string;
  log: Logger;
  /** Called once, on the first sign that the connection broke. Not called for close(). */
  onLost: (reason: string) => void;
}

export class OpcUaConnection {
  readonly session: ClientSession;
  readonly limits: OperationLimits;
  /** The server's NamespaceArray on this connection: index → URI (for "nsu=" NodeIds). */
  readonly namespaces: readonly string[];
  private readonly client: OPCUAClient;
  private readonly manager: OPCUACertificateManager;
  private readonly options: ConnectionOptions;
  private lostReason: string | undefined;
  private closing: Promise<void> | undefined;
  /** Rejects when the connection is lost or closed: requests still waiting give up at once. */
  private readonly ended: Promise<never>;
  private end!: (reason: string) => void;
  private keepAliveTimer: NodeJS.Timeout | undefined;

  private constructor(
    options: ConnectionOptions,
    client: OPCUAClient,
    manager: OPCUACertificateManager,
    session: ClientSession,
    info: ServerInfo,
  ) {
    this.options = options;
    this.client = client;
    this.manager = manager;
    this.session = session;
    this.limits = info.limits;
    this.namespaces = info.namespaces;
    this.ended = new Promise<never>((_resolve, reject) => {
      this.end = (reason) => {
        clearInterval(this.keepAliveTimer);
        reject(new Error(reason));
      };
    });
    this.ended.catch(() => undefined);
  }

  /** Why the connection is unusable, or undefined while it works. */
  get lost(): string | undefined {
    return this.closing ? (this.lostReason ?? 'closed') : this.lostReason;
  }

  /** Marks the connection broken (once) and tells the driver. */
  markLost(reason: string): void {
    if (this.lostReason !== undefined || this.closing) return;
    this.lostReason = reason;
    this.end(reason);
    this.options.onLost(reason);
  }

  /**
   * One service call on the session, bounded by requestTimeout. No answer in time marks the
   * connection lost (a server that hangs on one request gets no second one on that session) and
   * rejects with code "timeout"; a loss noticed elsewhere meanwhile ends the wait at once. A call
   * that makes several requests (getBuiltInDataType walks the type tree) gets requestTimeout for
   * all of them.
   */
  async request<T>(what: string, call: (session: ClientSession) => Promise<T>): Promise<T> {
    if (this.lost !== undefined) throw new DriverError(`${what} failed: ${this.lost}`, { code: 'connection-lost', connectionLost: true });
    const timeout = this.options.device.connection.requestTimeout;
    try {
      return await withTimeout(Promise.race([call(this.session), this.ended]), timeout, `no answer within ${timeout} ms (requestTimeout)`);
    } catch (error) {
      if (!(error instanceof TimeoutError)) throw this.failure(error, what);
      const reason = `${what} failed: ${error.message}`;
      this.markLost(reason);
      throw new DriverError(reason, { code: 'timeout', connectionLost: true, cause: error });
    }
  }

  /**
   * Reads the server state whenever nothing was heard from the server for half the keep-alive
   * interval (publish responses and answers to polls count), checked twice per interval: a dead
   * link or a hung server is noticed within keepAliveInterval + requestTimeout in either mode.
   * It also keeps an idle session from timing out on the server.
   */
  private startKeepAlive(): void {
    const half = Math.max(50, Math.floor(this.options.device.connection.keepAliveInterval / 2));
    let reading = false;
    this.keepAliveTimer = setInterval(() => {
      if (reading || this.lost !== undefined || Date.now() - this.session.lastResponseReceivedTime.getTime() < half) return;
      reading = true;
      // A failure that means the connection is gone has marked it lost; a ServiceFault is an answer.
      this.request('the keep-alive read', (session) =>
        session.read({ nodeId: `i=${VariableIds.Server_ServerStatus_State}`, attributeId: AttributeIds.Value }),
      )
        .catch(() => undefined)
        .finally(() => (reading = false));
    }, half);
    this.keepAliveTimer.unref();
  }

  /**
   * Opens channel and session, bounded by connectTimeout. `isCancelled` is checked between the
   * steps so a close() during a slow connect does not leave a session behind.
   */
  static async open(options: ConnectionOptions): Promise<OpcUaConnection> {
    const { device, dataDir, log } = options;
    const { connection } = device;
    const manager = await openCertificateManager(dataDir, connection.trustOnFirstUse);
    let certificateExisted = true;
    try {
      readFileSync(applicationCertificateFile(dataDir));
    } catch {
      certificateExisted = false;
    }
    const client = OPCUAClient.create({
      applicationName: connection.applicationName,
      clientName: `${connection.applicationName} ${device.name}`,
      endpointMustExist: false,
      securityMode: MessageSecurityMode[connection.securityMode],
      securityPolicy: SecurityPolicy[connection.securityPolicy],
      // One attempt: a refused or broken channel ends this client; the core reconnects with back-off.
      connectionStrategy: { maxRetry: 0, initialDelay: 100, maxDelay: 1000 },
      clientCertificateManager: manager,
      requestedSessionTimeout: connection.sessionTimeout,
      // The keep-alive is startKeepAlive(): node-opcua's waits at least 5 s for its read.
      keepSessionAlive: false,
      // Sent to the server as the timeoutHint (raised to 5 s by node-opcua); request() enforces it.
      defaultTransactionTimeout: connection.requestTimeout,
    });
    // Until the connection object exists, a loss during open() surfaces as open()'s rejection.
    let opened: OpcUaConnection | undefined;
    const lost = (reason: string) => opened?.markLost(reason);
    client.on('connection_lost', () => lost('connection to the server lost'));
    client.on('close', (error?: Error | null) => lost(error ? `connection closed: ${error.message}` : 'connection closed'));
    client.on('start_reconnection', () => lost('connection broken'));
    client.on('timed_out_request', (request) => log.debug({ request: request.constructor.name }, 'OPC UA request timed out'));

    const deadline = Date.now() + connection.connectTimeout;
    const remaining = () => Math.max(1, deadline - Date.now());
    try {
      await withTimeout(
        client.connect(connection.endpointUrl),
        remaining(),
        `no answer from ${connection.endpointUrl} within ${connection.connectTimeout} ms`,
      );
      if (!certificateExisted)
        log.info(
          { certificate: applicationCertificateFile(dataDir) },
          "created the gateway's OPC UA application certificate; servers that check clients must trust it",
        );
      const session = await withTimeout(
        client.createSession(userIdentity(device)),
        remaining(),
        `no session from ${connection.endpointUrl} within ${connection.connectTimeout} ms`,
      );
      session.on('session_closed', (status: StatusCode) => lost(`session closed (${statusName(status)})`));
      const info = await withTimeout(readServerInfo(session), remaining(), 'no answer to reading the operation limits and namespaces');
      opened = new OpcUaConnection(options, client, manager, session, info);
      opened.startKeepAlive();
      return opened;
    } catch (error) {
      // Also aborts a handshake in progress: a server that never answers HEL keeps no socket
      // (test/opcua-reconnect.test.ts proves it).
      await closeClient(client, manager, connection.requestTimeout);
      throw connectError(error, device, dataDir);
    }
  }

  /** Closes session and channel, bounded: a dead server gets no more than requestTimeout. Never rejects. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      this.end('closed');
      const timeout = this.options.device.connection.requestTimeout;
      // Deleting the subscriptions with the session frees the server at once; over a broken
      // channel it would only wait for the timeout.
      if (this.lostReason === undefined) {
        await withTimeout(this.session.close(true), timeout, 'session close timed out').catch((error: unknown) =>
          this.options.log.debug({ error: String(error) }, 'closing the OPC UA session failed'),
        );
      }
      await closeClient(this.client, this.manager, timeout);
    })();
    return this.closing;
  }

  /** A DriverError for a failed service call; marks the connection lost when the failure says so. */
  failure(error: unknown, what: string): DriverError {
    const status = serviceResultOf(error);
    const name = status ? failureName(status) : undefined;
    const message = error instanceof Error ? error.message : String(error);
    const connectionLost = this.lost !== undefined || name === undefined || CONNECTION_STATUSES.has(name);
    if (connectionLost) this.markLost(`${what} failed: ${message}`);
    return new DriverError(`${what} failed: ${name ?? message}`, { code: name ?? 'connection-lost', connectionLost, cause: error });
  }
}

async function closeClient(client: OPCUAClient, manager: OPCUACertificateManager, timeout: number): Promise<void> {
  await withTimeout(client.disconnect(), timeout, 'disconnect timed out').catch(() => undefined);
  await manager.dispose().catch(() => undefined);
}

function userIdentity(device: OpcUaDeviceConfig): UserIdentityInfo {
  const auth = device.connection.auth;
  switch (auth.type) {
    case 'anonymous':
      return { type: UserTokenType.Anonymous };
    case 'username':
      return { type: UserTokenType.UserName, userName: auth.username, password: auth.password };
    case 'certificate':
      return {
        type: UserTokenType.Certificate,
        certificateData: readUserCertificate(auth.certificate),
        privateKey: readPrivateKeyPem(auth.privateKey),
      };
  }
}

const LIMIT_NODES = [
  VariableIds.Server_ServerCapabilities_OperationLimits_MaxNodesPerRead,
  VariableIds.Server_ServerCapabilities_OperationLimits_MaxNodesPerWrite,
  VariableIds.Server_ServerCapabilities_OperationLimits_MaxMonitoredItemsPerCall,
  VariableIds.Server_ServerCapabilities_OperationLimits_MaxNodesPerBrowse,
];

interface ServerInfo {
  limits: OperationLimits;
  namespaces: string[];
}

/**
 * ServerCapabilities.OperationLimits (a server that does not expose them gets 0: no stated limit)
 * and Server.NamespaceArray, read at the start of every connection. Two requests: the limits may
 * allow fewer nodes per Read than both together.
 */
async function readServerInfo(session: ClientSession): Promise<ServerInfo> {
  const values = await session.read(LIMIT_NODES.map((id) => ({ nodeId: `i=${id}`, attributeId: AttributeIds.Value })));
  const namespaceValue = await session.read({ nodeId: `i=${VariableIds.Server_NamespaceArray}`, attributeId: AttributeIds.Value });
  const namespaceArray: unknown = namespaceValue.statusCode.isGood() ? namespaceValue.value.value : [];
  const namespaces = Array.isArray(namespaceArray) ? namespaceArray.map(String) : [];
  const limit = (index: number): number => {
    const dataValue = values[index];
    const value: unknown = dataValue?.statusCode.isGood() ? dataValue.value.value : 0;
    return typeof value === 'number' && Number.isFinite(value) && value > 0 ? value : 0;
  };
  return {
    limits: { maxNodesPerRead: limit(0), maxNodesPerWrite: limit(1), maxMonitoredItemsPerCall: limit(2), maxNodesPerBrowse: limit(3) },
    namespaces,
  };
}

/** Connect failures in words a controls engineer can act on. */
function connectError(error: unknown, device: OpcUaDeviceConfig, dataDir: string): DriverError {
  const status = serviceResultOf(error);
  const raw = error instanceof Error ? error.message : String(error);
  const named = /\b(Bad[A-Za-z]+)\b/.exec(raw)?.[1];
  const name = status ? failureName(status) : named !== undefined && isStatusCodeName(named) ? named : undefined;
  const { endpointUrl, securityMode, securityPolicy } = device.connection;
  let message: string;
  if (name === 'BadCertificateUntrusted' || /certificate.*(untrusted|not trusted)|untrusted.*certificate/i.test(raw)) {
    message = `the server's certificate is not trusted: move it from ${rejectedCertificatesFolder(dataDir)} to ${trustedCertificatesFolder(dataDir)} (or set connection.trustOnFirstUse once)`;
  } else if (name === 'BadSecurityChecksFailed' || name === 'BadCertificateInvalid') {
    message = `${name}: the server refused the secure channel; it probably does not trust the gateway's certificate ${applicationCertificateFile(dataDir)} (trust it on the server) — or it has no ${securityMode}/${securityPolicy} endpoint`;
  } else if (name === 'BadIdentityTokenRejected' || name === 'BadIdentityTokenInvalid' || name === 'BadUserAccessDenied') {
    message = `${name}: the server refused the user identity (${device.connection.auth.type}); check username and password or the user certificate`;
  } else if (/end ?point/i.test(raw) && /(cannot find|not find|no endpoint|must exist|select)/i.test(raw)) {
    message = `the server at ${endpointUrl} offers no endpoint with securityMode ${securityMode} and securityPolicy ${securityPolicy}`;
  } else {
    // node-opcua's "cannot be established … Err = (connect ECONNREFUSED …)" in one line.
    const cause = /Err = \((.*)\)\s*$/s.exec(raw)?.[1];
    const text = cause ? `cannot connect to ${endpointUrl}: ${cause}` : raw.replace(/\s+/g, ' ').trim();
    message = name && !text.includes(name) ? `${name}: ${text}` : text;
  }
  // Every connect failure is retried by the core with back-off.
  return new DriverError(message, { code: name ?? 'connect-failed', connectionLost: true, cause: error });
}
