// OPC UA load server for the subscription benchmark, in its own process so its CPU is not the
// gateway's: N Double variables ns=1;s=Load.v<i> that all change every `period` ms. Values are
// pushed with setValueFromSource, so items with samplingInterval 0 are reported on change.
//   node dist/bench/opcua-load-server.js <pkiDir> <variables> <periodMs>
// Prints "READY <port>".
import { OPCUACertificateManager } from 'node-opcua-certificate-manager';
import { DataType, MessageSecurityMode, SecurityPolicy, StatusCodes, Variant } from 'node-opcua-client';
import { OPCUAServer } from 'node-opcua-server';

const [pkiDir = '/tmp/plc2mqtt-opcua-bench', countText = '10000', periodText = '100'] = process.argv.slice(2);
const count = Number(countText);
const period = Number(periodText);

const certificateManager = new OPCUACertificateManager({ rootFolder: pkiDir, automaticallyAcceptUnknownCertificate: true });
await certificateManager.initialize();
const server = new OPCUAServer({
  port: 0,
  hostname: '127.0.0.1',
  serverCertificateManager: certificateManager,
  securityModes: [MessageSecurityMode.None],
  securityPolicies: [SecurityPolicy.None],
  maxConnectionsPerEndpoint: 10,
  serverCapabilities: {
    maxMonitoredItems: 200_000,
    maxMonitoredItemsPerSubscription: 200_000,
    operationLimits: { maxMonitoredItemsPerCall: 10_000, maxNodesPerRead: 10_000 },
  },
});
await server.initialize();
const addressSpace = server.engine.addressSpace!;
const namespace = addressSpace.getOwnNamespace();
const folder = namespace.addObject({ organizedBy: addressSpace.rootFolder.objects, browseName: 'Load', nodeId: 's=Load' });
const variables = Array.from({ length: count }, (_, index) =>
  namespace.addVariable({
    componentOf: folder,
    browseName: `v${index}`,
    nodeId: `s=Load.v${index}`,
    dataType: 'Double',
    minimumSamplingInterval: 0,
    value: new Variant({ dataType: DataType.Double, value: 0 }),
  }),
);
let tick = 0;
setInterval(() => {
  tick++;
  const now = new Date();
  for (let index = 0; index < count; index++)
    variables[index]!.setValueFromSource(new Variant({ dataType: DataType.Double, value: tick + index / 100_000 }), StatusCodes.Good, now);
}, period);
await server.start();
process.stdout.write(`READY ${server.endpoints[0]!.port}\n`);
const stop = () => void server.shutdown(0).finally(() => process.exit(0));
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
