// Cloud-side counter for the replay benchmark, in its own process: subscribes at QoS 1 and waits
// until it has seen `expected` distinct sequence numbers ({"seq":N} payloads). Prints one JSON line.
import mqtt from 'mqtt';

const [url = 'mqtt://127.0.0.1:1883', filter = '#', expectedText = '1000', timeoutText = '600000'] = process.argv.slice(2);
const expected = Number(expectedText);
const client = await mqtt.connectAsync(url, { clientId: `bench-counter-${process.pid}`, clean: true, reconnectPeriod: 0 });
const seen = new Uint8Array(expected + 1);
let distinct = 0;
let total = 0;
let outOfOrder = 0;
let last = 0;
let first = 0;
client.on('message', (_topic, payload) => {
  const seq = Number(/"seq":(\d+)/.exec(payload.toString())?.[1] ?? 0);
  if (seq === 0) return; // the gateway's status messages
  total++;
  if (first === 0) first = Date.now();
  if (seq < last) outOfOrder++;
  last = seq;
  if (seq > 0 && seq <= expected && seen[seq] === 0) {
    seen[seq] = 1;
    distinct++;
    if (distinct === expected) finish();
  }
});
await client.subscribeAsync(filter, { qos: 1 });
process.stdout.write('SUBSCRIBED\n');
const timer = setTimeout(finish, Number(timeoutText));

function finish(): void {
  clearTimeout(timer);
  process.stdout.write(
    `${JSON.stringify({ distinct, total, duplicates: total - distinct, outOfOrder, firstAt: first, doneAt: Date.now() })}\n`,
  );
  void client.endAsync(true).then(() => process.exit(0));
}
