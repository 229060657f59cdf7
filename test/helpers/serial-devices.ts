// Small pieces the serial driver's tests share: a device config parsed through the real schema,
// and a raw device server (a TCP port that behaves as the test scripts it).
import { createServer, type Server, type Socket } from 'node:net';
import { serialDevice, type SerialDeviceConfig } from '../../drivers/serial/config.js';

/** Parses a serial device config through the real schema, so tests see exactly what the core hands the driver. */
export function serialConfig(input: Record<string, unknown>): SerialDeviceConfig {
  return serialDevice.parse({ name: 'dev', driver: 'serial', ...input });
}

export interface DeviceServer {
  port: number;
  /** Connections accepted so far. */
  readonly connections: number;
  /** Every byte received, latin1. */
  received(): string;
  close(): Promise<void>;
}

/** A device server on 127.0.0.1: `onConnect` gets each connection (and its number, from 1), `script` every chunk. */
export async function startDeviceServer(
  script: (socket: Socket, data: string, connection: number) => void,
  onConnect?: (socket: Socket, connection: number) => void,
): Promise<DeviceServer> {
  let received = '';
  const sockets = new Set<Socket>();
  const state = { connections: 0 };
  const server: Server = createServer((socket) => {
    const connection = ++state.connections;
    sockets.add(socket);
    socket.on('error', () => undefined);
    socket.on('close', () => sockets.delete(socket));
    socket.on('data', (chunk) => {
      received += chunk.toString('latin1');
      script(socket, chunk.toString('latin1'), connection);
    });
    onConnect?.(socket, connection);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  const port = typeof address === 'object' && address ? address.port : 0;
  return {
    port,
    get connections() {
      return state.connections;
    },
    received: () => received,
    close: () =>
      new Promise<void>((resolve) => {
        for (const socket of sockets) socket.destroy();
        server.close(() => resolve());
      }),
  };
}
