// A real MQTT subscriber (mqtt.js) that records what arrives, for end-to-end tests.
import mqtt, { type MqttClient } from 'mqtt';

export interface Received {
  topic: string;
  payload: string;
  retain: boolean;
}

export class Recorder {
  readonly messages: Received[] = [];
  readonly client: MqttClient;

  private constructor(client: MqttClient) {
    this.client = client;
    client.on('message', (topic, payload, packet) => this.messages.push({ topic, payload: payload.toString(), retain: packet.retain }));
  }

  static async connect(url: string, topics: string | string[] = '#'): Promise<Recorder> {
    const client = await mqtt.connectAsync(url, { reconnectPeriod: 0, connectTimeout: 5000 });
    const recorder = new Recorder(client);
    await client.subscribeAsync(topics, { qos: 1 });
    return recorder;
  }

  /** The newest payload on a topic, parsed as JSON. */
  last(topic: string): unknown {
    const found = this.messages.findLast((message) => message.topic === topic);
    return found === undefined ? undefined : JSON.parse(found.payload);
  }

  topics(): Set<string> {
    return new Set(this.messages.map((message) => message.topic));
  }

  async close(): Promise<void> {
    await this.client.endAsync(true);
  }
}
