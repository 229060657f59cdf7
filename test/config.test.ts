import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { ConfigError, formatPath, loadConfigFile, parseConfigText } from '../src/config/load.js';
import { configJsonSchema } from '../src/config/schema.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const CLI = join(ROOT, 'dist/src/cli.js');

/** A minimal valid device; cases spread it and break one thing. */
const device = (extra: Record<string, unknown> = {}, tags: unknown[] = [{ name: 't', address: '40001' }]) => ({
  name: 'plc1',
  driver: 'modbus',
  connection: { transport: 'tcp', host: '127.0.0.1' },
  tags,
  ...extra,
});

function problemsOf(config: unknown, env: NodeJS.ProcessEnv = {}): string[] {
  try {
    parseConfigText(typeof config === 'string' ? config : JSON.stringify(config), 'test.json', env);
  } catch (error) {
    assert.ok(error instanceof ConfigError, `expected ConfigError, got ${String(error)}`);
    return error.problems.map((problem) => `${formatPath(problem.path)}: ${problem.message}`);
  }
  return [];
}

describe('config errors: each bad file gets the exact report', () => {
  const cases: Array<[string, unknown, string[]]> = [
    [
      'not JSON',
      '{"gateway": {"name": "x" "dataDir": "d"}}',
      ['(top level): not valid JSON: expected a comma (,) between two entries at line 1, column 26'],
    ],
    ['unknown top-level key', { devics: [] }, ['devics: unknown key "devics"; did you mean "devices"?']],
    [
      'typo in a nested key',
      { devices: [device({ connection: { transport: 'tcp', host: 'h', prot: 502 } })] },
      ['devices[0].connection.prot: unknown key "prot"; did you mean "port"?'],
    ],
    [
      'unknown key without a near miss lists what is allowed',
      { topics: { zzz: 1 } },
      ['topics.zzz: unknown key "zzz"; allowed here: tag, batch, status, command, retain, qos, timestamp'],
    ],
    [
      'unknown driver',
      { devices: [device({ driver: 'modbsu' })] },
      ['devices[0].driver: unknown driver "modbsu", expected one of modbus, opcua, serial; did you mean "modbus"?'],
    ],
    ['missing driver', { devices: [{ name: 'x', tags: [] }] }, ['devices[0].driver: is required (one of modbus, opcua, serial)']],
    [
      'bad enum value with suggestion',
      { devices: [device({}, [{ name: 't', address: '40001', type: 'flaot32' }])] },
      [
        'devices[0].tags[0].type: got "flaot32", expected one of "bool", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64", "string"; did you mean "float32"?',
      ],
    ],
    [
      'wrong type',
      { devices: [device({ connection: { transport: 'tcp', host: 'h', port: '502' } })] },
      ['devices[0].connection.port: expected number, got "502" (write numbers without quotes)'],
    ],
    [
      'missing required field',
      { devices: [device({ connection: { transport: 'tcp' } })] },
      ['devices[0].connection.host: is required (expected string)'],
    ],
    [
      'bad duration',
      { devices: [device({ pollInterval: '1 sec' })] },
      ['devices[0].pollInterval: expected a duration such as "500ms", "1s", "5m", "1h" or "7d", got "1 sec"'],
    ],
    ['too fast poll', { devices: [device({ pollInterval: 1 })] }, ['devices[0].pollInterval: must be at least 10, got 1']],
    ['qos out of range', { topics: { qos: 2 } }, ['topics.qos: got 2, expected one of 0, 1']],
    ['empty tag list', { devices: [device({}, [])] }, ['devices[0].tags: must have at least 1 item, got 0']],
    [
      'bad Modbus address',
      { devices: [device({}, [{ name: 't', address: '4000x' }])] },
      [
        'devices[0].tags[0].address: "4000x" is not a Modbus address; expected conventional notation such as "40001" (holding), "30001" (input), "00001" (coil), "10001" (discrete), "400001" (6 digits) or "40010.3" (bit 3 of a register)',
      ],
    ],
    [
      'numeric address without area',
      { devices: [device({}, [{ name: 't', address: 5 }])] },
      [
        'devices[0].tags[0].area: a numeric (0-based) address needs "area": one of coil, discrete, input, holding; or write the address in conventional notation such as "40001"',
      ],
    ],
    [
      'coil with a register type',
      { devices: [device({}, [{ name: 't', address: '00001', type: 'int16' }])] },
      ['devices[0].tags[0].type: coils hold single bits: type must be bool, not int16'],
    ],
    [
      'string without length',
      { devices: [device({}, [{ name: 't', address: '40001', type: 'string' }])] },
      ['devices[0].tags[0].length: type string needs "length": the number of registers holding the text (2 characters each)'],
    ],
    [
      'tag name with a slash',
      { devices: [device({}, [{ name: 'a/b', address: '40001' }])] },
      ['devices[0].tags[0].name: Tag names may use letters, digits, "_", "-" and "." only (they become MQTT topic levels), got "a/b"'],
    ],
    [
      'duplicate device names',
      { devices: [device(), device()] },
      [
        'devices[1].name: duplicate device name "plc1" (also devices[0])',
        'devices[1].tags[0]: topic "plc2mqtt/plc2mqtt/plc1/t" is already the topic of devices[0].tags[0] (plc1/t); give one of them another name or topic',
      ],
    ],
    [
      'duplicate tag names',
      {
        devices: [
          device({}, [
            { name: 't', address: '40001' },
            { name: 't', address: '40002' },
          ]),
        ],
      },
      [
        'devices[0].tags[1].name: duplicate tag name "t" in device "plc1" (also tags[0])',
        'devices[0].tags[1]: topic "plc2mqtt/plc2mqtt/plc1/t" is already the topic of devices[0].tags[0] (plc1/t); give one of them another name or topic',
      ],
    ],
    [
      'write checks on a tag that is not writable, and min above max',
      {
        devices: [
          device({}, [
            { name: 'a', address: '40001', write: { min: 1 } },
            { name: 'b', address: '40002', writable: true, write: { min: 10, max: 5 } },
          ]),
        ],
      },
      [
        'devices[0].tags[0].write: write checks apply to writable tags only; add "writable": true or remove "write"',
        'devices[0].tags[1].write.min: min (10) is greater than max (5)',
      ],
    ],
    [
      "a command topic that is another tag's topic",
      {
        devices: [
          device({}, [
            { name: 'a', address: '40001', writable: true },
            { name: 'b', address: '40002', topic: 'plc2mqtt/plc2mqtt/plc1/a/set' },
          ]),
        ],
      },
      [
        'devices[0].tags[1]: topic "plc2mqtt/plc2mqtt/plc1/a/set" is already the topic of the command topic of devices[0].tags[0] (plc1/a); give one of them another name or topic',
      ],
    ],
    [
      'a command suffix with a wildcard',
      { topics: { command: '/+/set' } },
      ['topics.command: expected a suffix such as "/set": starting with "/", without wildcards, not ending in "/", got "/+/set"'],
    ],
    [
      'two tags rendering to the same topic',
      {
        topics: { tag: 'site/{device}' },
        devices: [
          device({}, [
            { name: 'a', address: '40001' },
            { name: 'b', address: '40002' },
          ]),
        ],
      },
      ['devices[0].tags[1]: topic "site/plc1" is already the topic of devices[0].tags[0] (plc1/a); give one of them another name or topic'],
    ],
    [
      'unknown poll group',
      { devices: [device({}, [{ name: 't', address: '40001', group: 'fast' }])] },
      ['devices[0].tags[0].group: unknown poll group "fast"; device "plc1" defines no pollGroups'],
    ],
    [
      'poll group used by no tag',
      { devices: [device({ pollGroups: { slow: { interval: '10s' } } }, [{ name: 't', address: '40001' }])] },
      ['devices[0].pollGroups.slow: poll group "slow" is used by no tag; set "group": "slow" on the tags it should poll, or remove it'],
    ],
    [
      'placeholder without meta',
      { topics: { tag: 'acme/{site}/{device}/{tag}' }, devices: [device()] },
      ['topics.tag: placeholder {site} is not defined for device "plc1"; add it to the device\'s "meta" or remove it from the template'],
    ],
    [
      'wildcard in a topic',
      { devices: [device({}, [{ name: 't', address: '40001', topic: 'x/+/{tag}' }])] },
      ['devices[0].tags[0].topic: for device "plc1": "x/+/t" contains an MQTT wildcard (+ or #); published topics can\'t'],
    ],
    [
      '{tag} in the batch topic',
      { topics: { batch: 'x/{device}/{tag}' } },
      ['topics.batch: a batch topic carries every tag of a group: it cannot contain {tag}'],
    ],
    [
      'missing environment variable',
      { gateway: { name: '${GW_NAME}' } },
      ['gateway.name: environment variable GW_NAME is not set (write ${GW_NAME:-default} to give a default)'],
    ],
    [
      'duplicate names are listed beside schema errors in one report',
      {
        devices: [
          device({ pollInterval: 'x' }),
          device({}, [
            { name: 't', address: '40001' },
            { name: 't', address: '40002' },
          ]),
        ],
      },
      [
        'devices[0].pollInterval: expected a duration such as "500ms", "1s", "5m", "1h" or "7d", got "x"',
        'devices[1].name: duplicate device name "plc1" (also devices[0])',
        'devices[1].tags[1].name: duplicate tag name "t" in device "plc1" (also tags[0])',
      ],
    ],
    [
      'a tag on the gateway status topic',
      { topics: { tag: 'plc2mqtt/{gateway}/{tag}' }, devices: [device({}, [{ name: 'status', address: '40001' }])] },
      [
        'devices[0].tags[0]: topic "plc2mqtt/plc2mqtt/status" is already the topic of the gateway status (topics.status); give one of them another name or topic',
      ],
    ],
    [
      'bit on a coil',
      { devices: [device({}, [{ name: 't', area: 'coil', address: 0, bit: 3 }])] },
      ['devices[0].tags[0].bit: "bit" selects a bit inside a register; a coil is a single bit already'],
    ],
    [
      'encoding on a number',
      { devices: [device({}, [{ name: 't', address: '40001', encoding: 'utf8' }])] },
      ['devices[0].tags[0].encoding: "encoding" is only for type string'],
    ],
    [
      'bridge rules with bad filters and TLS on a plain url',
      {
        uplink: {
          url: 'mqtt://cloud:1883',
          tls: { ca: 'ca.pem' },
          forward: [{ topic: 'a/#/b' }],
          receive: [{ topic: 'cmd/#', remotePrefix: 'x/+/' }],
        },
      },
      [
        'uplink.forward[0].topic: "a/#/b": "#" must be a whole level and the last one',
        'uplink.receive[0].remotePrefix: a prefix is plain topic text, it cannot contain + or #, got "x/+/"',
        'uplink.tls: TLS settings need an encrypted url (mqtts:// or wss://), but the url is mqtt://',
      ],
    ],
    [
      'broker: duplicate users, an ACL for nobody, a bad pattern, two listeners on one port',
      {
        broker: {
          listeners: [
            { type: 'tcp', port: 1883 },
            { type: 'ws', port: 1883 },
          ],
          users: [
            { username: 'hmi', passwordHash: 'scrypt$16384$8$1$HYJermLjOkDf6iUXtxD2sA==$cG8EjyAzO5bsscE07Z+Gb/ffa2/fzTtTO/GxIx4CNQ0=' },
            { username: 'hmi', passwordHash: 'scrypt$16384$8$1$HYJermLjOkDf6iUXtxD2sA==$cG8EjyAzO5bsscE07Z+Gb/ffa2/fzTtTO/GxIx4CNQ0=' },
          ],
          acl: [{ user: 'hmii', subscribe: ['a/#/b'] }],
        },
      },
      [
        'broker.listeners[1].port: listeners[0] already uses 127.0.0.1:1883',
        'broker.users[1].username: duplicate user "hmi" (also users[0])',
        'broker.acl[0].user: no user "hmii" in broker.users (users: hmi)',
        'broker.acl[0].subscribe[0]: "a/#/b": "#" must be a whole level and the last one',
      ],
    ],
    [
      'a plain password where a hash belongs',
      { broker: { users: [{ username: 'hmi', passwordHash: 'secret' }] } },
      [
        'broker.users[0].passwordHash: expected a hash from `plc2mqtt passwd` ("scrypt$16384$8$1$…"), never a plain password, got a value that is not shown (a secret)',
      ],
    ],
    [
      "http.port on a broker listener's port",
      { broker: { listeners: [{ type: 'tcp', host: '0.0.0.0', port: 1883 }] }, http: { port: 1883 } },
      [
        "http.port: 1883 is also the port of broker.listeners[0] (tcp on 0.0.0.0:1883): the operations endpoint needs a port of its own; change http.port (default 9180) or the listener's port",
      ],
    ],
    [
      'writable input register and discrete input',
      {
        devices: [
          device({}, [
            { name: 'a', address: '30001', writable: true },
            { name: 'b', area: 'discrete', address: 0, writable: true },
            { name: 'c', address: '30002' },
          ]),
        ],
      },
      [
        'devices[0].tags[0].writable: input registers (30001…) are read-only in Modbus, only coils and holding registers can be written; remove "writable": true, or address the holding register (40001…) if the device offers the value there',
        'devices[0].tags[1].writable: discrete inputs (10001…) are read-only in Modbus, only coils and holding registers can be written; remove "writable": true, or address a coil (00001…) if the device offers one',
      ],
    ],
    [
      'uplink url without a scheme',
      { uplink: { url: 'cloud.example.com:8883' } },
      [
        'uplink.url: expected mqtt://, mqtts://, ws:// or wss:// followed by the host, e.g. "mqtts://broker.example.com:8883", got "cloud.example.com:8883"',
      ],
    ],
    [
      'outbox size with a typo in the unit',
      { uplink: { url: 'mqtt://c', outbox: { maxBytes: '500 mb' } } },
      ['uplink.outbox.maxBytes: expected a size such as "500MB", "2GB" or a number of bytes, got "500 mb"'],
    ],
  ];
  for (const [title, config, expected] of cases) {
    it(title, () => assert.deepEqual(problemsOf(config), expected));
  }

  it('reports every problem of a file, not just the first', () => {
    const problems = problemsOf({ extra: 1, topics: { qos: 5 }, devices: [device({ driver: 'nope' })] });
    assert.equal(problems.length, 3);
  });
});

describe('config: environment interpolation', () => {
  it('replaces ${VAR} and ${VAR:-default}, and $$ is a literal $', () => {
    const config = parseConfigText(
      JSON.stringify({
        gateway: { name: '${GW}', dataDir: '${DATA:-/var/lib/plc2mqtt}' },
        devices: [device({ connection: { transport: 'tcp', host: '${PLC_HOST}' }, description: 'costs $$5' })],
      }),
      'x',
      { GW: 'edge-7', PLC_HOST: '10.0.0.9' },
    );
    assert.equal(config.gateway.name, 'edge-7');
    assert.equal(config.gateway.dataDir, '/var/lib/plc2mqtt');
    const [first] = config.devices;
    assert.ok(first?.driver === 'modbus' && first.connection.transport === 'tcp');
    assert.equal(first.connection.host, '10.0.0.9');
    assert.equal(first?.description, 'costs $5');
  });

  it('an empty variable is kept by ${VAR} and replaced by ${VAR:-default}, as in the shell', () => {
    const config = parseConfigText(JSON.stringify({ gateway: { dataDir: 'x${EMPTY}y', name: '${EMPTY:-fallback}' } }), 'x', { EMPTY: '' });
    assert.equal(config.gateway.dataDir, 'xy');
    assert.equal(config.gateway.name, 'fallback');
  });
});

describe('config: defaults and addresses', () => {
  it('fills defaults and resolves conventional and explicit addresses', () => {
    const config = parseConfigText(
      JSON.stringify({
        devices: [
          device({}, [
            { name: 'a', address: '40010.3' },
            { name: 'b', area: 'input', address: 7, type: 'float32' },
            { name: 'c', address: '400001', type: 'int32' },
            { name: 'd', address: '00005' },
          ]),
        ],
      }),
    );
    const modbus = config.devices[0];
    assert.ok(modbus?.driver === 'modbus');
    const tags = modbus.tags;
    assert.deepEqual(
      tags.map((tag) => [tag.name, tag.address, tag.type]),
      [
        ['a', { area: 'holding', address: 9, bit: 3 }, 'bool'],
        ['b', { area: 'input', address: 7 }, 'float32'],
        ['c', { area: 'holding', address: 0 }, 'int32'],
        ['d', { area: 'coil', address: 4 }, 'bool'],
      ],
    );
    assert.equal(config.devices[0]!.pollInterval, 1000);
    assert.equal(config.broker.listeners[0]!.host, '127.0.0.1');
    assert.equal(config.topics.tag, 'plc2mqtt/{gateway}/{device}/{tag}');
  });

  it('resolves dataDir against the config file folder', () => {
    const folder = mkdtempSync(join(tmpdir(), 'plc2mqtt-config-'));
    const file = join(folder, 'gw.json');
    writeFileSync(file, JSON.stringify({ gateway: { dataDir: 'state' } }));
    assert.equal(loadConfigFile(file).dataDir, join(folder, 'state'));
  });
});

describe('config files shipped in config/', () => {
  it('config/schema.json is the current JSON Schema (run `npm run schema` after changing the zod schema)', () => {
    const committed: unknown = JSON.parse(readFileSync(join(ROOT, 'config/schema.json'), 'utf8'));
    assert.deepEqual(committed, configJsonSchema());
  });

  for (const file of readdirSync(join(ROOT, 'config')).filter((name) => name.endsWith('.json') && name !== 'schema.json')) {
    it(`${file} is valid and points at the schema`, () => {
      const loaded = loadConfigFile(join(ROOT, 'config', file), { ...process.env });
      assert.ok(loaded.config.devices.length > 0);
      const raw = JSON.parse(readFileSync(join(ROOT, 'config', file), 'utf8')) as { $schema?: string };
      assert.equal(raw.$schema, './schema.json');
    });
  }
});

describe('plc2mqtt validate', () => {
  it('prints every problem with its path, exits 2, and never a stack trace', () => {
    const folder = mkdtempSync(join(tmpdir(), 'plc2mqtt-validate-'));
    const file = join(folder, 'bad.json');
    writeFileSync(file, JSON.stringify({ topics: { qos: 3 }, devices: [device({ pollInterval: 'soon' })] }));
    const result = spawnSync(process.execPath, [CLI, 'validate', '-c', file], { encoding: 'utf8' });
    assert.equal(result.status, 2);
    assert.equal(result.stdout, '');
    assert.equal(
      result.stderr,
      `${file}: 2 problems\n  topics.qos: got 3, expected one of 0, 1\n  devices[0].pollInterval: expected a duration such as "500ms", "1s", "5m", "1h" or "7d", got "soon"\n`,
    );
    assert.doesNotMatch(result.stderr, /at .*\.js:\d+/);
  });

  it('counts devices and tags of a valid file', () => {
    const result = spawnSync(process.execPath, [CLI, 'validate', '-c', join(ROOT, 'config/demo.json')], { encoding: 'utf8' });
    assert.equal(result.status, 0, result.stderr);
    assert.match(result.stdout, /valid — 2 devices \(2 enabled\), 16 tags/);
  });

  it('a missing file is a clear one-line error', () => {
    const result = spawnSync(process.execPath, [CLI, 'validate', '-c', '/nonexistent/gw.json'], { encoding: 'utf8' });
    assert.equal(result.status, 2);
    assert.equal(result.stderr, '/nonexistent/gw.json: 1 problem\n  (top level): cannot read the file: no such file\n');
  });
});

describe('config: ports and read-only areas (checked by validate, not found at run time)', () => {
  it('http.port may equal a listener port on another address, or when http is off', () => {
    assert.deepEqual(
      problemsOf({ broker: { listeners: [{ type: 'tcp', host: '10.0.0.5', port: 1883 }] }, http: { host: '127.0.0.1', port: 1883 } }),
      [],
    );
    assert.deepEqual(problemsOf({ broker: { listeners: [{ type: 'tcp', port: 1883 }] }, http: { enabled: false, port: 1883 } }), []);
    assert.deepEqual(
      problemsOf({ broker: { listeners: [{ type: 'ws', host: '127.0.0.1', port: 8080 }] }, http: { host: '0.0.0.0', port: 8080 } }),
      [
        "http.port: 8080 is also the port of broker.listeners[0] (ws on 127.0.0.1:8080): the operations endpoint needs a port of its own; change http.port (default 9180) or the listener's port",
      ],
    );
  });

  it('plc2mqtt validate refuses both with their JSON paths and exit 2', () => {
    const folder = mkdtempSync(join(tmpdir(), 'plc2mqtt-validate-'));
    const validate = (config: unknown) => {
      const file = join(folder, 'gw.json');
      writeFileSync(file, JSON.stringify(config));
      return spawnSync(process.execPath, [CLI, 'validate', '-c', file], { encoding: 'utf8' });
    };
    const port = validate({ http: { port: 1883 }, devices: [device()] });
    assert.equal(port.status, 2, port.stdout);
    assert.match(port.stderr, /^ {2}http\.port: 1883 is also the port of broker\.listeners\[0\] \(tcp on 127\.0\.0\.1:1883\)/m);
    const writable = validate({
      devices: [
        device({}, [
          { name: 'in', address: '30001', writable: true },
          { name: 'di', address: '10001', writable: true },
        ]),
      ],
    });
    assert.equal(writable.status, 2, writable.stdout);
    assert.match(writable.stderr, /^ {2}devices\[0\]\.tags\[0\]\.writable: input registers \(30001…\) are read-only in Modbus/m);
    assert.match(writable.stderr, /^ {2}devices\[0\]\.tags\[1\]\.writable: discrete inputs \(10001…\) are read-only in Modbus/m);
  });
});

describe('config: JSON with comments (JSONC), as in the README', () => {
  it('accepts // and /* */ comments and trailing commas in objects and arrays', () => {
    const config = parseConfigText(
      `{
      // the gateway
      "gateway": { "name": "edge-7", /* inline */ "logLevel": "debug", },
      "devices": [
        { "name": "plc1", "driver": "modbus", "connection": { "transport": "tcp", "host": "127.0.0.1" },
          "tags": [{ "name": "t", "address": "40001" }, { "name": "u", "address": "40002" },], },
      ],
    }`,
      'x.jsonc',
      {},
    );
    assert.equal(config.gateway.name, 'edge-7');
    assert.equal(config.gateway.logLevel, 'debug');
    assert.deepEqual(
      config.devices[0]!.tags.map((tag) => tag.name),
      ['t', 'u'],
    );
  });

  it('a byte order mark at the start is ignored', () => {
    assert.equal(parseConfigText('\uFEFF{"gateway": {"name": "bom"}}', 'x', {}).gateway.name, 'bom');
  });

  it('a "__proto__" key is an unknown key, as with JSON.parse, not the prototype of the section', () => {
    assert.deepEqual(problemsOf('{"gateway": {"__proto__": {"name": "x"}}}'), [
      'gateway.__proto__: unknown key "__proto__"; allowed here: name, dataDir, logLevel, shutdownTimeout',
    ]);
  });

  // Every syntax error names its line and column (JSON.parse gives none for some, e.g. "[1,]" or a single quote).
  const syntax: Array<[string, string, string]> = [
    [
      'a missing comma',
      '{\n  "gateway": {"name": "x"}\n  "devices": []\n}',
      'expected a comma (,) between two entries at line 3, column 3',
    ],
    ['single quotes', "{\n  'gateway': {}\n}", 'unexpected "\'gateway\'": names and strings take double quotes at line 2, column 3'],
    ['a missing value', '{"gateway": {"name": }}', 'expected a value at line 1, column 22'],
    ['a missing colon', '{"gateway" {}}', 'expected a colon (:) after the name at line 1, column 12'],
    ['an unclosed array', '{"devices": [\n', 'expected ] to close the array at line 2, column 1'],
    ['an unclosed object', '{"gateway": {"name": "x"}', 'expected } to close the object at line 1, column 26'],
    ['an unclosed string', '{"gateway": {"name": "x}}\n', 'a string is not closed (expected ") at line 1, column 22'],
    ['an unclosed comment', '{} /* note', 'a /* comment is not closed with */ at line 1, column 4'],
    ['text after the end', '{}\n}', 'unexpected text after the end of the config at line 2, column 1'],
    ['an empty file', '', 'the file is empty; expected a JSON object at line 1, column 1'],
    ['a bad number', '{"topics": {"qos": 1.}}', 'not a valid number at line 1, column 20'],
    ['a bare word', '{"http": {"enabled": tru}}', 'unexpected "tru" at line 1, column 22'],
  ];
  for (const [title, text, message] of syntax) {
    it(`syntax error with line and column: ${title}`, () =>
      assert.deepEqual(problemsOf(text), [`(top level): not valid JSON: ${message}`]));
  }

  it("the README's configuration example, copied into a file, passes plc2mqtt validate", () => {
    const readme = readFileSync(join(ROOT, 'README.md'), 'utf8');
    const example = /## Configuration[\s\S]*?```jsonc\n([\s\S]*?)\n```/.exec(readme)?.[1];
    assert.ok(example?.includes('//'), 'the example is JSONC with comments');
    const folder = mkdtempSync(join(tmpdir(), 'plc2mqtt-readme-'));
    const file = join(folder, 'gateway.json');
    writeFileSync(file, example!);
    const result = spawnSync(process.execPath, [CLI, 'validate', '-c', file], { encoding: 'utf8' });
    assert.equal(result.stderr, '');
    assert.equal(result.status, 0);
    assert.match(result.stdout, /valid — 1 device \(1 enabled\), 4 tags/);
  });
});
