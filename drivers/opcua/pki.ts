// The gateway's OPC UA PKI in <dataDir>/pki, node-opcua's folder layout:
//
//   own/certs/client_certificate.pem   the gateway's application certificate (made on first connect)
//   own/private/private_key.pem        its private key
//   trusted/certs/                     server certificates the gateway trusts (put them here)
//   rejected/                          server certificates it refused (move one to trusted/certs to trust it)
//   issuers/certs, issuers/crl, crl/   CA certificates and revocation lists, for CA-signed server certificates
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { OPCUACertificateManager } from 'node-opcua-certificate-manager';
import { crypto_utils } from 'node-opcua-client';

export function pkiFolder(dataDir: string): string {
  return join(dataDir, 'pki');
}

/** Where the gateway's application certificate is, to give to the server's administrator. */
export function applicationCertificateFile(dataDir: string): string {
  return join(pkiFolder(dataDir), 'own', 'certs', 'client_certificate.pem');
}

export function trustedCertificatesFolder(dataDir: string): string {
  return join(pkiFolder(dataDir), 'trusted', 'certs');
}

export function rejectedCertificatesFolder(dataDir: string): string {
  return join(pkiFolder(dataDir), 'rejected');
}

/**
 * A certificate manager on the gateway's PKI, one per connection: each connect reads the trust
 * lists afresh, so a server certificate moved to trusted/certs counts from the next retry on,
 * without file watchers or a restart.
 */
export async function openCertificateManager(dataDir: string, trustOnFirstUse: boolean): Promise<OPCUACertificateManager> {
  const manager = new OPCUACertificateManager({
    rootFolder: pkiFolder(dataDir),
    automaticallyAcceptUnknownCertificate: trustOnFirstUse,
    disableFileWatchers: true,
    keySize: 2048,
  });
  await manager.initialize();
  return manager;
}

/** A user certificate (X.509 identity) as DER bytes, from a PEM or DER file. */
export function readUserCertificate(file: string): Buffer {
  const content = readFileSync(file);
  const text = content.toString('latin1');
  return text.includes('-----BEGIN CERTIFICATE-----') ? Buffer.from(crypto_utils.convertPEMtoDER(text)) : content;
}

export function readPrivateKeyPem(file: string): string {
  const text = readFileSync(file, 'utf8');
  if (!text.includes('PRIVATE KEY-----')) throw new Error(`${file} is not a PEM private key`);
  return text;
}
