// Ephemeral ports and process helpers for tests. Everything on 127.0.0.1.
import { closeSync, mkdirSync, openSync, statSync, utimesSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** A port that was free a moment ago (bind to 0, read the number, close) and that no other test process has claimed. */
export async function freePort(): Promise<number> {
  // Test files run in parallel processes: the kernel may hand the port one process just closed to
  // another's bind(0), and two tests then meet on it (a "dead" device answered by another test's
  // simulator). A claim file per port, shared by all test processes, keeps the ports apart.
  mkdirSync(CLAIMS, { recursive: true });
  for (;;) {
    const port = await kernelPort();
    if (claim(port)) return port;
  }
}

const CLAIMS = join(tmpdir(), 'plc2mqtt-test-ports');
/** A claim older than this belongs to a finished run and may be taken again. */
const CLAIM_LIFETIME_MS = 15 * 60_000;

function claim(port: number): boolean {
  const file = join(CLAIMS, String(port));
  try {
    closeSync(openSync(file, 'wx'));
    return true;
  } catch {
    try {
      if (Date.now() - statSync(file).mtimeMs < CLAIM_LIFETIME_MS) return false;
      utimesSync(file, new Date(), new Date());
      return true;
    } catch {
      return false;
    }
  }
}

async function kernelPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      const port = typeof address === 'object' && address ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

/** True when nothing listens on the port any more. */
export async function portIsFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const server = createServer();
    server.once('error', () => resolve(false));
    server.listen(port, '127.0.0.1', () => server.close(() => resolve(true)));
  });
}

/**
 * Polls `check` every 20 ms until it returns true or `timeoutMs` passes. Bounded, never hangs a test.
 * `what` may be a function: it is evaluated at the timeout, so the error shows the state then.
 */
export async function waitFor(check: () => boolean | Promise<boolean>, timeoutMs: number, what: string | (() => string)): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await check()) return;
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${typeof what === 'function' ? what() : what}`);
}
