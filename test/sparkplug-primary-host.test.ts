// Primary host awareness: which STATE messages let births go out, which take the node offline.
// The sequences follow the TCK's PrimaryHostTest (wrong host id, offline, stale timestamps).
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { parseState, PrimaryHost } from '../src/northbound/sparkplug/primary-host.js';

const state = (online: boolean, timestamp: number) => Buffer.from(JSON.stringify({ online, timestamp }));
const TOPIC = 'spBv1.0/STATE/scada-1';

describe('Sparkplug primary host STATE', () => {
  it('ONLINE lets births go out; a later OFFLINE takes the node offline; ONLINE again, births again', () => {
    const host = new PrimaryHost('scada-1');
    assert.equal(host.isOnline, false);
    assert.equal(host.observe(TOPIC, state(true, 1000)), 'online');
    assert.equal(host.observe(TOPIC, state(true, 1000)), 'ignore', 'a repeated ONLINE changes nothing');
    assert.equal(host.observe(TOPIC, state(false, 2000)), 'offline');
    assert.equal(host.isOnline, false);
    assert.equal(host.observe(TOPIC, state(true, 3000)), 'online');
  });

  it("another host's STATE is ignored [tck-id-operational-behavior-edge-node-birth-sequence-wait-id]", () => {
    const host = new PrimaryHost('scada-1');
    assert.equal(host.observe('spBv1.0/STATE/scada-2', state(true, 1000)), 'ignore');
    assert.equal(host.isOnline, false);
  });

  it('an ONLINE older than the last STATE seen is stale and births nothing', () => {
    const host = new PrimaryHost('scada-1');
    assert.equal(host.observe(TOPIC, state(false, 5000)), 'ignore', 'offline before any online: nothing to stop');
    assert.equal(host.observe(TOPIC, state(true, 4000)), 'ignore');
    assert.equal(host.isOnline, false);
    assert.equal(host.observe(TOPIC, state(true, 6000)), 'online');
  });

  it('an OFFLINE older than the ONLINE acted on (a late will of the previous host session) keeps the node online', () => {
    const host = new PrimaryHost('scada-1');
    assert.equal(host.observe(TOPIC, state(true, 2000)), 'online');
    assert.equal(host.observe(TOPIC, state(false, 1500)), 'ignore');
    assert.equal(host.isOnline, true);
  });

  it('payloads that are not 3.0 STATE say why and change nothing', () => {
    assert.deepEqual(parseState(Buffer.from('ONLINE')), { problem: 'not JSON: "ONLINE"' });
    assert.deepEqual(parseState(Buffer.from('{"online":"yes","timestamp":1}')), { problem: '"online" is not a boolean' });
    assert.deepEqual(parseState(Buffer.from('{"online":true}')), { problem: '"timestamp" is not a number' });
    const host = new PrimaryHost('scada-1');
    assert.equal(host.observe(TOPIC, Buffer.from('ONLINE')), 'ignore');
    assert.equal(host.isOnline, false);
  });
});
