#!/usr/bin/env node
// plc2mqtt command line: run, validate, schema, read, browse, simulate, health, passwd.
// First: before mqtt-packet and mqtt.js load `debug` (see the module).
import './util/quiet-debug.js';
import { get as httpGet } from 'node:http';
import { get as httpsGet } from 'node:https';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync, watchFile } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Command, Option } from 'commander';
import { ConfigError, formatPath, loadConfigFile, loadHttpSection, type LoadedConfig } from './config/load.js';
import { configJsonSchema, type DeviceConfig, type SimulatorConfig, type TagConfig } from './config/schema.js';
import { hashPassword } from './broker/security.js';
import { errorMessage } from './util/errors.js';
import type { DriverTag } from './pipeline/driver.js';
import { DRIVERS, type DriverModule } from './pipeline/registry.js';
import { Gateway } from './gateway.js';
import { createLogger } from './ops/log.js';
import { TagNormalizer } from './pipeline/normalize.js';
import { encodeTagPayload } from './northbound/json/payload.js';
import type { RunningSimulator } from './demo/simulator.js';

/** The demo config shipped with the package: what `npm start` runs. */
const DEMO_CONFIG = fileURLToPath(new URL('../../config/demo.json', import.meta.url));

const VERSION = (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version;

const EXIT_CONFIG = 2;
const EXIT_FAILURE = 1;

/** Loads a config or prints its problems and exits 2 — never a stack trace. */
function loadOrExit(file: string): LoadedConfig {
  try {
    return loadConfigFile(file);
  } catch (error) {
    if (error instanceof ConfigError) {
      process.stderr.write(`${error.message}\n`);
      process.exit(EXIT_CONFIG);
    }
    throw error;
  }
}

function fail(message: string): never {
  process.stderr.write(`plc2mqtt: ${message}\n`);
  process.exit(EXIT_FAILURE);
}

const configOption = () => new Option('-c, --config <file>', 'config file (JSON)');

const program = new Command()
  .name('plc2mqtt')
  .description('Industrial IoT edge gateway: PLC tags → MQTT, with an integrated broker.')
  .showHelpAfterError('(run with --help for usage)');

program
  .command('run')
  .description('run the gateway (without -c: the built-in demo with a simulated PLC and scale)')
  .addOption(configOption().default(DEMO_CONFIG, 'config/demo.json'))
  .option('--pretty', 'human-readable logs even when stdout is not a terminal')
  .option('--data-dir <dir>', 'where the outbox, retained messages and PKI live, instead of gateway.dataDir (the Docker image uses /data)')
  .option('--watch', 'reload the config when the file changes (as on SIGHUP)')
  .action(async (options: { config: string; pretty?: boolean; dataDir?: string; watch?: boolean }) => {
    const loaded = loadOrExit(options.config);
    if (options.dataDir !== undefined) loaded.dataDir = resolve(options.dataDir);
    const log = createLogger(loaded.config.gateway.logLevel, options.pretty ? { pretty: true } : {});
    log.info({ config: loaded.file, dataDir: loaded.dataDir }, `plc2mqtt starting gateway "${loaded.config.gateway.name}"`);
    // A SIGHUP (systemctl reload) while starting would kill the process by default: until the
    // reload handler below is in place, it is ignored.
    const ignoreEarlyReload = () => log.warn('SIGHUP during start ignored; send it again once the gateway runs');
    process.on('SIGHUP', ignoreEarlyReload);
    let gateway: Gateway;
    try {
      // Everything, the operations endpoint last (without it the data still flows: a taken port
      // is an error to fix, not a reason to stop collecting; a device that cannot start neither).
      gateway = await Gateway.start(loaded, log, { version: VERSION, ops: true });
    } catch (error) {
      log.fatal({ error: errorMessage(error) }, 'gateway failed to start');
      process.exit(EXIT_FAILURE);
    }
    // Hot reload: a valid new config restarts only the devices whose definition changed; an
    // invalid one is reported and the running config stays.
    process.off('SIGHUP', ignoreEarlyReload);
    const reload = (trigger: string) => {
      let next: LoadedConfig;
      try {
        next = loadConfigFile(loaded.file);
        next.dataDir = loaded.dataDir;
      } catch (error) {
        const problems =
          error instanceof ConfigError
            ? error.problems.map((problem) => `${formatPath(problem.path)}: ${problem.message}`)
            : [errorMessage(error)];
        log.error({ config: loaded.file, trigger, problems }, 'reload refused: the new config is invalid; the running config stays');
        gateway.noteReloadRefused(problems);
        return;
      }
      gateway.reload(next).then(
        (result) => {
          log.info({ config: loaded.file, trigger, ...result }, 'config reloaded');
          if (result.notApplied.length > 0)
            log.warn({ settings: result.notApplied }, 'changes to these settings need a restart of the gateway; they were not applied');
          if (result.failed.length > 0)
            log.error({ devices: result.failed }, 'devices that could not be started after the reload are tried again with back-off');
        },
        (error: unknown) => log.error({ error: errorMessage(error) }, 'reload failed'),
      );
    };
    process.on('SIGHUP', () => reload('SIGHUP'));
    if (options.watch) {
      // Polling the file's status, not fs.watch: editors save by renaming a new file over the old
      // one, which ends an inotify watch; a stat every second sees every kind of save.
      watchFile(loaded.file, { interval: 1000, persistent: false }, (current, previous) => {
        if (current.mtimeMs !== previous.mtimeMs || current.size !== previous.size) reload('file changed');
      });
      log.info({ config: loaded.file }, 'watching the config file for changes');
    }
    let signals = 0;
    const shutdown = (signal: NodeJS.Signals) => {
      if (++signals > 1) {
        log.warn({ signal }, 'second signal: exiting now');
        process.exit(EXIT_FAILURE);
      }
      log.info({ signal }, 'shutting down');
      const deadline = setTimeout(() => {
        log.error({ timeoutMs: loaded.config.gateway.shutdownTimeout }, 'shutdown took too long; exiting anyway');
        process.exit(EXIT_FAILURE);
      }, loaded.config.gateway.shutdownTimeout);
      deadline.unref();
      gateway.stop().then(
        () => process.exit(0),
        (error: unknown) => {
          log.error({ error: errorMessage(error) }, 'shutdown failed');
          process.exit(EXIT_FAILURE);
        },
      );
    };
    process.on('SIGINT', shutdown);
    process.on('SIGTERM', shutdown);
    // A bug must not die silently: say what happened in the log, then exit for the supervisor to restart.
    const crash = (kind: string) => (error: unknown) => {
      log.fatal({ error: errorMessage(error), stack: error instanceof Error ? error.stack : undefined }, `${kind}; exiting`);
      process.exit(EXIT_FAILURE);
    };
    process.on('uncaughtException', crash('uncaught exception'));
    process.on('unhandledRejection', crash('unhandled promise rejection'));
  });

program
  .command('validate')
  .description('check a config file and print every problem with its JSON path (exit code 2 when invalid)')
  .addOption(configOption().makeOptionMandatory())
  .action((options: { config: string }) => {
    const { config, file } = loadOrExit(options.config);
    const tags = config.devices.reduce((count, device) => count + device.tags.length, 0);
    const enabled = config.devices.filter((device) => device.enabled).length;
    process.stdout.write(
      `${file}: valid — ${config.devices.length} device${config.devices.length === 1 ? '' : 's'} (${enabled} enabled), ${tags} tag${tags === 1 ? '' : 's'}\n`,
    );
  });

program
  .command('schema')
  .description('print the JSON Schema of the config file (committed as config/schema.json)')
  .action(() => {
    process.stdout.write(`${JSON.stringify(configJsonSchema(), null, 2)}\n`);
  });

program
  .command('read')
  .description('read one tag once and print its value and quality (commissioning)')
  .addOption(configOption().makeOptionMandatory())
  .argument('<device>', 'device name')
  .argument('<tag>', 'tag name')
  .option('--json', 'print the payload the gateway would publish')
  .action(async (deviceName: string, tagName: string, options: { config: string; json?: boolean }) => {
    const { config, dataDir } = loadOrExit(options.config);
    const device = config.devices.find((candidate) => candidate.name === deviceName);
    if (!device)
      fail(
        `no device "${deviceName}" in ${options.config}; devices: ${config.devices.map((candidate) => candidate.name).join(', ') || '(none)'}`,
      );
    const tag = (device.tags as TagConfig[]).find((candidate) => candidate.name === tagName);
    if (!tag)
      fail(
        `device "${deviceName}" has no tag "${tagName}"; tags: ${(device.tags as TagConfig[]).map((candidate) => candidate.name).join(', ')}`,
      );

    if ('read' in tag && tag.read === false)
      fail(`tag "${tagName}" of device "${deviceName}" is command-only ("read": false): it is written, never read`);

    const log = createLogger('warn');
    const { startSimulator } = await import('./demo/simulator.js');
    const simulators = await Promise.all(config.simulators.map((simulator) => startSimulator(simulator).catch(() => undefined)));
    const driverModule = (await DRIVERS[device.driver].load()) as DriverModule<DeviceConfig>;
    const driver = driverModule.createDriver(device, { log, dataDir });
    let exitCode = 0;
    try {
      await driver.connect();
      const [reading] = await driver.read(driver.plan([tag as DriverTag]));
      const normalizer = new TagNormalizer({
        device: device.name,
        group: tag.group ?? 'default',
        tag: tag.name,
        scale: tag.scale,
        offset: tag.offset,
        unit: tag.unit,
        report: 'always',
        maxSilence: 0,
      });
      const sample = normalizer.normalize(reading ?? { tag: tag.name, quality: 'bad', reason: 'the driver returned nothing' }, Date.now());
      if (options.json) process.stdout.write(`${encodeTagPayload(sample, config.topics.timestamp)}\n`);
      else {
        const value =
          sample.value === null
            ? '-'
            : JSON.stringify(sample.value, (_key, item: unknown) => (typeof item === 'bigint' ? item.toString() : item));
        process.stdout.write(
          `${device.name}/${tag.name} = ${value}${sample.unit ? ` ${sample.unit}` : ''}  quality=${sample.quality}${sample.reason ? ` (${sample.reason})` : ''}\n`,
        );
      }
      if (sample.quality === 'bad') exitCode = EXIT_FAILURE;
    } catch (error) {
      process.stderr.write(`plc2mqtt: reading ${device.name}/${tag.name} failed: ${errorMessage(error)}\n`);
      exitCode = EXIT_FAILURE;
    } finally {
      await driver.close();
      await Promise.all(simulators.map((simulator) => simulator?.close()));
    }
    process.exit(exitCode);
  });

program
  .command('browse')
  .description('list the children of an OPC UA node (default: the Objects folder) to find NodeIds (commissioning)')
  .addOption(configOption().makeOptionMandatory())
  .argument('<device>', 'name of an OPC UA device')
  .argument('[nodeId]', 'node whose children to list, e.g. "ns=3;s=Line1"', 'i=85')
  .option('--tags', 'print the variables as ready-to-paste tag entries (JSON)')
  .option('--nsu', 'print NodeIds with their namespace URI (nsu=…) instead of its index, which a server may renumber')
  .action(async (deviceName: string, nodeId: string, options: { config: string; tags?: boolean; nsu?: boolean }) => {
    const { config, dataDir } = loadOrExit(options.config);
    const device = config.devices.find((candidate) => candidate.name === deviceName);
    if (!device)
      fail(
        `no device "${deviceName}" in ${options.config}; devices: ${config.devices.map((candidate) => candidate.name).join(', ') || '(none)'}`,
      );
    if (device.driver !== 'opcua') fail(`device "${deviceName}" uses the ${device.driver} driver; browse is for OPC UA devices`);
    const opcua = await DRIVERS.opcua.load();
    const driver = opcua.createDriver(device, { log: createLogger('warn'), dataDir });
    let exitCode = 0;
    try {
      await driver.connect();
      const entries = await driver.browse(nodeId, { namespaceUris: options.nsu === true });
      if (options.tags) process.stdout.write(`${JSON.stringify(opcua.tagEntries(entries), null, 2)}\n`);
      else process.stdout.write(`${entries.length === 0 ? `${nodeId} has no children` : opcua.formatBrowseTable(entries)}\n`);
    } catch (error) {
      process.stderr.write(`plc2mqtt: browsing ${device.name} ${nodeId} failed: ${errorMessage(error)}\n`);
      exitCode = EXIT_FAILURE;
    } finally {
      await driver.close();
    }
    process.exit(exitCode);
  });

program
  .command('simulate')
  .description(
    'start the built-in simulated devices on loopback ports: those of a config, or the demo PLC (Modbus TCP) and the demo scale (MT-SICS over TCP)',
  )
  .addOption(configOption())
  .option('--host <host>', 'bind address of the demo PLC and scale (without -c)', '127.0.0.1')
  .option('--port <port>', 'port of the demo PLC (without -c)', (text) => Number(text), 5020)
  .option('--scale-port <port>', 'port of the demo scale (without -c; default: the PLC port + 1)', (text) => Number(text))
  .option('--pty <path>', 'also put the scale on a pseudo terminal at <path>, like a local serial port (needs socat)')
  .action(async (options: { config?: string; host: string; port: number; scalePort?: number; pty?: string }) => {
    const simulators: SimulatorConfig[] = options.config
      ? loadOrExit(options.config).config.simulators
      : [
          { name: 'demo-plc', type: 'modbus-tcp', host: options.host, port: options.port },
          { name: 'demo-scale', type: 'serial-scale', host: options.host, port: options.scalePort ?? options.port + 1 },
        ];
    if (simulators.length === 0) fail(`${options.config} defines no "simulators"`);
    const ptyTarget = simulators.find((simulator) => simulator.type === 'serial-scale');
    if (options.pty !== undefined && !ptyTarget) fail(`--pty: ${options.config} defines no simulator of type "serial-scale"`);
    const { startSimulator } = await import('./demo/simulator.js');
    const running: RunningSimulator[] = [];
    let socat: ChildProcess | undefined;
    let stopping = false;
    const stop = (code: number) => {
      if (stopping) return;
      stopping = true;
      socat?.kill('SIGTERM');
      void Promise.all(running.map((simulator) => simulator.close())).then(() => process.exit(code));
    };
    for (const simulator of simulators) {
      try {
        running.push(await startSimulator(simulator));
      } catch (error) {
        process.stderr.write(`plc2mqtt: ${errorMessage(error)}\n`);
        return stop(EXIT_FAILURE);
      }
      process.stdout.write(`${running.at(-1)!.describe()}\n`);
    }
    if (options.pty !== undefined) {
      const scale = running.find((simulator) => simulator.name === ptyTarget!.name)!;
      try {
        socat = await ptyBridge(options.pty, scale.host, scale.port, (why) => {
          process.stderr.write(`plc2mqtt: the pty ${options.pty}: ${why}\n`);
          stop(EXIT_FAILURE);
        });
      } catch (error) {
        process.stderr.write(`plc2mqtt: --pty: ${errorMessage(error)}\n`);
        return stop(EXIT_FAILURE);
      }
      process.stdout.write(
        `simulated scale "${scale.name}" also on the pseudo terminal ${options.pty} (socat; any baud rate, 8N1; requests end with CR LF)\n`,
      );
    }
    process.on('SIGINT', () => stop(0));
    process.on('SIGTERM', () => stop(0));
  });

/**
 * Puts a TCP simulator on a pseudo terminal: socat makes the pty (a symlink at `path`) and relays
 * it to host:port. Resolves once the link exists; `onExit` hears of socat ending later.
 */
async function ptyBridge(path: string, host: string, port: number, onExit: (why: string) => void): Promise<ChildProcess> {
  // socat would replace whatever is at the path; only a dangling link (of a socat that was killed) may go.
  if (existsSync(path)) throw new Error(`${path} exists; remove it or choose another path`);
  const target = host === '0.0.0.0' || host === '::' ? '127.0.0.1' : host;
  const child = spawn('socat', [`pty,raw,echo=0,link=${path}`, `tcp:${target.includes(':') ? `[${target}]` : target}:${port}`], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  child.stderr!.on('data', (chunk: Buffer) => (stderr = (stderr + chunk.toString()).slice(-2000)));
  const ended = new Promise<string>((resolve) => {
    child.once('error', (error: NodeJS.ErrnoException) =>
      resolve(
        error.code === 'ENOENT'
          ? 'socat is not installed (or not on PATH); install it (Debian/Ubuntu: apt install socat) or use the TCP port'
          : `cannot start socat: ${error.message}`,
      ),
    );
    child.once('exit', (code, signal) => resolve(`socat exited (${signal ?? `code ${code}`})${stderr ? `: ${stderr.trim()}` : ''}`));
  });
  const deadline = Date.now() + 5000;
  for (;;) {
    const early = await Promise.race([ended, sleep(20).then(() => undefined)]);
    if (early !== undefined) throw new Error(early);
    if (existsSync(path)) break;
    if (Date.now() > deadline) {
      child.kill('SIGTERM');
      throw new Error(`socat made no pty at ${path} within 5 s${stderr ? `: ${stderr.trim()}` : ''}`);
    }
  }
  void ended.then(onExit);
  return child;
}

program
  .command('health')
  .description(
    'exit 0 if the running gateway answers /healthz, else 1 (for Docker HEALTHCHECK and monitoring scripts); reads only the http section of the config',
  )
  .addOption(configOption().default(DEMO_CONFIG, 'config/demo.json'))
  .option('--url <url>', "ask this address instead of the config's http section, e.g. http://127.0.0.1:9180")
  .option('--timeout <ms>', 'give up after this long', (text) => Number(text), 3000)
  .action(async (options: { config: string; url?: string; timeout: number }) => {
    // Health depends on the running gateway only: not on whether the file on disk is valid now
    // (an edit in progress), nor on the environment variables of its other sections.
    const url = options.url !== undefined ? healthUrl(options.url) : healthUrlOf(options.config);
    try {
      const { status, body } = await getText(url, options.timeout);
      if (status < 200 || status > 299) fail(`${url}: ${status} ${body}`);
      process.stdout.write(`${url}: ${body}\n`);
    } catch (error) {
      fail(`${url}: ${errorMessage(error)}`);
    }
  });

/** The /healthz URL of the config's http section; a problem there exits 1 (a Docker health check reserves 2). */
function healthUrlOf(file: string): string {
  let http: ReturnType<typeof loadHttpSection>;
  try {
    http = loadHttpSection(file);
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error;
    fail(`cannot tell the gateway's address from its config:\n${error.message}\n(give it with --url http://HOST:PORT instead)`);
  }
  if (!http.enabled) fail(`http.enabled is false in ${file}: there is no health endpoint to ask`);
  const host = http.host === '0.0.0.0' || http.host === '::' ? '127.0.0.1' : http.host;
  return `${http.tls ? 'https' : 'http'}://${host.includes(':') ? `[${host}]` : host}:${http.port}/healthz`;
}

/**
 * GETs a URL. Over HTTPS the certificate is not verified: the health check asks the gateway's own
 * endpoint on this machine (often with a self-signed certificate) whether the process answers;
 * browsers and Prometheus verify it.
 */
function getText(url: string, timeoutMs: number): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const request = (url.startsWith('https:') ? httpsGet : httpGet)(
      url,
      { timeout: timeoutMs, ...(url.startsWith('https:') ? { rejectUnauthorized: false } : {}) },
      (response) => {
        let body = '';
        response.setEncoding('utf8');
        response.on('data', (chunk: string) => (body += chunk));
        response.on('end', () => resolve({ status: response.statusCode ?? 0, body: body.trim() }));
      },
    );
    request.on('timeout', () => request.destroy(new Error(`no answer within ${timeoutMs} ms`)));
    request.on('error', reject);
  });
}

/** --url with or without the path: http://host:port means http://host:port/healthz. */
function healthUrl(text: string): string {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    fail(`--url: not a URL: ${text} (expected e.g. http://127.0.0.1:9180)`);
  }
  if (url.pathname === '/' || url.pathname === '') url.pathname = '/healthz';
  return url.href;
}

program
  .command('passwd')
  .description('print the scrypt hash of a password for broker.users[].passwordHash (reads the password from stdin or asks for it)')
  .action(async () => {
    const password = await readPassword();
    if (password.length === 0) fail('empty password');
    process.stdout.write(`${await hashPassword(password)}\n`);
  });

/** The password from a terminal prompt without echo, or the first line of stdin when piped. */
async function readPassword(): Promise<string> {
  const input = process.stdin;
  if (!input.isTTY) {
    let text = '';
    for await (const chunk of input) text += String(chunk);
    return text.split(/\r?\n/)[0] ?? '';
  }
  process.stderr.write('Password: ');
  input.setRawMode(true);
  let password = '';
  for await (const chunk of input) {
    for (const char of String(chunk)) {
      if (char === '\r' || char === '\n') {
        input.setRawMode(false);
        input.pause();
        process.stderr.write('\n');
        return password;
      }
      if (char === '\u0003') process.exit(130);
      password = char === '\u007f' ? password.slice(0, -1) : password + char;
    }
  }
  return password;
}

program.parseAsync(process.argv).catch((error: unknown) => fail(errorMessage(error)));
