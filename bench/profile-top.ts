// Summarizes a V8 CPU profile (node --cpu-prof, e.g. from `e2e.js --prof DIR`): the functions with
// the most self time, and self time per package / source file, as shares of the busy (non-idle)
// time. Prints one JSON line.
//
//   node dist/bench/profile-top.js FILE.cpuprofile [--top 25] [--from SECONDS] [--to SECONDS]
//
// --from/--to keep only the samples in that span of the profile (seconds since it started), e.g.
// to leave out start-up.
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}
interface Profile {
  nodes: ProfileNode[];
  startTime: number;
  endTime: number;
  samples: number[];
  timeDeltas: number[];
}

const { values: args, positionals } = parseArgs({
  allowPositionals: true,
  options: { top: { type: 'string', default: '25' }, from: { type: 'string', default: '0' }, to: { type: 'string', default: '1e9' } },
});
const file = positionals[0];
if (!file) throw new Error('usage: profile-top.js FILE.cpuprofile [--top 25] [--from s] [--to s]');
const profile = JSON.parse(readFileSync(file, 'utf8')) as Profile;
const from = Number(args.from) * 1e6;
const to = Number(args.to) * 1e6;

const byId = new Map(profile.nodes.map((node) => [node.id, node]));
const selfUs = new Map<number, number>();
let elapsed = 0;
let total = 0;
for (let index = 0; index < profile.samples.length; index++) {
  elapsed += profile.timeDeltas[index] ?? 0;
  if (elapsed < from || elapsed > to) continue;
  // The time until the next sample is this sample's.
  const delta = profile.timeDeltas[index + 1] ?? 0;
  const id = profile.samples[index]!;
  selfUs.set(id, (selfUs.get(id) ?? 0) + delta);
  total += delta;
}

/** Where a function lives: "node:internal…", a package name, or a folder of this project. */
function origin(url: string): string {
  if (url === '') return '(native/V8)';
  if (url.startsWith('node:')) return 'node:internal';
  const module = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(url);
  if (module) return module[1]!;
  const own = /\/dist\/(src|drivers)\/(.*)$/.exec(url);
  if (own) return `${own[1]}/${own[2]}`;
  return url;
}

const byFunction = new Map<string, number>();
const byOrigin = new Map<string, number>();
for (const [id, us] of selfUs) {
  const { callFrame } = byId.get(id)!;
  const place = origin(callFrame.url);
  const name = `${callFrame.functionName || '(anonymous)'} ${place}${callFrame.url ? `:${callFrame.lineNumber + 1}` : ''}`;
  byFunction.set(name, (byFunction.get(name) ?? 0) + us);
  const group =
    callFrame.functionName === '(idle)' ? '(idle)' : callFrame.functionName === '(garbage collector)' ? '(garbage collector)' : place;
  byOrigin.set(group, (byOrigin.get(group) ?? 0) + us);
}
// Shares are of the busy time: everything but (idle).
const idle = byOrigin.get('(idle)') ?? 0;
byOrigin.delete('(idle)');
for (const name of [...byFunction.keys()]) if (name.startsWith('(idle)')) byFunction.delete(name);
const busy = total - idle;
const share = (us: number) => Math.round((us / busy) * 1000) / 10;
const top = (map: Map<string, number>, count: number) =>
  [...map]
    .sort((a, b) => b[1] - a[1])
    .slice(0, count)
    .map(([name, us]) => ({ name, selfPercent: share(us), selfMs: Math.round(us / 1000) }));

console.log(
  JSON.stringify({
    profile: file,
    sampledSeconds: Math.round(total / 1e4) / 100,
    busySeconds: Math.round(busy / 1e4) / 100,
    topFunctions: top(byFunction, Number(args.top)),
    byOrigin: top(byOrigin, 20),
  }),
);
