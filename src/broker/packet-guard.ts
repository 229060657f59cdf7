// The front door of every broker connection, before aedes: the MQTT framing guard (packet size
// limit, fixed headers that no MQTT packet has), who is on the other end of a client (its remote
// address, for the log and the login limit), and what a failed TLS handshake means in words.
import type { Readable } from 'node:stream';

/** The other end of a connection. */
export interface Remote {
  address: string | undefined;
  port: number | undefined;
  websocket?: boolean;
}

/** "ip:port", "ip:port (websocket)"; "unknown" without an address. */
export function remoteText(remote: Remote | undefined): string {
  if (remote?.address === undefined) return 'unknown';
  const host = remote.address.includes(':') ? `[${remote.address}]` : remote.address;
  return `${host}:${remote.port ?? '?'}${remote.websocket ? ' (websocket)' : ''}`;
}

const remotes = new WeakMap<object, Remote>();

/** Remembers who is at the other end of this aedes client (set when the connection is handed to aedes). */
export function rememberRemote(client: object, remote: Remote): void {
  remotes.set(client, remote);
}

/** The other end of this aedes client, if it came through a listener. */
export function remoteOf(client: object | undefined): Remote | undefined {
  return client === undefined ? undefined : remotes.get(client);
}

/** The warning for a connection cut for bytes that are not MQTT (the guard's or the parser's verdict). */
export const MALFORMED_PACKET_MESSAGE = 'malformed mqtt packet: client disconnected';

export type GuardVerdict =
  /** A packet announcing more than the limit: `bytes` is its remaining length. */
  | { problem: 'size'; bytes: number }
  /** Bytes that no MQTT client sends: `reason` says which. */
  | { problem: 'malformed'; reason: string };

/**
 * Why this first byte of a fixed header is not one a client may send, or undefined when it may.
 * [MQTT-2.2.2-1]: the flags of every type but PUBLISH are fixed (0b0010 for PUBREL, SUBSCRIBE,
 * UNSUBSCRIBE; 0 for the rest); type 0 is reserved; 15 is MQTT 5's AUTH (flags 0); a PUBLISH
 * never has both QoS bits set [MQTT-3.3.1-4].
 */
export function invalidHeaderByte(byte: number): string | undefined {
  const type = byte >> 4;
  const flags = byte & 0x0f;
  const hex = `0x${byte.toString(16).padStart(2, '0')}`;
  if (type === 0) return `invalid fixed header ${hex}: packet type 0 is reserved`;
  if (type === 3) return (flags & 0x06) === 0x06 ? `invalid fixed header ${hex}: PUBLISH with QoS 3` : undefined;
  const required = type === 6 || type === 8 || type === 10 ? 0x02 : 0x00;
  if (flags !== required) return `invalid fixed header ${hex}: packet type ${type} must have flags ${required}, not ${flags}`;
  return undefined;
}

/**
 * Follows MQTT framing on a byte stream (fixed header byte, 1–4 byte remaining length, body) and
 * reports the size a packet announces once it is over the limit. Strict (as on the broker's
 * connections), it also reports bytes that are no MQTT client's: a first packet that is not
 * CONNECT [MQTT-3.1.0-1], a fixed header byte that no packet has, a remaining length longer
 * than 4 bytes; random bytes are then called malformed, not an oversize packet.
 */
export class PacketSizeGuard {
  private readonly max: number;
  private readonly strict: boolean;
  private state: 'header' | 'length' | 'body' | 'refused' = 'header';
  private packets = 0;
  private length = 0;
  private multiplier = 1;
  private remaining = 0;

  constructor(max: number, options: { strict?: boolean } = {}) {
    this.max = max;
    this.strict = options.strict ?? false;
  }

  /** Returns the announced packet size when it exceeds the limit, otherwise undefined. */
  feed(chunk: Buffer): number | undefined {
    const verdict = this.check(chunk);
    return verdict?.problem === 'size' ? verdict.bytes : undefined;
  }

  /** What is wrong with the stream once `chunk` is added, or undefined while nothing is. Nothing is read after a problem. */
  check(chunk: Buffer): GuardVerdict | undefined {
    let index = 0;
    while (index < chunk.length) {
      if (this.state === 'refused') return undefined;
      if (this.state === 'header') {
        const byte = chunk[index++]!;
        if (this.strict) {
          const invalid =
            invalidHeaderByte(byte) ??
            (this.packets === 0 && byte !== 0x10
              ? `the first packet is not CONNECT (first byte 0x${byte.toString(16).padStart(2, '0')})`
              : undefined);
          if (invalid !== undefined) return this.refuse({ problem: 'malformed', reason: invalid });
        }
        this.packets++;
        this.state = 'length';
        this.length = 0;
        this.multiplier = 1;
      } else if (this.state === 'length') {
        const byte = chunk[index++]!;
        this.length += (byte & 0x7f) * this.multiplier;
        this.multiplier *= 128;
        if (this.strict && (byte & 0x80) !== 0 && this.multiplier >= 128 ** 4)
          return this.refuse({ problem: 'malformed', reason: 'remaining length longer than 4 bytes' });
        if ((byte & 0x80) === 0 || this.multiplier > 128 ** 4) {
          if (this.length > this.max) return this.refuse({ problem: 'size', bytes: this.length });
          this.remaining = this.length;
          this.state = this.remaining === 0 ? 'header' : 'body';
        }
      } else {
        const take = Math.min(this.remaining, chunk.length - index);
        index += take;
        this.remaining -= take;
        if (this.remaining === 0) this.state = 'header';
      }
    }
    return undefined;
  }

  private refuse(verdict: GuardVerdict): GuardVerdict {
    // Strict: the connection is cut, nothing more to follow. (Lenient, as before: keep reading.)
    if (this.strict) this.state = 'refused';
    return verdict;
  }
}

/**
 * Every chunk the stream receives passes a strict PacketSizeGuard before it enters the stream's
 * buffer (Readable.push, which node's sockets and ws' streams call for incoming data): on a
 * problem `refused` is told, the stream destroyed, and the chunk never reaches aedes. Hooking
 * push keeps the hot write path untouched.
 */
export function guarded<T extends Readable>(
  stream: T,
  maxPacketSize: number,
  refused: (verdict: GuardVerdict, stream: T) => boolean | undefined,
): T {
  const guard = new PacketSizeGuard(maxPacketSize, { strict: true });
  const push = stream.push.bind(stream);
  let cut = false;
  stream.push = (chunk: unknown, encoding?: BufferEncoding) => {
    if (Buffer.isBuffer(chunk)) {
      // Nothing after a refusal reaches aedes, also while an MQTT 5 client is being told why.
      if (cut) return false;
      const verdict = guard.check(chunk);
      if (verdict !== undefined) {
        cut = true;
        // `refused` returns true when it closes the stream itself (after a DISCONNECT).
        if (refused(verdict, stream) !== true) stream.destroy();
        return false;
      }
    }
    return push(chunk, encoding);
  };
  return stream;
}

/** A failed TLS handshake in words, for the log (the error's own message is logged next to it). */
export function tlsFailureCause(error: Error & { code?: string }): string {
  const code = error.code ?? '';
  const message = error.message;
  if (
    /PEER_DID_NOT_RETURN_A_CERTIFICATE|CERTIFICATE_REQUIRED/.test(code) ||
    /did not return a certificate|certificate required/i.test(message)
  )
    return 'no client certificate';
  if (
    /CERTIFICATE_VERIFY_FAILED|UNABLE_TO_GET_ISSUER|SELF_SIGNED|CERT_SIGNATURE_FAILURE/.test(code) ||
    /certificate verify failed/i.test(message)
  )
    return 'client certificate not accepted (not signed by the listener ca, or expired)';
  if (
    /CERTIFICATE_UNKNOWN|UNKNOWN_CA|BAD_CERTIFICATE|CERTIFICATE_EXPIRED|DECRYPT_ERROR/.test(code) ||
    /certificate unknown|unknown ca/i.test(message)
  )
    return "certificate unknown (the client does not accept the broker's certificate)";
  if (
    /WRONG_VERSION_NUMBER|HTTP_REQUEST|PACKET_LENGTH_TOO_LONG|UNKNOWN_PROTOCOL|RECORD_LAYER/.test(code) ||
    /wrong version number|http request/i.test(message)
  )
    return 'wrong version: not TLS (plain MQTT or HTTP on the TLS port?)';
  if (/UNSUPPORTED_PROTOCOL|NO_PROTOCOLS_AVAILABLE|PROTOCOL_VERSION|VERSION_TOO_LOW|NO_SHARED_CIPHER|HANDSHAKE_FAILURE/.test(code))
    return 'no TLS version or cipher in common';
  if (code === 'ECONNRESET' || /socket hang up|ECONNRESET/.test(message)) return 'connection closed during the handshake';
  if (code === 'ERR_TLS_HANDSHAKE_TIMEOUT') return 'handshake timed out';
  return code || message;
}
