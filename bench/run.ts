// `npm run bench`: every benchmark point in turn, one JSON line each.
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = fileURLToPath(new URL('.', import.meta.url));
const points: string[][] = [
  ['--tags', '1000', '--interval', '1000', '--devices', '1'],
  ['--tags', '10000', '--interval', '1000', '--devices', '10'],
  ['--tags', '10000', '--interval', '100', '--devices', '10'],
  ['--tags', '10000', '--interval', '100', '--devices', '10', '--format', 'batch'],
];
const runs: Array<[string, string[]]> = [['modbus-plan.js', []], ...points.map((point): [string, string[]] => ['e2e.js', point]), ['replay.js', ['--messages', '1000000']]];
for (const [script, args] of runs) {
  const result = spawnSync(process.execPath, [join(here, script), ...args], { stdio: ['ignore', 'inherit', 'inherit'] });
  if (result.status !== 0) process.exitCode = 1;
}
