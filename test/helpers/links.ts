// Cables with a hand in the middle, for tests that need a peer to fall silent or answer garbage
// while the peer itself is an independent implementation that behaves (pymodbus, node-opcua):
//
//   startTcpLink(port)    a TCP relay in front of a server
//   startSerialLink(dir)  a serial line: the gateway's pty ⟷ socat ⟷ relay ⟷ socat ⟷ the device's pty
//
// Both record what the gateway sent, can cut the line (bytes dropped both ways, nothing closed: a
// pulled cable, a device switched off) and can rewrite what the device sends back.
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createServer, connect, type Server, type Socket } from 'node:net';
import { waitFor } from './net.js';

export interface Link {
  /** Bytes the gateway sent so far, in order. */
  sent(): Buffer;
  /** Drop every byte both ways from now on (nothing is closed). */
  cut(): void;
  /** Pass bytes again. */
  restore(): void;
  /** From now on each chunk the device sends is rewritten by `fn` (undefined: passed as it is). */
  corruptReplies(fn: ((chunk: Buffer) => Buffer) | undefined): void;
  stop(): Promise<void>;
}

/** Relays one gateway-side socket to one device-side socket through the link's switches. */
class Relay {
  readonly chunks: Buffer[] = [];
  up = true;
  corrupt: ((chunk: Buffer) => Buffer) | undefined;
  readonly pairs = new Set<[Socket, Socket]>();

  pair(gateway: Socket, device: Socket): void {
    const pair: [Socket, Socket] = [gateway, device];
    this.pairs.add(pair);
    gateway.on('data', (chunk: Buffer) => {
      this.chunks.push(chunk);
      if (this.up) device.write(chunk);
    });
    device.on('data', (chunk: Buffer) => {
      if (this.up) gateway.write(this.corrupt ? this.corrupt(chunk) : chunk);
    });
    const end = (): void => {
      this.pairs.delete(pair);
      gateway.destroy();
      device.destroy();
    };
    gateway.on('error', end).on('close', end);
    device.on('error', end).on('close', end);
  }

  link(stop: () => Promise<void>): Link {
    return {
      sent: () => Buffer.concat(this.chunks),
      cut: () => {
        this.up = false;
      },
      restore: () => {
        this.up = true;
      },
      corruptReplies: (fn) => {
        this.corrupt = fn;
      },
      stop,
    };
  }

  destroyAll(): void {
    for (const [gateway, device] of this.pairs) {
      gateway.destroy();
      device.destroy();
    }
    this.pairs.clear();
  }
}

async function listen(server: Server): Promise<number> {
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  return typeof address === 'object' && address ? address.port : 0;
}

export interface TcpLink extends Link {
  /** Where the gateway connects. */
  port: number;
  /** Closes every connection through the link now (bytes swallowed by a cut are gone); new ones are relayed. */
  drop(): void;
}

/** A TCP relay to 127.0.0.1:`targetPort`; every connection to it is relayed to a new one there. */
export async function startTcpLink(targetPort: number): Promise<TcpLink> {
  const relay = new Relay();
  const server = createServer((gateway) => relay.pair(gateway, connect(targetPort, '127.0.0.1')));
  const port = await listen(server);
  const link = relay.link(async () => {
    relay.destroyAll();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });
  return Object.assign(link, { port, drop: () => relay.destroyAll() });
}

export interface SerialLink extends Link {
  /** The gateway's end of the line. */
  path: string;
  /** The device's end of the line, for the peer. */
  devicePath: string;
}

/** A serial line through the relay: two socat ptys in `dir` ("gateway" and "device"). */
export async function startSerialLink(dir: string): Promise<SerialLink> {
  const relay = new Relay();
  const sockets: Socket[] = [];
  const server = createServer((socket) => {
    socket.on('error', () => undefined);
    sockets.push(socket);
  });
  const port = await listen(server);
  const children: ChildProcess[] = [];
  const stop = async (): Promise<void> => {
    relay.destroyAll();
    for (const child of children) {
      if (child.exitCode !== null || child.signalCode !== null) continue;
      const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
      child.kill('SIGTERM');
      await exited;
    }
    await new Promise<void>((resolve) => server.close(() => resolve()));
  };
  const pty = async (name: string): Promise<{ path: string; socket: Socket }> => {
    const path = `${dir}/${name}`;
    const child = spawn('/usr/bin/socat', [`pty,raw,echo=0,link=${path}`, `tcp:127.0.0.1:${port}`], { stdio: 'ignore' });
    children.push(child);
    const index = sockets.length;
    await waitFor(() => existsSync(path) && sockets.length > index, 10_000, `the socat pty ${path}`);
    return { path, socket: sockets[index]! };
  };
  try {
    // One after the other, so the first connection is the device's.
    const device = await pty('device');
    const gateway = await pty('gateway');
    relay.pair(gateway.socket, device.socket);
    return Object.assign(relay.link(stop), { path: gateway.path, devicePath: device.path });
  } catch (error) {
    await stop();
    throw error;
  }
}

/** CRC-16/MODBUS, again written here so the tests do not lean on the code they test. */
function crc(bytes: Uint8Array): number {
  let value = 0xffff;
  for (const byte of bytes) {
    value ^= byte;
    for (let i = 0; i < 8; i++) value = value & 1 ? (value >>> 1) ^ 0xa001 : value >>> 1;
  }
  return value;
}

/**
 * Splits what a Modbus RTU master sent into its request frames. Throws at the first byte that does
 * not start a whole request with a correct CRC: two masters talking over each other would leave
 * exactly that.
 */
export function rtuRequests(stream: Buffer): Buffer[] {
  const frames: Buffer[] = [];
  let at = 0;
  while (at < stream.length) {
    const fc = stream[at + 1];
    let length: number;
    if (fc !== undefined && fc >= 1 && fc <= 6) length = 8;
    else if ((fc === 15 || fc === 16) && at + 6 < stream.length) length = 9 + stream[at + 6]!;
    else throw new Error(`no Modbus request starts at byte ${at}: ${stream.subarray(at, at + 16).toString('hex')}`);
    const frame = stream.subarray(at, at + length);
    if (frame.length < length || frame.readUInt16LE(length - 2) !== crc(frame.subarray(0, length - 2))) {
      throw new Error(`a broken request at byte ${at}: ${frame.toString('hex')}`);
    }
    frames.push(frame);
    at += length;
  }
  return frames;
}
