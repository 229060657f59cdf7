// The broker tab: the integrated broker's clients, GET /broker every 5 s while shown.
import { html } from 'htm/preact';
import type { VNode } from 'preact';
import { useState } from 'preact/hooks';
import { api, type BrokerInfo, messageOf } from './api.js';
import { count } from './format.js';
import { usePoll } from './live.js';

export function BrokerView(): VNode {
  const [broker, setBroker] = useState<BrokerInfo | null>(null);
  const [error, setError] = useState('');
  usePoll(() => {
    api
      .broker()
      .then((answer) => {
        setBroker(answer);
        setError('');
      })
      .catch((reason: unknown) => setError(messageOf(reason)));
  }, 5000);

  if (!broker) return error ? html`<p class="bad">${error}</p>` : html`<p class="muted">loading…</p>`;
  const clients = [...broker.clients].sort((a, b) => a.id.localeCompare(b.id));
  return html`<div>
    ${error ? html`<p class="bad">${error}</p>` : null}
    <div class="fields-row">
      <div class="field"><span class="label">clients</span><span class="val" data-testid="broker-clients">${count(clients.length)}</span></div>
      <div class="field"><span class="label">denied attempts</span><span class=${`val ${broker.denied > 0 ? 'bad' : ''}`} data-testid="broker-denied">${count(broker.denied)}</span></div>
      <div class="field"><span class="label">listeners</span><span class="val">${broker.listeners.map((url) => html`<code>${url}</code> `)}</span></div>
    </div>
    <table class="grid">
      <thead><tr><th>client id</th><th>user</th><th>address</th><th class="num">subscriptions</th><th class="num">queued</th></tr></thead>
      <tbody>
        ${
          clients.length === 0
            ? html`<tr><td colspan="5" class="muted">no MQTT client connected</td></tr>`
            : clients.map(
                (client) => html`<tr key=${client.id} data-testid="broker-client">
                  <td><code>${client.id}</code></td>
                  <td>${client.user ?? html`<span class="muted">anonymous</span>`}</td>
                  <td>${client.address ?? html`<span class="muted">—</span>`}</td>
                  <td class="num">${count(client.subscriptions)}</td>
                  <td class=${`num ${client.queued > 0 ? 'warn' : ''}`}>${count(client.queued)}</td>
                </tr>`,
              )
        }
      </tbody>
    </table>
  </div>`;
}
