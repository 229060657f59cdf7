// The test server as its own process, so a test can SIGKILL it (a crash, not a clean shutdown)
// and start it again on the same port.
//   node dist/test/helpers/opcua-server-child.js <pkiDir> <port> [period] [namespace URIs before line2, comma-separated]
// Prints "READY <port>" once it listens.
import { startTestServer } from './opcua-server.js';

const [pkiDir, port = '0', period = '100', before = ''] = process.argv.slice(2);
if (!pkiDir) {
  process.stderr.write('usage: opcua-server-child.js <pkiDir> <port> [period] [namespaces,…]\n');
  process.exit(2);
}
const running = await startTestServer({
  pkiDir,
  port: Number(port),
  period: Number(period),
  namespacesBefore: before.split(',').filter(Boolean),
});
process.stdout.write(`READY ${running.port}\n`);
const stop = () => void running.stop().finally(() => process.exit(0));
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
// An orphan (the test died) must not outlive its parent.
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
