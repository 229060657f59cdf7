// The test server as its own process, so a test can SIGKILL it (a crash, not a clean shutdown)
// and start it again on the same port.
//   node dist/test/helpers/opcua-server-child.js <pkiDir> <port> [period]
// Prints "READY <port>" once it listens.
import { startTestServer } from './opcua-server.js';

const [pkiDir, port = '0', period = '100'] = process.argv.slice(2);
if (!pkiDir) {
  process.stderr.write('usage: opcua-server-child.js <pkiDir> <port> [period]\n');
  process.exit(2);
}
const running = await startTestServer({ pkiDir, port: Number(port), period: Number(period) });
process.stdout.write(`READY ${running.port}\n`);
const stop = () => void running.stop().finally(() => process.exit(0));
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
// An orphan (the test died) must not outlive its parent.
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
