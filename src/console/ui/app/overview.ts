// The overview tab: gateway, devices, cloud link, outbox (with its last hour), broker, process.
// Its data is the app's: the `overview` event every 2 s, patched by device, uplink and outbox
// events in between.
import { html } from 'htm/preact';
import type { VNode } from 'preact';
import { useMemo } from 'preact/hooks';
import type { LastReload, Overview, WriteEvent } from './api.js';
import { Chart } from './chart.js';
import { bytes, count, dateTime, duration, time, value } from './format.js';

function Reload({ reload }: { reload: LastReload | null }): VNode {
  if (!reload) return html`<span class="muted">none since the start</span>`;
  if (reload.outcome === 'refused')
    return html`<span class="bad">refused</span> <span class="muted">at ${dateTime(reload.at)}</span>
      <ul class="problems">
        ${reload.problems.map((problem) => html`<li>${problem}</li>`)}
      </ul>`;
  const result = reload.result;
  const changes: Array<[string, string[]]> = [
    ['added', result.added],
    ['removed', result.removed],
    ['restarted', result.restarted],
    ['applied', result.applied],
    ['disconnected', result.disconnected],
  ];
  const partial = result.notApplied.length > 0 || result.failed.length > 0;
  return html`<span class=${partial ? 'warn' : 'good'}>${partial ? 'applied in part' : 'applied'}</span>
    <span class="muted"> at ${dateTime(reload.at)}</span>
    <ul class="problems">
      ${changes.filter(([, names]) => names.length > 0).map(([label, names]) => html`<li>${label}: ${names.join(', ')}</li>`)}
      ${result.failed.length > 0 ? html`<li class="bad">failed to start: ${result.failed.join(', ')}</li>` : null}
      ${result.notApplied.length > 0 ? html`<li class="warn">not applied (needs a restart): ${result.notApplied.join(', ')}</li>` : null}
    </ul>`;
}

function Field({ label, children, testid }: { label: string; children: unknown; testid?: string }): VNode {
  return html`<div class="field"><span class="label">${label}</span><span class="val" data-testid=${testid}>${children}</span></div>`;
}

function OutboxChart({ history }: { history: Array<[number, number]> }): VNode {
  const data = useMemo(() => ({ xs: history.map(([ts]) => ts / 1000), ys: history.map(([, depth]) => depth) }), [history]);
  if (history.length < 2) return html`<div class="chart-empty">collecting: one point every 10 s</div>`;
  return html`<${Chart} xs=${data.xs} ys=${data.ys} label="messages" height=${140} stepped=${true} />`;
}

export function OverviewView({ overview, writes }: { overview: Overview | null; writes: WriteEvent[] }): VNode {
  if (!overview) return html`<p class="muted">loading…</p>`;
  const { gateway, devices, uplink, outbox, broker, process } = overview;
  const down = devices.list.filter((device) => device.state !== 'connected');
  return html`<div class="cards">
    <section class="card">
      <h2>Gateway</h2>
      <${Field} label="name">${gateway.name}<//>
      <${Field} label="version">${gateway.version}<//>
      <${Field} label="uptime">${duration(gateway.uptimeSeconds)} <span class="muted">since ${dateTime(gateway.startedAt)}</span><//>
      <${Field} label="config file"><code>${gateway.configFile ?? '—'}</code><//>
      <${Field} label="last reload"><${Reload} reload=${gateway.lastReload} /><//>
      <${Field} label="samples / published">${count(gateway.samples)} / ${count(gateway.published)}<//>
      <${Field} label="process">CPU ${process.cpuPercent.toFixed(1)} %, RSS ${bytes(process.rssBytes)}, heap ${bytes(process.heapUsedBytes)}<//>
    </section>
    <section class="card">
      <h2>Devices</h2>
      <div class="counts">
        <div class="count good"><b data-testid="device-count-up">${devices.up}</b> up</div>
        <div class=${`count ${down.length > 0 ? 'bad' : 'muted'}`}><b data-testid="device-count-down">${devices.total - devices.up}</b> down</div>
      </div>
      ${
        down.length > 0
          ? html`<ul class="down-list">
              ${down.map(
                (device) =>
                  html`<li><b>${device.name}</b> <span class=${`state state-${device.state}`}>${device.state}</span>${
                    device.lastError ? html` <span class="error-text">${device.lastError}</span>` : null
                  }</li>`,
              )}
            </ul>`
          : html`<p class="muted">all devices connected</p>`
      }
    </section>
    <section class="card">
      <h2>Cloud link</h2>
      ${
        uplink
          ? html`<${Field} label="state" testid="uplink-state"><span class=${uplink.connected ? 'good' : 'bad'}>${uplink.connected ? 'connected' : 'disconnected'}</span><//>
            <${Field} label="URL"><code>${uplink.url}</code><//>
            <${Field} label="format">${uplink.format}<//>
            <${Field} label="reconnects">${count(uplink.reconnects)}<//>
            <${Field} label="sent / acked / rejected">${count(uplink.sent)} / ${count(uplink.acknowledged)} / ${count(uplink.rejected)}<//>
            <${Field} label="in flight">${count(uplink.inFlight)}<//>
            <${Field} label="last error">${uplink.lastError ? html`<span class="error-text">${uplink.lastError}</span>` : html`<span class="muted">none</span>`}<//>`
          : html`<${Field} label="state" testid="uplink-state"><span class="muted">no uplink configured</span><//>`
      }
    </section>
    <section class="card wide">
      <h2>Outbox</h2>
      ${
        outbox
          ? html`<div class="fields-row">
              <${Field} label="depth" testid="outbox-depth">${count(outbox.messages)}<//>
              <${Field} label="bytes">${bytes(outbox.bytes)}<//>
              <${Field} label="oldest">${outbox.messages > 0 ? duration(outbox.oldestAgeSeconds) : '—'}<//>
              <${Field} label="dropped"><span class=${outbox.dropped > 0 ? 'bad' : ''}>${count(outbox.dropped)}</span><//>
              <${Field} label="delivered">${count(outbox.delivered)}<//>
              ${outbox.diskFull ? html`<${Field} label="disk"><span class="bad">full</span><//>` : null}
            </div>
            <div data-testid="outbox-chart" class="outbox-chart"><${OutboxChart} history=${outbox.history} /></div>`
          : html`<div class="fields-row"><${Field} label="depth" testid="outbox-depth"><span class="muted">no outbox (no uplink)</span><//></div>
            <div data-testid="outbox-chart" class="outbox-chart chart-empty">no outbox</div>`
      }
    </section>
    <section class="card">
      <h2>Broker</h2>
      <${Field} label="clients">${count(broker.clients)}<//>
      <${Field} label="denied">${count(broker.denied)}<//>
      <${Field} label="listeners">${broker.listeners.map((url) => html`<code class="block">${url}</code>`)}<//>
      <${Field} label="console browsers">${overview.browsers}<//>
    </section>
    <section class="card">
      <h2>Writes</h2>
      <${Field} label="received / written">${count(overview.writes.received)} / ${count(overview.writes.written)}<//>
      <${Field} label="rejected / failed">${count(overview.writes.rejected)} / ${count(overview.writes.failed)}<//>
      ${
        writes.length > 0
          ? html`<table class="grid small">
              <thead><tr><th>time</th><th>tag</th><th>value</th><th>by</th><th>answer</th></tr></thead>
              <tbody>
                ${writes.map(
                  (write) => html`<tr>
                    <td>${time(write.answer.ts)}</td>
                    <td>${write.answer.device ?? ''}/${write.answer.tag ?? ''}</td>
                    <td>${value(write.answer.value)}</td>
                    <td>${write.source}${write.user ? ` (${write.user})` : ''}</td>
                    <td class=${write.answer.ok ? 'good' : 'bad'}>${write.answer.ok ? 'ok' : (write.answer.error ?? 'failed')}</td>
                  </tr>`,
                )}
              </tbody>
            </table>`
          : html`<p class="muted">writes answered while this page is open appear here</p>`
      }
    </section>
  </div>`;
}
