// Every use of mqtt.js internals (methods not in its types) in one place. package.json pins mqtt
// exactly (5.16.0) for as long as this file is not empty; on an upgrade, check in the new
// build/lib/client.js that each internal below still exists and does what its comment says.
import type { Duplex } from 'node:stream';
import type { MqttClient } from 'mqtt';
import mqttPacket, { type Packet } from 'mqtt-packet';

// mqtt-packet writes 16-bit numbers (lengths, packet ids) from a table of 65,536 two-byte Buffers
// that it builds at its first write: 8 MB of live heap, which V8 lets the old generation grow to
// four times before a full GC. Without it each number is a small Buffer from Node's pool. For
// every writer in the process (the uplink's mqtt.js and the integrated broker's aedes); set before
// either writes a packet, since the table is built at the first write.
mqttPacket.writeToStream.cacheNumbers = false;

/** What mqtt.js passes to mqtt-packet with each packet (protocol version, …). */
type WriteOptions = Parameters<typeof mqttPacket.writeToStream>[2];

interface ClientInternals {
  _storeAndSend(packet: Packet, cb: ((error?: Error) => void) | undefined, cbStorePut: () => void): void;
  _writePacket(packet: Packet, cb?: (error?: Error) => void): void;
  stream: Duplex;
  options: WriteOptions;
}

/**
 * Sends QoS 1/2 messages without mqtt.js's copy of each, and writes a tick's PUBLISHes to the
 * socket as one buffer. Uses `client._storeAndSend` (mqtt.js 5.16.0: deep-copies every PUBLISH
 * with rfdc, payload included, to hand the copy to the outgoing store, then writes the original
 * with `_writePacket`). The uplink's outgoing store keeps nothing (the outbox holds every message
 * until its PUBACK) and it sets no topic aliases, so the copy is pure garbage: one per message
 * sent to the cloud. PUBREL (QoS 2, which the uplink does not use) still goes through `_writePacket`.
 */
export function sendWithoutStoreCopies(client: MqttClient): void {
  const internals = client as unknown as ClientInternals;
  const batch = new PublishBatch();
  // Every other packet (QoS 0 PUBLISH, PINGREQ, DISCONNECT, …) goes after the PUBLISHes gathered
  // before it: the wire keeps the order in which they were sent.
  const writePacket = internals._writePacket.bind(client);
  internals._writePacket = (packet, cb) => {
    batch.flush();
    writePacket(packet, cb);
  };
  internals._storeAndSend = (packet, cb, cbStorePut) => {
    cbStorePut();
    if (packet.cmd !== 'publish') return internals._writePacket(packet, cb);
    // What _writePacket does besides writing: tell listeners, and call back (for a QoS 1 publish
    // mqtt.js passes its noop here; the PUBACK calls the publisher back).
    client.emit('packetsend', packet);
    batch.add(packet, internals.stream, internals.options);
    cb?.();
  };
}

/**
 * mqtt.js re-arms its keep-alive timer (a new timer and closure) at every PUBACK: at 20,000 a
 * second, 325 bytes of garbage per message. Re-armed at most once per `intervalMs` (forced re-arms,
 * after a PINGRESP, always): after a quiet spell the ping then comes up to `intervalMs` sooner than
 * mqtt.js alone would send it, and a link whose PUBACKs come slower than that is re-armed by each
 * of them as before. `reschedulePing` is mqtt.js API (5.16.0).
 */
export function rearmKeepaliveAtMostEvery(client: MqttClient, intervalMs: number): void {
  const rearm = client.reschedulePing.bind(client);
  let last = Number.NEGATIVE_INFINITY;
  client.reschedulePing = (force = false) => {
    const now = performance.now();
    if (!force && now - last < intervalMs) return;
    last = now;
    rearm(force);
  };
}

/** A tick's batch beyond this is written at once (a window of big messages is not copied into one buffer). */
const MAX_BATCH_BYTES = 256 * 1024;

/**
 * The PUBLISHes of one tick, written to the socket as one buffer at the next tick. mqtt-packet
 * writes a PUBLISH as five or six pieces (header, length, topic, id, payload) into a corked
 * socket, and Node's stream keeps a request object per piece and hands them all to writev: at
 * 20,000 messages a second that machinery was a sixth of the gateway's CPU. Here mqtt-packet
 * writes the pieces into this object (a stream it cannot cork), and the next tick copies them
 * into one buffer, in order. mqtt-packet does the encoding; only the gathering is ours.
 */
class PublishBatch {
  private pieces: Array<Buffer | string> = [];
  private bytes = 0;
  private stream: Duplex | undefined;
  private failure: Error | undefined;

  add(packet: Packet, stream: Duplex, options: WriteOptions): void {
    // A new connection's socket: what was gathered for the old one is not written to the new one.
    if (stream !== this.stream) this.reset(stream);
    const piecesBefore = this.pieces.length;
    const bytesBefore = this.bytes;
    this.failure = undefined;
    mqttPacket.writeToStream(packet, this as unknown as NodeJS.WritableStream, options);
    if (this.failure) {
      // As mqtt.js does with a packet mqtt-packet refuses: the connection is closed (the message
      // stays in the outbox). Nothing of the refused packet is written.
      this.pieces.length = piecesBefore;
      this.bytes = bytesBefore;
      stream.destroy(this.failure);
      return;
    }
    if (this.bytes >= MAX_BATCH_BYTES) this.flush();
    else if (piecesBefore === 0) process.nextTick(() => this.flush());
  }

  /** mqtt-packet's writes (see the class comment). */
  write(piece: Buffer | string): boolean {
    this.pieces.push(piece);
    this.bytes += typeof piece === 'string' ? Buffer.byteLength(piece) : piece.length;
    return true;
  }

  /** mqtt-packet calls this for a packet it cannot encode. */
  destroy(error?: Error): void {
    this.failure = error ?? new Error('mqtt-packet could not encode a PUBLISH');
  }

  /** Writes what was gathered (at the next tick, before any other packet, or when it is big). */
  flush(): void {
    const { pieces, bytes, stream } = this;
    this.reset(stream);
    if (pieces.length === 0 || stream === undefined || stream.destroyed) return;
    const buffer = Buffer.allocUnsafe(bytes);
    let offset = 0;
    for (const piece of pieces) offset += typeof piece === 'string' ? buffer.write(piece, offset) : piece.copy(buffer, offset);
    stream.write(buffer);
  }

  private reset(stream: Duplex | undefined): void {
    this.pieces = [];
    this.bytes = 0;
    this.stream = stream;
  }
}
