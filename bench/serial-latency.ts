// Serial-line driver, latency: from the last byte of a frame on the line to its tag message at a
// subscriber, on loopback. The bench process is a serial device server (raw TCP, as a Moxa NPort
// in "TCP server" mode) with an instrument behind it; the gateway runs in its own process (the
// real CLI, integrated broker), with a `serial` device on `"transport": "tcp"`; the subscriber runs
// in its own process (this script with --subscriber) at the integrated broker, QoS 0.
//
// Every frame carries its send time, `T=<ms>\r\n`, taken right before the frame is written (so
// its last byte leaves with it), parsed by the gateway as a float64 tag with report "always".
// The subscriber takes its arrival time the same way; latency = arrival − the value. Both are
// CLOCK_MONOTONIC (process.hrtime, in ms with µs digits), which every process of the machine
// shares and NTP does not slew; wall-clock times (performance.timeOrigin + performance.now()) of
// two processes drift apart by the clock's slew since each started.
//
//   stream:  a streaming group with deliver "frame" (push); the device sends at each --rates rate
//            (frames/s), one after another in one gateway run;
//   request: (--request, or --request-only) a request group polled every --request-interval ms: "R\r\n",
//            answered at once with the frame; latency from the reply's last byte.
//
// Each rate gets --warmup seconds and then a --window of frames whose send time is in it (longer
// when the rate would put fewer than --min-frames frames in it: 30 s at 10/s). Prints
// one JSON line: per phase p50/p95/p99/max (ms), frames sent and delivered in the window, the
// gateway's CPU (% of one core) and RSS in the window.
//
//   node dist/bench/serial-latency.js [--rates 10,100,1000] [--window 10] [--min-frames 300] [--warmup 2]
//        [--request] [--request-only] [--request-interval 100] [--keepalive 60]
//        [--gateway-flags=--trace-gc] [--gateway-log FILE]
//
// --keepalive is the subscriber's MQTT keep-alive in seconds (a ping meeting a delayed ACK would
// hold messages ~40 ms on a socket with Nagle's algorithm on; the broker's listeners turn it off).
import { writeFileSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import mqtt from 'mqtt';
import { cpuSeconds, exited, freePort, peakRssMb, rssMb, type Started, sleep, start, tempFolder, waitForOutput } from './lib.js';

const { values: args } = parseArgs({
  options: {
    rates: { type: 'string', default: '10,100,1000' },
    window: { type: 'string', default: '10' },
    // A slow rate's window is longer, so its p99 rests on this many frames at least.
    'min-frames': { type: 'string', default: '300' },
    warmup: { type: 'string', default: '2' },
    request: { type: 'boolean', default: false },
    'request-only': { type: 'boolean', default: false },
    'request-interval': { type: 'string', default: '100' },
    // Node options for the gateway process (space-separated; write them with "="), e.g. --gateway-flags=--trace-gc
    'gateway-flags': { type: 'string' },
    // Debugging: write the tail of the gateway's output (logs, --trace-gc lines) to this file.
    'gateway-log': { type: 'string' },
    // How long after a window's end its last messages may still arrive.
    grace: { type: 'string', default: '2' },
    // The subscriber's role (started by the bench itself).
    subscriber: { type: 'boolean', default: false },
    url: { type: 'string' },
    // The subscriber's MQTT keep-alive (s; mqtt.js's default): each PINGREQ shows in the latencies (see the top).
    keepalive: { type: 'string', default: '60' },
    filter: { type: 'string' },
  },
});

/** CLOCK_MONOTONIC in ms (µs digits): one clock for every process of the machine. */
const monotonicMs = (): number => Number(process.hrtime.bigint() / 1000n) / 1000;

// ---- the subscriber process --------------------------------------------------------------------

interface PhaseFigures {
  delivered: number;
  bad: number;
  latencyMs: { p50: number; p95: number; p99: number; max: number } | null;
  /** Frames slower than 10 ms. */
  over10ms: number;
  /** The 5 slowest episodes (frames sent more than 100 ms apart): latency (ms), send time (seconds into the window). */
  slowest: { ms: number; atSecond: number }[];
}

async function subscriber(): Promise<void> {
  /** Per topic: [send time, latency] of each message, in arrival order. */
  const received = new Map<string, { sent: number[]; latency: number[]; bad: number[] }>();
  const client = await mqtt.connectAsync(args.url!, {
    clientId: `bench-serial-${process.pid}`,
    clean: true,
    reconnectPeriod: 0,
    keepalive: Number(args.keepalive),
  });
  client.on('message', (topic, payload) => {
    const arrival = monotonicMs();
    const message = JSON.parse(payload.toString()) as { value?: unknown; quality?: string };
    let byTopic = received.get(topic);
    if (!byTopic) received.set(topic, (byTopic = { sent: [], latency: [], bad: [] }));
    if (typeof message.value !== 'number' || message.quality !== 'good') {
      byTopic.bad.push(arrival);
      return;
    }
    byTopic.sent.push(message.value);
    byTopic.latency.push(arrival - message.value);
  });
  await client.subscribeAsync(args.filter!, { qos: 0 });
  process.stdout.write('SUBSCRIBED\n');
  createInterface({ input: process.stdin }).on('line', (line) => {
    // report ID TOPIC T0 T1: figures of TOPIC's messages sent in [T0, T1)
    const [command, id, topic, t0, t1] = line.trim().split(/\s+/);
    if (command !== 'report') return;
    const from = Number(t0);
    const to = Number(t1);
    const byTopic = received.get(topic!) ?? { sent: [], latency: [], bad: [] };
    const latencies: number[] = [];
    const frames: { ms: number; atSecond: number }[] = [];
    byTopic.sent.forEach((sent, index) => {
      if (sent < from || sent >= to) return;
      const latency = byTopic.latency[index]!;
      latencies.push(latency);
      frames.push({ ms: round(latency), atSecond: Math.round(sent - from) / 1000 });
    });
    latencies.sort((a, b) => a - b);
    // One stall delays every frame sent during it: the slowest frame of each, 5 stalls at most.
    const slowest: { ms: number; atSecond: number }[] = [];
    for (const frame of frames.sort((a, b) => b.ms - a.ms)) {
      if (slowest.length === 5) break;
      if (slowest.every((other) => Math.abs(other.atSecond - frame.atSecond) > 0.1)) slowest.push(frame);
    }
    const at = (p: number) => round(latencies[Math.min(latencies.length - 1, Math.max(0, Math.ceil((p / 100) * latencies.length) - 1))]!);
    const figures: PhaseFigures = {
      delivered: latencies.length,
      bad: byTopic.bad.filter((arrival) => arrival >= from && arrival < to).length,
      latencyMs: latencies.length === 0 ? null : { p50: at(50), p95: at(95), p99: at(99), max: round(latencies.at(-1)!) },
      over10ms: latencies.filter((latency) => latency > 10).length,
      slowest,
    };
    process.stdout.write(`REPORT ${id} ${JSON.stringify(figures)}\n`);
  });
  process.stdin.on('end', () => process.exit(0));
}

function round(ms: number): number {
  return Math.round(ms * 100) / 100;
}

// ---- the bench: device servers, gateway, phases -------------------------------------------------

/** The frame an instrument sends: its send time, stamped as it goes out. */
const frameNow = (): string => `T=${monotonicMs().toFixed(3)}\r\n`;

/** A device server port with one instrument behind it; counts the frames it sent by send time. */
class DeviceServer {
  readonly server: Server;
  socket: Socket | undefined;
  readonly sentAt: number[] = [];
  connected: Promise<void>;
  private timer: NodeJS.Timeout | undefined;

  constructor(answerRequests: boolean) {
    let onConnect: () => void = () => undefined;
    this.connected = new Promise((resolve) => {
      onConnect = resolve;
    });
    this.server = createServer((socket) => {
      socket.setNoDelay(true);
      this.socket = socket;
      socket.on('error', () => undefined);
      let pending = '';
      socket.on('data', (chunk) => {
        if (!answerRequests) return;
        pending += chunk.toString('latin1');
        for (let end = pending.indexOf('\r\n'); end >= 0; end = pending.indexOf('\r\n')) {
          const request = pending.slice(0, end);
          pending = pending.slice(end + 2);
          if (request === 'R') this.send();
        }
      });
      onConnect();
    });
  }

  listen(port: number): Promise<void> {
    return new Promise((resolve) => this.server.listen(port, '127.0.0.1', () => resolve()));
  }

  send(): void {
    const frame = frameNow();
    this.sentAt.push(Number(frame.slice(2, -2)));
    this.socket?.write(frame);
  }

  /** Streams `rate` frames per second until stopped: frames that fell due while the process slept go out at once, each with its own time. */
  stream(rate: number): void {
    this.stop();
    const period = 1000 / rate;
    let due = monotonicMs();
    const tick = () => {
      const now = monotonicMs();
      while (due <= now) {
        this.send();
        due += period;
      }
      this.timer = setTimeout(tick, Math.max(0, due - monotonicMs()));
    };
    tick();
  }

  stop(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
  }

  countSent(from: number, to: number): number {
    return this.sentAt.filter((sent) => sent >= from && sent < to).length;
  }
}

async function bench(): Promise<void> {
  const root = fileURLToPath(new URL('../../', import.meta.url));
  const rates = args['request-only'] ? [] : args.rates.split(',').map(Number);
  const withRequest = args.request || args['request-only'];
  const requestInterval = Number(args['request-interval']);
  const minFrames = Number(args['min-frames']);
  /** The window for `rate` frames per second. */
  const windowFor = (rate: number) => Math.max(Number(args.window) * 1000, (minFrames / rate) * 1000);
  const warmupMs = Number(args.warmup) * 1000;
  const graceMs = Number(args.grace) * 1000;
  const folder = tempFolder('plc2mqtt-serial-latency-');

  const phases: Record<string, unknown>[] = [];
  let requestCount = 0;

  /** One gateway with one serial device on a device server of ours; runs `body`, then stops it. */
  const withGateway = async (
    device: Record<string, unknown>,
    server: DeviceServer,
    body: (gateway: Started, subscriber: Started, report: (t0: number, t1: number) => Promise<PhaseFigures>) => Promise<void>,
  ): Promise<{ peakRssMb: number }> => {
    const serverPort = await freePort();
    await server.listen(serverPort);
    const brokerPort = await freePort();
    const config = {
      gateway: { name: 'bench', dataDir: join(folder, 'data'), logLevel: 'info' },
      broker: { listeners: [{ type: 'tcp', host: '127.0.0.1', port: brokerPort }], allowAnonymous: true },
      http: { port: 0 },
      topics: { retain: false },
      devices: [
        {
          driver: 'serial',
          connection: { transport: 'tcp', host: '127.0.0.1', port: serverPort },
          framing: { type: 'delimiter', delimiter: '\r\n' },
          report: 'always',
          tags: [{ name: 'sent', regex: '^T=(\\d+\\.\\d+)$', type: 'float64' }],
          ...device,
        },
      ],
    };
    const configFile = join(folder, `${String(device.name)}.json`);
    writeFileSync(configFile, JSON.stringify(config));
    const nodeFlags = args['gateway-flags']?.split(/\s+/).filter(Boolean) ?? [];
    const gateway = await start(
      process.execPath,
      [...nodeFlags, join(root, 'dist/src/cli.js'), 'run', '-c', configFile],
      /polling started/,
      120_000,
    );
    await server.connected;
    const self = fileURLToPath(import.meta.url);
    const topic = `plc2mqtt/bench/${String(device.name)}/sent`;
    const subscriber = await start(
      process.execPath,
      [self, '--subscriber', '--url', `mqtt://127.0.0.1:${brokerPort}`, '--filter', 'plc2mqtt/bench/+/+', '--keepalive', args.keepalive],
      /SUBSCRIBED/,
      30_000,
      { stdin: true },
    );
    const report = async (t0: number, t1: number): Promise<PhaseFigures> => {
      const id = ++requestCount;
      subscriber.child.stdin!.write(`report ${id} ${topic} ${t0} ${t1}\n`);
      return JSON.parse((await waitForOutput(subscriber, new RegExp(`REPORT ${id} (\\{.*\\})\\n`), 10_000))[1]!) as PhaseFigures;
    };
    await body(gateway, subscriber, report);
    const peak = peakRssMb(gateway.child.pid!);
    gateway.child.kill('SIGTERM');
    await Promise.race([exited(gateway.child), sleep(10_000)]);
    if (args['gateway-log']) writeFileSync(`${args['gateway-log']}.${String(device.name)}`, gateway.output());
    subscriber.child.stdin!.end();
    server.stop();
    server.socket?.destroy();
    await new Promise((resolve) => server.server.close(resolve));
    return { peakRssMb: peak };
  };

  /** Waits out the warm-up, measures one window of send times, and collects the subscriber's figures. */
  const measure = async (
    name: string,
    rate: number,
    extra: Record<string, unknown>,
    gateway: Started,
    server: DeviceServer,
    report: (t0: number, t1: number) => Promise<PhaseFigures>,
  ) => {
    const pid = gateway.child.pid!;
    await sleep(warmupMs);
    const t0 = monotonicMs();
    const cpuStart = cpuSeconds(pid);
    await sleep(windowFor(rate));
    const t1 = monotonicMs();
    const cpu = cpuSeconds(pid) - cpuStart;
    const rss = rssMb(pid);
    await sleep(graceMs);
    const figures = await report(t0, t1);
    const sent = server.countSent(t0, t1);
    phases.push({
      phase: name,
      ...extra,
      windowSeconds: round((t1 - t0) / 1000),
      sent,
      delivered: figures.delivered,
      deliveredPercent: sent === 0 ? 0 : Math.floor((figures.delivered / sent) * 10_000) / 100,
      bad: figures.bad,
      latencyMs: figures.latencyMs,
      over10ms: figures.over10ms,
      slowest: figures.slowest,
      gatewayCpuPercent: Math.round((cpu / ((t1 - t0) / 1000)) * 1000) / 10,
      gatewayRssMb: rss,
    });
  };

  const runs: Record<string, { peakRssMb: number }> = {};
  if (rates.length > 0) {
    const server = new DeviceServer(false);
    // A push group (deliver "frame"); pollInterval is how often the runner checks the subscription.
    runs.stream = await withGateway({ name: 'streamer', pollInterval: 1000, deliver: 'frame' }, server, async (gateway, _, report) => {
      for (const rate of rates) {
        server.stream(rate);
        await measure(`stream ${rate}/s`, rate, { framesPerSecond: rate }, gateway, server, report);
      }
    });
  }
  if (withRequest) {
    const server = new DeviceServer(true);
    runs.request = await withGateway(
      { name: 'poller', pollInterval: requestInterval, request: 'R\r\n' },
      server,
      async (gateway, _, report) => {
        await measure(
          `request every ${requestInterval} ms`,
          1000 / requestInterval,
          { requestIntervalMs: requestInterval },
          gateway,
          server,
          report,
        );
      },
    );
  }

  console.log(
    JSON.stringify({
      bench: 'serial-latency',
      path: 'device server (TCP, bench process) → gateway (serial driver, tcp transport) → integrated broker → subscriber (QoS 0)',
      frame: 'T=<send time ms>\\r\\n',
      phases,
      gatewayPeakRssMb: Object.fromEntries(Object.entries(runs).map(([name, run]) => [name, run.peakRssMb])),
      ...(args['gateway-flags'] ? { gatewayNodeFlags: args['gateway-flags'] } : {}),
    }),
  );
  process.exit(0);
}

// Last, once the classes above are initialized.
if (args.subscriber) await subscriber();
else await bench();
