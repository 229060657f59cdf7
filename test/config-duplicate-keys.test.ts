// A key written twice in a config file (review of issue 12). JSON.parse keeps the last one without
// a word, so a block pasted from the README into a file that has it already would silently replace
// the first: validate and run refuse such a file, naming both places. `plc2mqtt health` must still
// ask the address the running gateway listens on (a gateway started before, or a file edited
// since): it takes the last one as the gateway did, and is not upset by duplicates elsewhere.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it, type TestContext } from 'node:test';
import { fileURLToPath } from 'node:url';
import { ConfigError, formatPath, loadConfigFile, loadHttpSection, parseJsonc } from '../src/config/load.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const CLI = join(ROOT, 'dist/src/cli.js');

function writeConfig(t: TestContext, text: string): string {
  const dir = mkdtempSync(join(tmpdir(), 'plc2mqtt-duplicates-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'config.jsonc');
  writeFileSync(file, text);
  return file;
}

/** "http" twice at the top level, "port" twice in a device's connection, "name" twice in a tag. */
const DUPLICATES = `{
  "http": { "port": 9180 },
  "gateway": { "name": "gw" },
  "devices": [
    {
      "name": "plc1", "driver": "modbus",
      "connection": { "transport": "tcp", "host": "127.0.0.1", "port": 502, "port": 5020 },
      "tags": [{ "name": "t", "address": "40001" }, { "name": "u", "address": "40002", "name": "v" }]
    }
  ],
  // pasted from the README
  "http": { "host": "127.0.0.1", "port": 9999 }
}
`;

const REPORT = [
  'devices[0].connection.port: "port" written again at line 7, column 77 (first at line 7, column 64); a key may appear only once in an object: merge the two or remove one (otherwise the last would silently replace the first)',
  'devices[0].tags[1].name: "name" written again at line 8, column 88 (first at line 8, column 55); a key may appear only once in an object: merge the two or remove one (otherwise the last would silently replace the first)',
  'http: "http" written again at line 12, column 3 (first at line 2, column 3); a key may appear only once in an object: merge the two or remove one (otherwise the last would silently replace the first)',
];

describe('duplicate keys in a config file', () => {
  it('loading refuses them, each with its path and both places', (t) => {
    const file = writeConfig(t, DUPLICATES);
    assert.throws(
      () => loadConfigFile(file, {}),
      (error: unknown) => {
        assert.ok(error instanceof ConfigError);
        assert.deepEqual(
          error.problems.map((problem) => `${formatPath(problem.path)}: ${problem.message}`),
          REPORT,
        );
        return true;
      },
    );
  });

  it('plc2mqtt validate and plc2mqtt run exit 2 with the report', (t) => {
    const file = writeConfig(t, DUPLICATES);
    const expected = `${file}: 3 problems\n${REPORT.map((line) => `  ${line}\n`).join('')}`;
    for (const command of ['validate', 'run']) {
      const result = spawnSync(process.execPath, [CLI, command, '-c', file], { encoding: 'utf8', timeout: 20_000 });
      assert.equal(result.stderr, expected, command);
      assert.equal(result.status, 2, command);
    }
  });

  it('the same key in different objects is fine', (t) => {
    const file = writeConfig(
      t,
      '{ "gateway": { "name": "gw" }, "http": { "port": 9180 }, "devices": [{ "name": "a", "driver": "modbus", "connection": { "transport": "tcp", "host": "h" }, "tags": [{ "name": "t", "address": "40001" }] }, { "name": "b", "driver": "modbus", "connection": { "transport": "tcp", "host": "h", "port": 503 }, "tags": [{ "name": "t", "address": "40001" }] }] }',
    );
    assert.equal(loadConfigFile(file, {}).config.devices.length, 2);
  });
});

describe('plc2mqtt health with a key written twice', () => {
  it('a config with "http" twice: health reads the section the gateway uses', (t) => {
    const text =
      '{\n  "http": { "port": 9180 },\n  "gateway": { "name": "gw" },\n  // pasted from the README\n  "http": { "port": 9999 }\n}\n';
    const file = writeConfig(t, text);
    const gatewayPort = (parseJsonc(text, file) as { http: { port: number } }).http.port;
    assert.equal(gatewayPort, 9999, 'the last one, as JSON.parse');
    assert.equal(loadHttpSection(file).port, gatewayPort);
  });

  it('duplicates elsewhere, or inside the section, do not make health fail; it takes the last', (t) => {
    const file = writeConfig(t, DUPLICATES.replace('"port": 9999', '"port": 9998, "port": 9999'));
    assert.deepEqual(
      { ...loadHttpSection(file, {}) },
      { ...loadHttpSection(writeConfig(t, '{ "http": { "host": "127.0.0.1", "port": 9999 } }'), {}) },
    );
  });
});
