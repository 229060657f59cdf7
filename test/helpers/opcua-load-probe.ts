// Loaded with `node --import` into a gateway process: records every module URL the process
// resolves (import and require alike) and writes the list to $PLC2MQTT_LOAD_PROBE at exit, so a
// test can tell exactly which packages a real gateway run loaded.
import { writeFileSync } from 'node:fs';
import { registerHooks } from 'node:module';

const output = process.env.PLC2MQTT_LOAD_PROBE;
const seen = new Set<string>();

registerHooks({
  resolve(specifier, context, nextResolve) {
    const result = nextResolve(specifier, context);
    seen.add(result.url);
    return result;
  },
});

process.on('exit', () => {
  if (output) writeFileSync(output, [...seen].join('\n'));
});
