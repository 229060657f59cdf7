// The JSON format: the cloud gets the gateway's local JSON messages (payload.ts, on the topics of
// topics.ts) through the forward rules, byte for byte, as finished messages stored in the outbox
// (nothing to do at send time); a retained "online" on the status topic is its birth, "offline"
// its will and goodbye; cloud messages on the receive rules' topics come down into the
// integrated broker, where a command topic reaches the write path as a local command would.
import { BridgeRules, type UplinkConfig } from '../../cloud/bridge-rules.js';
import type { CloudMessage, CloudSubscriptions, DownlinkAction, NorthboundFormat, Recorder } from '../format.js';
import { renderStatusTopic } from './topics.js';

const ONLINE = Buffer.from('online');
const OFFLINE = Buffer.from('offline');

export class JsonFormat implements NorthboundFormat {
  readonly name = 'json';
  readonly session = 'configured';
  readonly disconnectReason = undefined;
  /** The cloud's retained status topic (uplink.statusTopic, or topics.status). */
  readonly statusTopic: string;
  private readonly rules: BridgeRules;

  /** `defaultStatusTopic`: the template of the local status topic (topics.status), used when the uplink names none. */
  constructor(uplink: Pick<UplinkConfig, 'forward' | 'receive' | 'statusTopic'>, gatewayName: string, defaultStatusTopic: string) {
    this.rules = new BridgeRules(uplink);
    this.statusTopic = renderStatusTopic(uplink.statusTopic ?? defaultStatusTopic, gatewayName);
  }

  /** The local message itself, on the cloud topic and with the QoS of the first forward rule that takes its topic. */
  recorder(localTopic: string): Recorder | undefined {
    const route = this.rules.route(localTopic);
    if (!route) return undefined;
    return (report) => ({ topic: route.topic, payload: report.local.payload, qos: route.qos, retain: report.local.retain });
  }

  /** JSON stores finished messages only: any other row is not its own. */
  encode(): CloudMessage | undefined {
    return undefined;
  }

  will(): CloudMessage {
    return this.status(OFFLINE);
  }

  births(): CloudMessage[] {
    return [this.status(ONLINE)];
  }

  goodbye(): CloudMessage {
    return this.status(OFFLINE);
  }

  subscriptions(protocolVersion: 4 | 5): CloudSubscriptions {
    return this.rules.subscriptions(protocolVersion);
  }

  decodeDownlink(topic: string, payload: Buffer, retain: boolean): DownlinkAction[] {
    const localTopic = this.rules.localTopic(topic);
    return localTopic === undefined ? [] : [{ kind: 'local', topic: localTopic, payload, retain }];
  }

  private status(payload: Buffer): CloudMessage {
    return { topic: this.statusTopic, payload, qos: 1, retain: true };
  }
}
