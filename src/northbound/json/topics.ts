// The gateway's JSON topics, in one place: a tag's topic, a batch's, the status topic, and the
// command and result topics of the write path. The integrated broker always uses them (local
// HMIs see JSON whatever the cloud format); the JSON format sends them on through the forward
// rules. config/load.ts checks for collisions with the same rendering the gateway publishes with.
import type { Config, DeviceConfig, TagConfig } from '../../config/schema.js';
import { compileTopicTemplate, type TopicTemplate, type TopicVariables } from '../topics.js';

/** What a command topic's answer topic adds to it. */
export const RESULT_SUFFIX = '/result';

type TopicsConfig = Config['topics'];

/** A device as the topics need it: its name and meta (its placeholders). */
type DeviceNaming = Pick<DeviceConfig, 'name' | 'meta'>;

/** The placeholders' values for a device's topics: its meta, then the built-in ones (which meta may not override). */
export function topicVariables(gatewayName: string, device: DeviceNaming, group: string, tag?: string): TopicVariables {
  const variables: TopicVariables = { ...device.meta, gateway: gatewayName, device: device.name, group };
  if (tag !== undefined) variables.tag = tag;
  return variables;
}

/** The template a tag's topic comes from: its own, or topics.tag. */
export function tagTopicSource(topics: Pick<TopicsConfig, 'tag'>, tag: Pick<TagConfig, 'topic'>): string {
  return tag.topic ?? topics.tag;
}

/** A tag's command topic: its data topic plus topics.command ("/set"). */
export function commandTopic(topics: Pick<TopicsConfig, 'command'>, tagTopic: string): string {
  return tagTopic + topics.command;
}

/** The status topic of a template (topics.status or uplink.statusTopic): only {gateway} in it. */
export function renderStatusTopic(source: string, gatewayName: string): string {
  return compileTopicTemplate(source).render({ gateway: gatewayName });
}

export class GatewayTopics {
  readonly gatewayName: string;
  readonly config: TopicsConfig;
  /** The retained status topic of the integrated broker ("online" / "offline"). */
  readonly status: string;
  private readonly templates = new Map<string, TopicTemplate>();

  constructor(topics: TopicsConfig, gatewayName: string) {
    this.config = topics;
    this.gatewayName = gatewayName;
    this.status = renderStatusTopic(topics.status, gatewayName);
  }

  /** A tag's data topic (per-tag messages are published there; its command topic derives from it). */
  tag(device: DeviceNaming, group: string, tag: Pick<TagConfig, 'name' | 'topic'>): string {
    return this.render(tagTopicSource(this.config, tag), topicVariables(this.gatewayName, device, group, tag.name));
  }

  /** The topic of a poll group's batch message. */
  batch(device: DeviceNaming, group: string): string {
    return this.render(this.config.batch, topicVariables(this.gatewayName, device, group));
  }

  /** A tag's command topic: its data topic plus topics.command ("/set"). */
  command(tagTopic: string): string {
    return commandTopic(this.config, tagTopic);
  }

  /** Where the answer to a command goes: its command topic plus "/result". */
  result(commandTopic: string): string {
    return commandTopic + RESULT_SUFFIX;
  }

  /** The command topic a result topic answers, or undefined when the topic is no result topic. */
  commandOfResult(topic: string): string | undefined {
    return topic.endsWith(RESULT_SUFFIX) ? topic.slice(0, -RESULT_SUFFIX.length) : undefined;
  }

  /**
   * The filter of every topic shaped like a tag topic of topics.tag ("+" for each placeholder but
   * {gateway}): a command on it for a tag that does not exist is answered too, instead of vanishing.
   */
  anyTagFilter(): string {
    const template = compileTopicTemplate(this.config.tag);
    return template.render(
      Object.fromEntries(template.placeholders.map((placeholder) => [placeholder, placeholder === 'gateway' ? this.gatewayName : '+'])),
    );
  }

  private render(source: string, variables: TopicVariables): string {
    let template = this.templates.get(source);
    if (!template) {
      template = compileTopicTemplate(source);
      this.templates.set(source, template);
    }
    return template.render(variables);
  }
}
