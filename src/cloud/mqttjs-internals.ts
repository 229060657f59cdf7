// Every use of mqtt.js internals (methods not in its types) in one place. package.json pins mqtt
// exactly (5.16.0) for as long as this file is not empty; on an upgrade, check in the new
// build/lib/client.js that each internal below still exists and does what its comment says.
import type { MqttClient } from 'mqtt';
import type { Packet } from 'mqtt-packet';

interface ClientInternals {
  _storeAndSend(packet: Packet, cb: ((error?: Error) => void) | undefined, cbStorePut: () => void): void;
  _writePacket(packet: Packet, cb?: (error?: Error) => void): void;
}

/**
 * Sends QoS 1/2 messages without mqtt.js's copy of each. Uses `client._storeAndSend` (mqtt.js
 * 5.16.0: deep-copies every PUBLISH with rfdc, payload included, to hand the copy to the outgoing
 * store, then writes the original with `_writePacket`). The uplink's outgoing store keeps nothing
 * (the outbox holds every message until its PUBACK) and it sets no topic aliases, so the copy is
 * pure garbage: one per message sent to the cloud.
 */
export function sendWithoutStoreCopies(client: MqttClient): void {
  const internals = client as unknown as ClientInternals;
  internals._storeAndSend = (packet, cb, cbStorePut) => {
    cbStorePut();
    internals._writePacket(packet, cb);
  };
}
