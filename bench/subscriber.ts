// Benchmark subscriber, in its own process so its CPU is not the gateway's: counts messages on a
// topic filter for a fixed window and measures latency from the payload's "ts" (the gateway's
// read time; same machine, same clock) to arrival. Prints one JSON line.
import mqtt from 'mqtt';

const [url = 'mqtt://127.0.0.1:1883', filter = '#', warmupText = '3000', windowText = '10000'] = process.argv.slice(2);
const warmup = Number(warmupText);
const window = Number(windowText);

const client = await mqtt.connectAsync(url, { reconnectPeriod: 0, clean: true });
let counting = false;
let count = 0;
const latencies: number[] = [];

client.on('message', (_topic, payload) => {
  if (!counting) return;
  count++;
  // Sample latency of every message cheaply: the ts field sits in a fixed place in our payloads.
  const match = /"ts":(\d+)/.exec(payload.toString());
  if (match) latencies.push(Date.now() - Number(match[1]));
});
await client.subscribeAsync(filter, { qos: 0 });
process.stdout.write('SUBSCRIBED\n');

await new Promise((resolve) => setTimeout(resolve, warmup));
counting = true;
const started = Date.now();
await new Promise((resolve) => setTimeout(resolve, window));
counting = false;
const elapsed = Date.now() - started;
latencies.sort((a, b) => a - b);
const percentile = (p: number) => (latencies.length === 0 ? null : latencies[Math.min(latencies.length - 1, Math.floor((p / 100) * latencies.length))]);
process.stdout.write(`${JSON.stringify({ messages: count, seconds: elapsed / 1000, perSecond: Math.round((count * 1000) / elapsed), latencyMs: { p50: percentile(50), p99: percentile(99), max: latencies.at(-1) ?? null } })}\n`);
await client.endAsync(true);
process.exit(0);
