// The two child processes of the broker benchmark (bench/broker.ts starts them; not run by hand):
//
//   node --expose-gc dist/bench/broker-clients.js broker --data-dir DIR
//     The integrated broker alone (IntegratedBroker, a config parsed by brokerSection): one TCP
//     listener on 127.0.0.1 and a free port, anonymous, no retained persistence, maxConnections
//     5000, logs at warn to /dev/null. Prints "READY <port>". On stdin, one line each:
//       memory ID   gc() twice, 300 ms apart, then prints "MEMORY ID {process.memoryUsage()}"
//       stats ID    prints "STATS ID {cpu, maxRss, broker.stats}"
//
//   node dist/bench/broker-clients.js clients --url mqtt://… --protocol 4|5 --scenario fanin|fanout|connections
//        [--publishers FROM:TO] [--publisher-count N] [--subscribers N] [--connections FROM:TO]
//        [--rate PER_PUBLISHER|max] [--unacked 10] [--payload 64]
//     MQTT clients (mqtt.js): publishers with indices FROM..TO-1, subscribers (fanin: one on bench/#;
//     fanout: N on bench/fanout), idle connections (each subscribed to its own topic), QoS 1.
//     Prints "READY {json}" once all are connected and subscribed. On stdin:
//       go START T0 T1   publish from START to T1 (epoch ms); [T0, T1) is the measured window
//     and once it is over (acks in, nothing arrived for a second) prints "RESULT {json}".
//
// Latency: every message carries its send time, performance.timeOrigin + performance.now() (epoch
// ms with a fraction), the same clock in every process of the machine; the subscriber takes the
// difference at arrival. Percentiles come from a histogram (0.01 ms steps to 10 ms, 0.1 ms to
// 100 ms, 1 ms beyond, up to 60 s), computed where the subscribers are.
import { createInterface } from 'node:readline';
import { parseArgs } from 'node:util';

const role = process.argv[2];
// The parent talks over stdin: when it goes away (however it ends), so does this process.
process.stdin.once('end', () => process.exit(0));
const lines = createInterface({ input: process.stdin });
const now = () => performance.timeOrigin + performance.now();

async function runBroker(): Promise<void> {
  const { values } = parseArgs({ args: process.argv.slice(3), options: { 'data-dir': { type: 'string' } } });
  const { pino } = await import('pino');
  const { IntegratedBroker } = await import('../src/broker/broker.js');
  const { brokerSection } = await import('../src/config/schema.js');
  const config = brokerSection.parse({
    listeners: [{ type: 'tcp', host: '127.0.0.1', port: 0 }],
    allowAnonymous: true,
    persistRetained: false,
    limits: { maxConnections: 5000 },
  });
  const log = pino({ level: 'warn' }, pino.destination('/dev/null'));
  const broker = await IntegratedBroker.start(config, log, values['data-dir']!);
  const gc = (globalThis as { gc?: () => void }).gc;
  lines.on('line', (line) => {
    const [command, id] = line.trim().split(' ');
    if (command === 'memory') {
      gc?.();
      setTimeout(() => {
        gc?.();
        console.log(`MEMORY ${id} ${JSON.stringify({ ...process.memoryUsage(), gc: gc !== undefined })}`);
      }, 300);
    } else if (command === 'stats') {
      const cpu = process.cpuUsage();
      console.log(
        `STATS ${id} ${JSON.stringify({ cpuSeconds: (cpu.user + cpu.system) / 1e6, maxRssKb: process.resourceUsage().maxRSS, clients: broker.clientCount, ...broker.stats })}`,
      );
    }
  });
  process.once('SIGTERM', () => {
    broker.close().then(
      () => process.exit(0),
      () => process.exit(1),
    );
  });
  console.log(`READY ${broker.addresses()[0]!.port}`);
}

/** Latencies in ms: 0.01 ms steps below 10, 0.1 ms below 100, 1 ms up to 60 s (later ones count as 60 s). */
class Histogram {
  private readonly buckets = new Uint32Array(1000 + 900 + 59_900);
  count = 0;
  max = 0;

  add(ms: number): void {
    const value = Math.max(ms, 0);
    if (value > this.max) this.max = value;
    this.count++;
    const index =
      value < 10 ? Math.floor(value * 100) : value < 100 ? 1000 + Math.floor((value - 10) * 10) : 1900 + Math.floor(value - 100);
    this.buckets[Math.min(index, this.buckets.length - 1)]!++;
  }

  /** The upper edge of the bucket that holds the quantile, rounded to 0.01 ms. */
  quantile(q: number): number | null {
    if (this.count === 0) return null;
    const rank = Math.ceil(q * this.count);
    let seen = 0;
    for (let index = 0; index < this.buckets.length; index++) {
      seen += this.buckets[index]!;
      if (seen >= rank) {
        const edge = index < 1000 ? (index + 1) / 100 : index < 1900 ? 10 + (index - 999) / 10 : 100 + (index - 1899);
        return Math.round(Math.min(edge, this.max) * 100) / 100;
      }
    }
    return Math.round(this.max * 100) / 100;
  }

  figures() {
    return {
      p50: this.quantile(0.5),
      p95: this.quantile(0.95),
      p99: this.quantile(0.99),
      max: this.count === 0 ? null : Math.round(this.max * 100) / 100,
    };
  }
}

async function runClients(): Promise<void> {
  const { values: args } = parseArgs({
    args: process.argv.slice(3),
    options: {
      url: { type: 'string' },
      protocol: { type: 'string', default: '4' },
      scenario: { type: 'string', default: 'fanin' },
      publishers: { type: 'string', default: '0:0' },
      'publisher-count': { type: 'string', default: '0' },
      subscribers: { type: 'string', default: '0' },
      connections: { type: 'string', default: '0:0' },
      rate: { type: 'string', default: '100' },
      unacked: { type: 'string', default: '10' },
      payload: { type: 'string', default: '64' },
    },
  });
  const { default: mqtt } = await import('mqtt');
  type MqttClient = import('mqtt').MqttClient;
  const protocolVersion = Number(args.protocol) as 4 | 5;
  const range = (text: string) => text.split(':').map(Number) as [number, number];
  const [pubFrom, pubTo] = range(args.publishers);
  const [connFrom, connTo] = range(args.connections);
  const publisherCount = Number(args['publisher-count']);
  const subscriberCount = Number(args.subscribers);
  const saturate = args.rate === 'max';
  const ratePerPublisher = saturate ? 0 : Number(args.rate);
  const unacked = Number(args.unacked);
  const payloadBytes = Math.max(16, Number(args.payload));
  const fanout = args.scenario === 'fanout';

  let disconnects = 0;
  let errors = 0;
  const connectOne = (clientId: string): Promise<MqttClient> =>
    new Promise((resolve, reject) => {
      const client = mqtt.connect(args.url!, {
        clientId,
        protocolVersion,
        clean: true,
        keepalive: 60,
        reconnectPeriod: 0,
        connectTimeout: 60_000,
      });
      client.once('connect', () => {
        client.on('close', () => disconnects++);
        resolve(client);
      });
      client.on('error', (error) => {
        errors++;
        reject(error);
      });
    });
  const subscribe = (client: MqttClient, topic: string) =>
    new Promise<void>((resolve, reject) =>
      client.subscribe(topic, { qos: 1 }, (error, granted) =>
        error
          ? reject(error)
          : granted?.[0]?.qos === 1
            ? resolve()
            : reject(new Error(`subscription to ${topic}: ${JSON.stringify(granted)}`)),
      ),
    );
  /** Runs `each` over the indices, `parallel` at a time. */
  const inBatches = async (from: number, to: number, parallel: number, each: (index: number) => Promise<unknown>) => {
    for (let index = from; index < to; index += parallel)
      await Promise.all(Array.from({ length: Math.min(parallel, to - index) }, (_, offset) => each(index + offset)));
  };

  // Timing of the window (set by "go").
  let t0 = Infinity;
  let t1 = Infinity;

  // Subscribers: every arrival, its latency, duplicates (a sequence number not above the last seen).
  const histogram = new Histogram();
  let arrived = 0;
  let arrivedInWindow = 0;
  let deliveredOfWindow = 0;
  let duplicates = 0;
  let lastArrival = 0;
  const subscribers: MqttClient[] = [];
  const onMessage = (lastSeq: Int32Array) => (_topic: string, payload: Buffer) => {
    const at = now();
    lastArrival = at;
    arrived++;
    if (at >= t0 && at < t1) arrivedInWindow++;
    const sentAt = payload.readDoubleLE(0);
    const publisher = payload.readUInt32LE(8);
    const seq = payload.readUInt32LE(12);
    if (seq <= lastSeq[publisher]! && lastSeq[publisher] !== -1) duplicates++;
    else lastSeq[publisher] = seq;
    if (sentAt >= t0 && sentAt < t1) {
      deliveredOfWindow++;
      histogram.add(at - sentAt);
    }
  };
  const started = now();
  if (fanout) {
    await inBatches(0, subscriberCount, 50, async (index) => {
      const client = await connectOne(`bench-sub-${index}`);
      client.on('message', onMessage(new Int32Array(Math.max(1, publisherCount)).fill(-1)));
      await subscribe(client, 'bench/fanout');
      subscribers.push(client);
    });
  } else if (subscriberCount > 0) {
    const client = await connectOne('bench-sub');
    client.on('message', onMessage(new Int32Array(Math.max(1, publisherCount)).fill(-1)));
    await subscribe(client, 'bench/#');
    subscribers.push(client);
  }

  // Idle connections, each subscribed to a topic of its own.
  const idle: MqttClient[] = [];
  await inBatches(connFrom, connTo, 50, async (index) => {
    const client = await connectOne(`bench-conn-${index}`);
    await subscribe(client, `bench/conn/${index}`);
    idle.push(client);
  });

  // Publishers.
  interface Publisher {
    index: number;
    client: MqttClient;
    topic: string;
    seq: number;
    unacked: number;
  }
  const publishers: Publisher[] = [];
  await inBatches(pubFrom, pubTo, 50, async (index) => {
    const client = await connectOne(`bench-pub-${index}`);
    publishers.push({ index, client, topic: fanout ? 'bench/fanout' : `bench/p${index}`, seq: 0, unacked: 0 });
  });
  publishers.sort((a, b) => a.index - b.index);
  const connectSeconds = (now() - started) / 1000;
  console.log(`READY ${JSON.stringify({ connectSeconds, clients: subscribers.length + idle.length + publishers.length })}`);

  let sent = 0;
  let sentInWindow = 0;
  let acked = 0;
  let ackedInWindow = 0;
  let publishErrors = 0;
  let publishing = false;
  const publish = (publisher: Publisher) => {
    const payload = Buffer.alloc(payloadBytes);
    const sentAt = now();
    payload.writeDoubleLE(sentAt, 0);
    payload.writeUInt32LE(publisher.index, 8);
    payload.writeUInt32LE(publisher.seq++, 12);
    sent++;
    if (sentAt >= t0 && sentAt < t1) sentInWindow++;
    publisher.unacked++;
    publisher.client.publish(publisher.topic, payload, { qos: 1 }, (error) => {
      publisher.unacked--;
      if (error) publishErrors++;
      else {
        acked++;
        const at = now();
        if (at >= t0 && at < t1) ackedInWindow++;
      }
      if (saturate && publishing && !error) publish(publisher);
    });
  };

  let startAt = 0;
  lines.on('line', async (line) => {
    const [command, ...rest] = line.trim().split(' ');
    if (command !== 'go') return;
    [startAt, t0, t1] = rest.map(Number) as [number, number, number];
    await new Promise((resolve) => setTimeout(resolve, Math.max(0, startAt - now())));
    publishing = publishers.length > 0;
    if (saturate) {
      for (const publisher of publishers) for (let n = 0; n < unacked; n++) publish(publisher);
      setTimeout(() => (publishing = false), t1 - now());
    } else if (publishers.length > 0) {
      // Publisher i sends at START + (k + i / N) / rate: evenly spread, each at its own steady rate.
      const ticker = setInterval(() => {
        const at = now();
        const elapsed = (Math.min(at, t1) - startAt) / 1000;
        for (const publisher of publishers) {
          const due = Math.floor(elapsed * ratePerPublisher + publisher.index / Math.max(1, publisherCount));
          while (publisher.seq < due) publish(publisher);
        }
        if (at >= t1) {
          clearInterval(ticker);
          publishing = false;
        }
      }, 1);
    }
    // Done: past T1, every publish acknowledged (or 30 s passed), nothing arrived for a second (or 30 s).
    const deadline = t1 + 30_000;
    for (;;) {
      await new Promise((resolve) => setTimeout(resolve, 100));
      const at = now();
      if (at < t1 || publishing) continue;
      const acksIn = publishers.every((publisher) => publisher.unacked === 0);
      const quiet = subscribers.length === 0 || at - Math.max(lastArrival, t1) > 1000;
      if ((acksIn && quiet) || at > deadline) break;
    }
    console.log(
      `RESULT ${JSON.stringify({
        sent,
        sentInWindow,
        acked,
        ackedInWindow,
        unacked: publishers.reduce((sum, publisher) => sum + publisher.unacked, 0),
        publishErrors,
        arrived,
        arrivedInWindow,
        deliveredOfWindow,
        duplicates,
        latencyMs: histogram.figures(),
        lastArrivalAfterWindowMs: subscribers.length === 0 ? null : Math.round(lastArrival - t1),
        disconnects,
        errors,
      })}`,
    );
  });
}

// After the class above is initialized.
if (role === 'broker') await runBroker();
else if (role === 'clients') await runClients();
else throw new Error(`broker-clients.js broker|clients, not ${role}`);
