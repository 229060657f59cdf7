// A Modbus line keeps nothing of a request once it has ended: not its reply, not a handler. (It
// raced every request against one promise per connection, which kept a reaction and the reply of
// every request for as long as the connection lived: 2.3 KB per request, found in a heap
// snapshot of 10,000 tags polled every 500 ms.) Against pymodbus, as an independent server.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { modbusConnection } from '../drivers/modbus/config.js';
import { Line } from '../drivers/modbus/line.js';
import { startPymodbus, type PymodbusServer } from './helpers/modbus-servers.js';

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;
const REQUESTS = 1000;

describe('Modbus line memory', () => {
  let server: PymodbusServer;
  before(async () => {
    server = await startPymodbus('tcp');
  });
  after(async () => {
    await server?.stop();
  });

  it('the replies of finished requests can be collected while the connection stays open', async () => {
    const user = { name: 'memory', interRequestDelay: 0 };
    const line = new Line(modbusConnection.parse({ transport: 'tcp', host: '127.0.0.1', port: server.port }), user);
    line.attach(user);
    await line.open();
    try {
      const replies: Array<WeakRef<object>> = [];
      for (let request = 0; request < REQUESTS; request++) {
        const reply = await line.run(1, 1000, (client) => client.readHoldingRegisters(0, 10));
        assert.equal(reply.data.length, 10);
        replies.push(new WeakRef(reply));
      }
      assert.equal(line.isOpen, true, 'the connection is still open');
      // Two full collections: a reply is unreachable once its request has ended.
      await new Promise((resolve) => setImmediate(resolve));
      gc();
      gc();
      const kept = replies.filter((reply) => reply.deref() !== undefined).length;
      // modbus-serial keeps the last callback of each of the 256 transaction ids it cycles through
      // (bounded, its own); anything beyond that is held by the line.
      assert.ok(kept <= 256, `${kept} of ${REQUESTS} replies are still held`);
    } finally {
      await line.shutdown();
    }
  });
});
