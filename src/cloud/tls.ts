// TLS for the cloud connection: the options mqtt.js gets from the config's file paths, and a
// fingerprint of those files, so a reload notices certificates rewritten in place (rotation).
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createSecureContext, type SecureContextOptions } from 'node:tls';
import type { IClientOptions } from 'mqtt';
import { errorMessage } from '../util/errors.js';
import type { UplinkConfig } from './bridge-rules.js';

/**
 * What the uplink's CA, certificate and key files hold now: a reload restarts the cloud
 * connection when they were rewritten in place (certificate rotation), even if the config is the
 * same. Compared with Uplink.tlsFingerprint, which is of the bytes that connection uses.
 */
export function tlsFilesFingerprint(tls: UplinkConfig['tls']): string {
  const contents = [tls?.ca, tls?.cert, tls?.key].flatMap((path): Array<Buffer | string> => {
    if (path === undefined) return [];
    try {
      return [readFileSync(path)];
    } catch {
      return [`unreadable ${path}`];
    }
  });
  return fingerprintOf(contents);
}

/** One hash over the CA, certificate and key contents, in that order (both sides of the comparison). */
function fingerprintOf(contents: ReadonlyArray<Buffer | string>): string {
  const hash = createHash('sha256');
  for (const content of contents) hash.update(content);
  return hash.digest('base64');
}

/**
 * TLS options for mqtt.js from the config's file paths, and the fingerprint of the bytes read.
 * Errors name the file; a certificate and key that do not belong together are refused here, not
 * at every connection attempt.
 */
export function readTls(tls: UplinkConfig['tls']): { options: Partial<IClientOptions>; fingerprint: string } {
  if (!tls) return { options: {}, fingerprint: fingerprintOf([]) };
  const read = (what: string, path: string | undefined): Buffer | undefined => {
    if (path === undefined) return undefined;
    try {
      return readFileSync(path);
    } catch (error) {
      throw new Error(`uplink.tls.${what}: cannot read ${path}: ${(error as NodeJS.ErrnoException).code ?? errorMessage(error)}`);
    }
  };
  const options: Partial<IClientOptions> = { rejectUnauthorized: tls.rejectUnauthorized };
  const ca = read('ca', tls.ca);
  const cert = read('cert', tls.cert);
  const key = read('key', tls.key);
  if (ca) options.ca = ca;
  if (cert) options.cert = cert;
  // An encrypted key travels with its passphrase in the form node's tls accepts.
  if (key) options.key = tls.passphrase === undefined ? key : [{ pem: key, passphrase: tls.passphrase }];
  if (tls.servername !== undefined) options.servername = tls.servername;
  try {
    createSecureContext({
      ...(ca ? { ca } : {}),
      ...(cert ? { cert } : {}),
      ...(options.key ? { key: options.key as SecureContextOptions['key'] } : {}),
    });
  } catch (error) {
    throw new Error(
      `uplink.tls: ${tls.cert ?? ''} ${tls.key ?? ''}: ${errorMessage(error)} (a certificate and its own key, in PEM, and the passphrase of an encrypted key)`,
    );
  }
  return { options, fingerprint: fingerprintOf([ca, cert, key].filter((content) => content !== undefined)) };
}
