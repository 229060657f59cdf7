// Security: SignAndEncrypt with a username and a password from the environment, against a
// server that has no unsecured endpoint, allows no anonymous user and trusts no unknown client.
// Trust is set up both ways exactly as README.md tells a user to: the server's certificate moved
// from the gateway's pki/rejected to pki/trusted/certs, the gateway's certificate copied into the
// server's trust list — while the gateway keeps retrying, without a restart.
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { OPCUACertificateManager } from 'node-opcua-certificate-manager';
import { parseConfigText } from '../src/config/load.js';
import { DriverError } from '../src/pipeline/driver.js';
import type { OpcUaDeviceConfig } from '../drivers/opcua/config.js';
import { applicationCertificateFile, createDriver, rejectedCertificatesFolder, trustedCertificatesFolder } from '../drivers/opcua/index.js';
import { waitFor } from './helpers/net.js';
import { startTestServer, type RunningTestServer } from './helpers/opcua-server.js';
import { runDevice, testLog, type RunningDevice } from './helpers/opcua-runner.js';

/** A device as the config file gives it, "${OPCUA_PASSWORD}" resolved from the environment. */
function deviceFromConfig(device: Record<string, unknown>, env: NodeJS.ProcessEnv): OpcUaDeviceConfig {
  const config = parseConfigText(JSON.stringify({ devices: [device] }), 'test.json', env);
  return config.devices[0] as OpcUaDeviceConfig;
}

describe('OPC UA security', () => {
  const folder = mkdtempSync(join(tmpdir(), 'plc2mqtt-opcua-sec-'));
  let strict: RunningTestServer;
  let lenient: RunningTestServer;
  const devices: RunningDevice[] = [];

  before(async () => {
    [strict, lenient] = await Promise.all([
      startTestServer({ pkiDir: join(folder, 'strict'), secure: true, users: { operator: 's3cret!' }, trustAllClients: false }),
      startTestServer({ pkiDir: join(folder, 'lenient'), secure: true, users: { operator: 's3cret!' }, x509Users: true }),
    ]);
  });

  after(async () => {
    await Promise.all(devices.map((device) => device.stop()));
    await Promise.all([strict?.stop(), lenient?.stop()]);
    rmSync(folder, { recursive: true, force: true });
  });

  const secureDevice = (endpointUrl: string, extra: Record<string, unknown> = {}) => ({
    name: 'secure',
    driver: 'opcua',
    pollInterval: '200ms',
    connection: {
      endpointUrl,
      securityMode: 'SignAndEncrypt',
      securityPolicy: 'Aes256_Sha256_RsaPss',
      auth: { type: 'username', username: 'operator', password: '${OPCUA_PASSWORD}' },
      connectTimeout: '3s',
      ...extra,
    },
    tags: [
      { name: 'speed', nodeId: 'ns=1;s=Line1.Double' },
      { name: 'text', nodeId: 'ns=1;s=Line1.String' },
    ],
  });

  it('SignAndEncrypt + username: untrusted both ways at first, then trusted as documented; values flow without a restart', async () => {
    const dataDir = join(folder, 'gateway');
    const device = deviceFromConfig(secureDevice(strict.endpointUrl), { OPCUA_PASSWORD: 's3cret!' });
    assert.equal(device.connection.auth.type === 'username' && device.connection.auth.password, 's3cret!');
    const running = runDevice(device, dataDir);
    devices.push(running);

    // 1. The gateway does not know the server's certificate: refused, and the reason says what to do.
    await waitFor(() => /not trusted/.test(running.runner.health.lastError ?? ''), 10_000, 'the untrusted-server error');
    assert.ok(running.runner.health.lastError!.includes(trustedCertificatesFolder(dataDir)), running.runner.health.lastError ?? '');
    assert.equal(running.last('speed')?.quality, 'bad');
    assert.match(running.last('speed')!.reason!, /not trusted/);
    const rejected = readdirSync(rejectedCertificatesFolder(dataDir)).filter((file) => /\.(pem|der)$/.test(file));
    assert.equal(rejected.length, 1, `one rejected server certificate: ${rejected.join(', ')}`);
    assert.ok(existsSync(applicationCertificateFile(dataDir)), 'the gateway made its application certificate in dataDir/pki');

    // 2. The user trusts the server: move its certificate from rejected/ to trusted/certs/.
    mkdirSync(trustedCertificatesFolder(dataDir), { recursive: true });
    renameSync(join(rejectedCertificatesFolder(dataDir), rejected[0]!), join(trustedCertificatesFolder(dataDir), rejected[0]!));
    // Now the server refuses the gateway, whose certificate it does not trust yet.
    await waitFor(() => /trust it on the server/.test(running.runner.health.lastError ?? ''), 20_000, 'the untrusted-client error');
    assert.ok(running.runner.health.lastError!.includes(applicationCertificateFile(dataDir)));

    // 3. The server's administrator trusts the gateway's certificate: this server (like most) put
    //    it in its own rejected list, and trusting it means moving it to the trusted list.
    const serverPki = join(folder, 'strict', 'server');
    const refused = readdirSync(join(serverPki, 'rejected')).filter((file) => /\.(pem|der)$/.test(file));
    assert.equal(refused.length, 1, `the server rejected one client certificate: ${refused.join(', ')}`);
    const refusedBytes = readFileSync(join(serverPki, 'rejected', refused[0]!));
    assert.ok(refusedBytes.length > 0);
    renameSync(join(serverPki, 'rejected', refused[0]!), join(serverPki, 'trusted', 'certs', refused[0]!));
    await waitFor(
      () => running.last('speed')?.quality === 'good' && running.last('text')?.quality === 'good',
      20_000,
      'values over SignAndEncrypt',
    );
    assert.equal(running.runner.health.state, 'connected');
    const values = running.history('speed').filter((reading) => reading.quality === 'good').length;
    await waitFor(() => running.history('speed').filter((reading) => reading.quality === 'good').length > values + 2, 5_000, 'changes');
  });

  it('trustOnFirstUse accepts and stores an unknown server certificate', async () => {
    const dataDir = join(folder, 'tofu');
    const running = runDevice(
      deviceFromConfig(secureDevice(lenient.endpointUrl, { trustOnFirstUse: true }), { OPCUA_PASSWORD: 's3cret!' }),
      dataDir,
    );
    devices.push(running);
    await waitFor(() => running.last('speed')?.quality === 'good', 15_000, 'values with trustOnFirstUse');
    assert.equal(readdirSync(trustedCertificatesFolder(dataDir)).length, 1, 'the server certificate is stored as trusted');
  });

  it('X.509 user identity: a user certificate and its key from files', async () => {
    // A user certificate made with node-opcua's PKI tooling, as a site's CA would issue one.
    const userPki = new OPCUACertificateManager({ rootFolder: join(folder, 'user-pki') });
    await userPki.initialize();
    const certificate = join(folder, 'operator.pem');
    await userPki.createSelfSignedCertificate({
      applicationUri: 'urn:plc2mqtt-test:operator',
      subject: '/CN=operator',
      dns: [],
      startDate: new Date(),
      validity: 30,
      outputFile: certificate,
    });
    await userPki.dispose();
    const raw = secureDevice(lenient.endpointUrl, {
      trustOnFirstUse: true,
      auth: { type: 'certificate', certificate, privateKey: userPki.privateKey },
    });
    const before = lenient.identities().length;
    const running = runDevice(deviceFromConfig({ ...raw, name: 'x509' }, {}), join(folder, 'x509'));
    devices.push(running);
    await waitFor(() => running.last('speed')?.quality === 'good', 15_000, 'values with an X.509 user');
    assert.deepEqual(lenient.identities().slice(before), ['X509IdentityToken']);
  });

  it('a wrong password and a missing secure endpoint fail with readable errors', async () => {
    const dataDir = join(folder, 'tofu');
    const connectError = async (raw: Record<string, unknown>, pattern: RegExp) => {
      const driver = createDriver(deviceFromConfig(raw, { OPCUA_PASSWORD: 'wrong' }), { log: testLog, dataDir });
      try {
        await assert.rejects(driver.connect(), (error: unknown) => {
          assert.ok(error instanceof DriverError);
          assert.match(error.message, pattern);
          assert.equal(error.connectionLost, true);
          return true;
        });
        assert.equal(driver.connected, false);
      } finally {
        await driver.close();
      }
    };
    await connectError(
      secureDevice(lenient.endpointUrl, { trustOnFirstUse: true }),
      /Bad(IdentityTokenRejected|UserAccessDenied|IdentityTokenInvalid).*username and password/,
    );
    const plain = secureDevice(lenient.endpointUrl, {
      securityMode: 'None',
      securityPolicy: 'None',
      auth: { type: 'anonymous' },
      trustOnFirstUse: true,
    });
    await connectError(plain, /offers no endpoint with securityMode None and securityPolicy None/);
  });
});
