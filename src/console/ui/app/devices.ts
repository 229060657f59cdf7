// The devices tab: GET /devices every 5 s while shown, again shortly after each device-state
// event (whose state is shown at once), and at every reconnection of the live stream.
import { html } from 'htm/preact';
import type { VNode } from 'preact';
import { useRef, useState } from 'preact/hooks';
import { api, type DeviceSnapshot, type DeviceStateEvent, messageOf } from './api.js';
import { count, duration } from './format.js';
import { useLive, useNow, usePoll } from './live.js';

const REFRESH_MS = 5000;
const AFTER_EVENT_MS = 300;

function NextTry({ at, now }: { at: string | null; now: number }): VNode {
  if (!at) return html`<span class="muted">—</span>`;
  const seconds = (new Date(at).getTime() - now) / 1000;
  return html`<span title=${at}>${seconds > 0 ? `in ${duration(seconds)}` : 'now'}</span>`;
}

/** The last read's duration, in ms below a second. */
function pollDuration(seconds: number | undefined): string {
  if (seconds === undefined) return '';
  return seconds < 1 ? `last read ${(seconds * 1000).toFixed(seconds < 0.01 ? 2 : 1)} ms` : `last read ${seconds.toFixed(2)} s`;
}

function Details({ device }: { device: DeviceSnapshot }): VNode {
  const codes = Object.entries(device.errorsByCode).sort((a, b) => b[1] - a[1]);
  const plans = Object.entries(device.plans);
  return html`<div class="device-details">
    <div>
      <span class="label">errors by code</span>
      ${
        codes.length > 0
          ? codes.map(([code, n]) => html`<span class="chip bad-chip">${code} <b>${count(n)}</b></span>`)
          : html`<span class="muted">none</span>`
      }
    </div>
    <div>
      <span class="label">read plan</span>
      ${
        plans.length > 0
          ? html`<table class="plans">
              ${plans.map(
                ([group, plan]) =>
                  html`<tr>
                    <th>${group}</th>
                    <td><pre>${plan}</pre></td>
                    <td class="num" data-testid=${`poll-duration-${device.name}-${group}`}>${pollDuration(device.lastPollSeconds[group])}</td>
                  </tr>`,
              )}
            </table>`
          : html`<span class="muted">none yet (the device has not connected)</span>`
      }
    </div>
  </div>`;
}

export function DevicesView(): VNode {
  const [devices, setDevices] = useState<DeviceSnapshot[] | null>(null);
  const [error, setError] = useState('');
  const pending = useRef(0);
  const now = useNow();

  const load = () => {
    api
      .devices()
      .then((answer) => {
        setDevices(answer.devices);
        setError('');
      })
      .catch((reason: unknown) => setError(messageOf(reason)));
  };
  usePoll(load, REFRESH_MS);
  useLive<DeviceStateEvent>('device-state', (event) => {
    setDevices(
      (list) =>
        list?.map((device) =>
          device.name === event.device ? { ...device, state: event.state, lastError: event.lastError ?? null } : device,
        ) ?? list,
    );
    window.clearTimeout(pending.current);
    pending.current = window.setTimeout(load, AFTER_EVENT_MS);
  });

  if (!devices) return error ? html`<p class="bad">${error}</p>` : html`<p class="muted">loading…</p>`;
  return html`<div>
    ${error ? html`<p class="bad">${error}</p>` : null}
    <table class="grid devices">
      <thead>
        <tr>
          <th>device</th><th>driver</th><th>state</th><th class="num">tags</th><th class="num">samples</th>
          <th class="num">connect attempts</th><th>next retry</th><th class="num">poll cycles</th>
          <th class="num">poll errors</th><th class="num">overruns</th><th>last error</th>
        </tr>
      </thead>
      ${devices.map(
        (device) => html`<tbody key=${device.name}>
          <tr data-testid=${`device-${device.name}`} class="device-row">
            <td><b>${device.name}</b></td>
            <td>${device.driver}</td>
            <td><span class=${`state state-${device.state}`} data-testid=${`device-state-${device.name}`}>${device.state}</span></td>
            <td class="num">${count(device.tags)}</td>
            <td class="num">${count(device.samples)}</td>
            <td class="num">${count(device.connectAttempts)}</td>
            <td><${NextTry} at=${device.nextTryAt} now=${now} /></td>
            <td class="num">${count(device.cycles)}</td>
            <td class=${`num ${device.pollErrors > 0 ? 'bad' : ''}`}>${count(device.pollErrors)}</td>
            <td class=${`num ${device.overruns > 0 ? 'warn' : ''}`}>${count(device.overruns)}</td>
            <td class="error-text">${device.lastError ?? ''}</td>
          </tr>
          <tr class="detail-row"><td colspan="11"><${Details} device=${device} /></td></tr>
        </tbody>`,
      )}
    </table>
  </div>`;
}
