// The "cloud" of the uplink tests: Debian's mosquitto in a child process, started, killed and
// restarted by the test on a fixed ephemeral port, plus openssl-made certificates for mutual TLS.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import mqtt, { type IClientOptions } from 'mqtt';
import { freePort, waitFor } from './net.js';

export const MOSQUITTO = '/usr/sbin/mosquitto';

/** Every child process a test started, so an after-hook (or the test process's exit) can kill what is left. */
const children = new Set<ChildProcess>();
process.once('exit', () => {
  for (const child of children) if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
});

export function track(child: ChildProcess): void {
  children.add(child);
  child.once('exit', () => children.delete(child));
}

/** SIGKILLs every child process still running and waits until each has exited. */
export async function killAllChildren(): Promise<void> {
  await Promise.all(
    [...children].map(async (child) => {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
      child.kill('SIGKILL');
      await exited;
    }),
  );
}

/** A temp folder that mosquitto (which drops root privileges to its own user) can read. */
export function makeTempDir(prefix: string): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  chmodSync(dir, 0o755);
  return dir;
}

export function removeDir(dir: string): void {
  rmSync(dir, { recursive: true, force: true });
}

export interface MosquittoTls {
  ca: string;
  cert: string;
  key: string;
  requireCertificate: boolean;
}

export interface MosquittoOptions {
  /** Keep sessions (and their subscriptions) across a graceful stop; a SIGKILL goes back to the last save. */
  persistence?: boolean;
  tls?: MosquittoTls;
  /** Contents of an acl_file (anonymous clients get the rules before any "user" line). */
  acl?: string;
  /** A second listener speaking MQTT over WebSockets (with the same TLS settings as the first). */
  websockets?: boolean;
}

/** True when something accepts TCP connections on 127.0.0.1:port. */
function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect(port, '127.0.0.1');
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

/**
 * One mosquitto, always on the same port: start, kill (SIGKILL or SIGTERM) and start again.
 * Counting tests need `max_queued_messages 0`: mosquitto's default silently drops QoS 1 messages
 * beyond 1000 queued for a slow or offline subscriber.
 */
export class Mosquitto {
  readonly port: number;
  readonly dir: string;
  readonly configFile: string;
  private readonly tls: boolean;
  private child: ChildProcess | undefined;
  private exited: Promise<void> = Promise.resolve();
  private log = '';

  /** The WebSockets listener's port, when there is one. */
  readonly websocketsPort: number | undefined;

  private constructor(port: number, dir: string, options: MosquittoOptions, websocketsPort: number | undefined) {
    this.port = port;
    this.websocketsPort = websocketsPort;
    this.dir = dir;
    this.configFile = join(dir, 'mosquitto.conf');
    this.tls = options.tls !== undefined;
    const lines = [
      `listener ${port} 127.0.0.1`,
      'allow_anonymous true',
      'max_queued_messages 0',
      // No limit on unacknowledged messages to a subscriber: each PUBLISH is written to its socket
      // at once instead of waiting in mosquitto's memory, where a SIGKILL of the cloud would lose
      // messages mosquitto had already acknowledged to the gateway (the cloud's loss, not the gateway's).
      'max_inflight_messages 0',
      // A file, not stdout: mosquitto's stdout into a pipe is block-buffered, so lines would come late.
      `log_dest file ${join(dir, 'mosquitto.log')}`,
      'log_type all',
    ];
    if (options.persistence) {
      const store = join(dir, 'persistence');
      mkdirSync(store, { recursive: true });
      chmodSync(store, 0o777);
      lines.push('persistence true', `persistence_location ${store}/`, 'autosave_interval 0');
    } else {
      lines.push('persistence false');
    }
    if (options.tls) {
      lines.push(
        `cafile ${options.tls.ca}`,
        `certfile ${options.tls.cert}`,
        `keyfile ${options.tls.key}`,
        `require_certificate ${options.tls.requireCertificate}`,
      );
    }
    if (options.acl !== undefined) {
      const acl = join(dir, 'acl');
      writeFileSync(acl, options.acl);
      lines.push(`acl_file ${acl}`);
    }
    if (websocketsPort !== undefined) {
      // Listener options (protocol, TLS files) apply to the listener line before them.
      lines.push(`listener ${websocketsPort} 127.0.0.1`, 'protocol websockets');
      if (options.tls) {
        lines.push(
          `cafile ${options.tls.ca}`,
          `certfile ${options.tls.cert}`,
          `keyfile ${options.tls.key}`,
          `require_certificate ${options.tls.requireCertificate}`,
        );
      }
    }
    writeFileSync(this.configFile, `${lines.join('\n')}\n`);
  }

  /** A mosquitto config for a fresh ephemeral port, not started yet (the cloud is "down"). */
  static async create(dir: string, options: MosquittoOptions = {}): Promise<Mosquitto> {
    const sub = join(dir, `mosquitto-${Math.random().toString(36).slice(2, 8)}`);
    mkdirSync(sub);
    chmodSync(sub, 0o777); // mosquitto writes its log file here after dropping root privileges
    return new Mosquitto(await freePort(), sub, options, options.websockets ? await freePort() : undefined);
  }

  static async startNew(dir: string, options: MosquittoOptions = {}): Promise<Mosquitto> {
    const broker = await Mosquitto.create(dir, options);
    await broker.start();
    return broker;
  }

  /** The URL for the gateway's uplink. */
  get url(): string {
    return `${this.tls ? 'mqtts' : 'mqtt'}://127.0.0.1:${this.port}`;
  }

  /** ws:// or wss:// of the WebSockets listener. */
  get websocketsUrl(): string {
    if (this.websocketsPort === undefined) throw new Error('this mosquitto has no WebSockets listener');
    return `${this.tls ? 'wss' : 'ws'}://127.0.0.1:${this.websocketsPort}/mqtt`;
  }

  get running(): boolean {
    return this.child !== undefined && this.child.exitCode === null && this.child.signalCode === null;
  }

  /** Everything mosquitto logged over all its lives in this test (its log file, then stdout/stderr). */
  output(): string {
    const file = join(this.dir, 'mosquitto.log');
    return `${existsSync(file) ? readFileSync(file, 'utf8') : ''}${this.log}`;
  }

  async start(): Promise<void> {
    if (this.running) throw new Error('mosquitto is already running');
    const child = spawn(MOSQUITTO, ['-c', this.configFile], { stdio: ['ignore', 'pipe', 'pipe'] });
    track(child);
    this.child = child;
    child.stdout!.on('data', (chunk: Buffer) => (this.log += chunk.toString()));
    child.stderr!.on('data', (chunk: Buffer) => (this.log += chunk.toString()));
    this.exited = new Promise((resolve) => child.once('exit', () => resolve()));
    await waitFor(
      async () => {
        if (child.exitCode !== null || child.signalCode !== null) throw new Error(`mosquitto exited at start:\n${this.output()}`);
        return (await accepts(this.port)) && (this.websocketsPort === undefined || (await accepts(this.websocketsPort)));
      },
      10_000,
      `mosquitto on port ${this.port}`,
    );
  }

  /** Kills mosquitto (SIGKILL: no goodbye, no save; SIGTERM: saves the persistence file) and waits for the exit. */
  async kill(signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    const child = this.child;
    if (!child || !this.running) return;
    child.kill(signal);
    await this.exited;
  }

  /**
   * True when no byte sent to this mosquitto's listeners is still on its way: every established
   * loopback connection to its ports has nothing unacknowledged in the sender's queue and nothing
   * unread in mosquitto's (from /proc/net/tcp). Mosquitto handles a packet as it reads it, so
   * then every PUBLISH it was sent has been acknowledged and queued for its subscribers.
   */
  inputDrained(): boolean {
    const ports = new Set([this.port, ...(this.websocketsPort === undefined ? [] : [this.websocketsPort])]);
    const portOf = (address: string) => Number.parseInt(address.split(':')[1]!, 16);
    for (const line of readFileSync('/proc/net/tcp', 'utf8').split('\n').slice(1)) {
      const fields = line.trim().split(/\s+/);
      if (fields.length < 5 || fields[3] !== '01') continue; // 01: ESTABLISHED
      const [txQueue, rxQueue] = fields[4]!.split(':').map((hex) => Number.parseInt(hex, 16));
      if (ports.has(portOf(fields[1]!)) && rxQueue !== 0) return false; // mosquitto's side: unread
      if (ports.has(portOf(fields[2]!)) && txQueue !== 0) return false; // a client's side: not yet received
    }
    return true;
  }

  /** Sends a signal without waiting (SIGSTOP: a hung broker whose sockets stay open). */
  signal(signal: NodeJS.Signals): void {
    if (this.running) this.child!.kill(signal);
  }

  /**
   * Creates a persistent session (clean: false, QoS 1 subscription) for `clientId` and saves it to
   * the persistence file. Every later start, also after a SIGKILL, has that session: messages
   * for it are queued while the subscriber is away (or not yet reconnected), so none are missed.
   */
  async seedSession(clientId: string, filters: string[], options: IClientOptions = {}): Promise<void> {
    const wasRunning = this.running;
    if (!wasRunning) await this.start();
    const client = await mqtt.connectAsync(this.url, { ...options, clientId, clean: false, reconnectPeriod: 0, connectTimeout: 5000 });
    await client.subscribeAsync(filters, { qos: 1 });
    await client.endAsync();
    await this.kill('SIGTERM');
    if (wasRunning) await this.start();
  }
}

export interface Pki {
  dir: string;
  ca: string;
  serverCert: string;
  serverKey: string;
  clientCert: string;
  clientKey: string;
  /** The client key encrypted with `passphrase`. */
  clientKeyEncrypted: string;
  passphrase: string;
  /** A second, unrelated CA: a broker certificate it did not sign must be refused. */
  otherCa: string;
}

/** A CA, a server certificate for 127.0.0.1/localhost and a client certificate, made with openssl. */
export function makePki(dir: string): Pki {
  const file = (name: string) => join(dir, name);
  const openssl = (...args: string[]) => execFileSync('openssl', args, { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
  const ecKey = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  const makeCa = (name: string) =>
    openssl(
      'req',
      '-x509',
      ...ecKey,
      '-keyout',
      file(`${name}.key`),
      '-out',
      file(`${name}.crt`),
      '-days',
      '2',
      '-subj',
      `/CN=plc2mqtt test ${name}`,
      '-addext',
      'basicConstraints=critical,CA:TRUE',
      '-addext',
      'keyUsage=critical,keyCertSign,cRLSign',
    );
  makeCa('ca');
  makeCa('other-ca');
  const issue = (name: string, subject: string, extensions: string) => {
    openssl('req', '-new', ...ecKey, '-keyout', file(`${name}.key`), '-out', file(`${name}.csr`), '-subj', subject);
    writeFileSync(file(`${name}.ext`), extensions);
    openssl(
      'x509',
      '-req',
      '-in',
      file(`${name}.csr`),
      '-CA',
      file('ca.crt'),
      '-CAkey',
      file('ca.key'),
      '-CAcreateserial',
      '-out',
      file(`${name}.crt`),
      '-days',
      '2',
      '-extfile',
      file(`${name}.ext`),
    );
  };
  issue('server', '/CN=127.0.0.1', 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n');
  issue('client', '/CN=plc2mqtt-gateway', 'extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n');
  const passphrase = 'correct horse battery staple';
  openssl('pkey', '-in', file('client.key'), '-aes256', '-passout', `pass:${passphrase}`, '-out', file('client-encrypted.key'));
  // mosquitto reads its key after dropping root privileges to its own user.
  for (const name of ['ca.crt', 'server.crt', 'server.key']) chmodSync(file(name), 0o644);
  return {
    dir,
    ca: file('ca.crt'),
    serverCert: file('server.crt'),
    serverKey: file('server.key'),
    clientCert: file('client.crt'),
    clientKey: file('client.key'),
    clientKeyEncrypted: file('client-encrypted.key'),
    passphrase,
    otherCa: file('other-ca.crt'),
  };
}
