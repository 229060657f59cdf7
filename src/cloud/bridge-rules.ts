// The bridge rules between the integrated broker and the cloud, with Mosquitto's prefix
// semantics: a rule takes a topic when it starts with the rule's prefix and the rest matches the
// rule's pattern; the prefix is then swapped for the other side's. "forward" rules send local
// topics up, "receive" rules bring cloud topics down. The first matching rule wins.
import type { Config } from '../config/schema.js';
import type { CloudSubscriptions } from '../northbound/format.js';
import { topicMatches } from '../northbound/topics.js';

export type { CloudSubscriptions } from '../northbound/format.js';

export type UplinkConfig = NonNullable<Config['uplink']>;
type BridgeRule = NonNullable<UplinkConfig['forward']>[number];

/** JSON's forward rules when the config gives none: everything, as it is. */
const FORWARD_EVERYTHING: readonly BridgeRule[] = [{ topic: '#', localPrefix: '', remotePrefix: '', qos: 1 }];

/** Where a local topic goes on the cloud, when a forward rule takes it. */
export interface CloudRoute {
  topic: string;
  qos: 0 | 1;
}

export class BridgeRules {
  private readonly forward: readonly BridgeRule[];
  private readonly receive: readonly BridgeRule[];

  constructor(config: Pick<UplinkConfig, 'forward' | 'receive'> & { format?: UplinkConfig['format'] }) {
    // Sparkplug sends the gateway's tags as metrics: local topics go up only where a rule says so.
    this.forward = config.forward ?? (config.format === 'sparkplug-b' ? [] : FORWARD_EVERYTHING);
    this.receive = config.receive;
  }

  /** The cloud topic and QoS a local topic maps to (first matching forward rule), if any. */
  route(localTopic: string): CloudRoute | undefined {
    const rule = firstMatch(this.forward, localTopic, 'localPrefix');
    if (!rule) return undefined;
    // The same prefix (the default rule) keeps the topic as it is: no copy of it per tag.
    const topic = rule.remotePrefix === rule.localPrefix ? localTopic : rule.remotePrefix + localTopic.slice(rule.localPrefix.length);
    return { topic, qos: rule.qos };
  }

  /** The local topic a cloud message goes to (first matching receive rule), if any. */
  localTopic(cloudTopic: string): string | undefined {
    const rule = firstMatch(this.receive, cloudTopic, 'remotePrefix');
    return rule && rule.localPrefix + cloudTopic.slice(rule.remotePrefix.length);
  }

  get receives(): boolean {
    return this.receive.length > 0;
  }

  /**
   * The cloud subscriptions of the receive rules. With MQTT 5 "No Local": the cloud does not send
   * back what this gateway published (a forwarded command would otherwise come down again and be
   * written twice). 3.1.1 has no such option: echo.ts recognizes echoes instead.
   */
  subscriptions(protocolVersion: 4 | 5): CloudSubscriptions {
    return Object.fromEntries(
      this.receive.map((rule) => [rule.remotePrefix + rule.topic, { qos: rule.qos, ...(protocolVersion === 5 ? { nl: true } : {}) }]),
    );
  }
}

function firstMatch(rules: readonly BridgeRule[], topic: string, prefix: 'localPrefix' | 'remotePrefix'): BridgeRule | undefined {
  for (const rule of rules) {
    if (topic.startsWith(rule[prefix]) && topicMatches(rule.topic, topic.slice(rule[prefix].length))) return rule;
  }
  return undefined;
}
