// The plc2mqtt web console in the browser: the login form when the gateway asks for one, then the
// header (gateway, user, live stream state) and the tabs. Live data comes from one SSE stream
// (live.ts); each tab loads its snapshot from the API and applies the stream's events on top.
import { html } from 'htm/preact';
import { render, type VNode } from 'preact';
import { useCallback, useEffect, useState } from 'preact/hooks';
import {
  api,
  type DeviceStateEvent,
  type LoginAnswer,
  messageOf,
  type OutboxDepthEvent,
  type Overview,
  onUnauthorized,
  type SampleRow,
  type Session,
  setCsrf,
  type UplinkStateEvent,
  type WriteEvent,
} from './api.js';
import { BrokerView } from './broker.js';
import { ConfigView } from './config.js';
import { DevicesView } from './devices.js';
import { live, useLink, useLive } from './live.js';
import { OverviewView } from './overview.js';
import { tagStore } from './tag-store.js';
import { loadTags, TagsView } from './tags.js';
import './style.css';

const TABS = [
  ['overview', 'Overview'],
  ['devices', 'Devices'],
  ['tags', 'Tags'],
  ['broker', 'Broker'],
  ['config', 'Config'],
] as const;
type Tab = (typeof TABS)[number][0];

function tabOfHash(): Tab {
  const name = window.location.hash.slice(1);
  return TABS.find(([id]) => id === name)?.[0] ?? 'overview';
}

function useTab(): [Tab, (tab: Tab) => void] {
  const [tab, setTab] = useState<Tab>(tabOfHash());
  useEffect(() => {
    const changed = () => setTab(tabOfHash());
    window.addEventListener('hashchange', changed);
    return () => window.removeEventListener('hashchange', changed);
  }, []);
  return [
    tab,
    (next) => {
      if (next !== tab) window.location.hash = next;
      setTab(next);
    },
  ];
}

function Login({ gateway, onLogin }: { gateway: string | undefined; onLogin: (answer: LoginAnswer) => void }): VNode {
  const [username, setUsername] = useState('');
  const [password, setPassword] = useState('');
  const [error, setError] = useState('');
  const [busy, setBusy] = useState(false);
  const submit = (event: Event) => {
    event.preventDefault();
    setBusy(true);
    setError('');
    api
      .login(username, password)
      .then(onLogin)
      .catch((reason: unknown) => {
        setError(messageOf(reason));
        setPassword('');
      })
      .finally(() => setBusy(false));
  };
  return html`<main class="login">
    <form onSubmit=${submit}>
      <h1>plc2mqtt${gateway ? html` <span class="muted">${gateway}</span>` : null}</h1>
      <label>User <input data-testid="login-username" autocomplete="username" value=${username} onInput=${(event: Event) => setUsername((event.currentTarget as HTMLInputElement).value)} required autofocus /></label>
      <label>Password <input data-testid="login-password" type="password" autocomplete="current-password" value=${password} onInput=${(event: Event) => setPassword((event.currentTarget as HTMLInputElement).value)} required /></label>
      <button type="submit" data-testid="login-submit" disabled=${busy}>${busy ? 'logging in…' : 'Log in'}</button>
      ${error ? html`<p class="bad" data-testid="login-error" role="alert">${error}</p>` : null}
    </form>
  </main>`;
}

function patchDevice(overview: Overview | null, event: DeviceStateEvent): Overview | null {
  if (!overview) return overview;
  const list = overview.devices.list.map((device) =>
    device.name === event.device ? { ...device, state: event.state, lastError: event.lastError ?? null } : device,
  );
  return { ...overview, devices: { ...overview.devices, list, up: list.filter((device) => device.state === 'connected').length } };
}

function Console({ session, onLogout }: { session: Session; onLogout: () => void }): VNode {
  const [tab, setTab] = useTab();
  const [overview, setOverview] = useState<Overview | null>(null);
  const [writes, setWrites] = useState<WriteEvent[]>([]);
  const link = useLink();

  useEffect(() => {
    live.start();
    return () => live.stop();
  }, []);
  // The stream sends an overview when it opens; this one is for the first paint.
  useEffect(() => {
    api
      .overview()
      .then(setOverview)
      .catch(() => {});
    if (link.epoch > 1 && tagStore.loaded) loadTags().catch(() => {});
  }, [link.epoch]);

  useLive<Overview>('overview', setOverview);
  useLive<DeviceStateEvent>('device-state', (event) => setOverview((current) => patchDevice(current, event)));
  useLive<UplinkStateEvent>('uplink-state', (event) =>
    setOverview((current) =>
      current?.uplink
        ? {
            ...current,
            uplink: { ...current.uplink, connected: event.state === 'connected', ...(event.reason ? { lastError: event.reason } : {}) },
          }
        : current,
    ),
  );
  useLive<OutboxDepthEvent>('outbox-depth', (event) =>
    setOverview((current) =>
      current?.outbox ? { ...current, outbox: { ...current.outbox, messages: event.messages, bytes: event.bytes } } : current,
    ),
  );
  useLive<SampleRow[]>('samples', (rows) => tagStore.apply(rows));
  useLive<WriteEvent>('write', (event) => setWrites((list) => [event, ...list].slice(0, 10)));

  const logout = () => {
    api
      .logout()
      .catch(() => {})
      .finally(onLogout);
  };
  const linkText = link.state === 'live' ? 'live' : link.state === 'connecting' ? 'connecting…' : 'disconnected';
  const name = overview?.gateway.name ?? session.gateway ?? '';
  return html`<div class="app">
    <header>
      <span class="brand">plc2mqtt</span>
      <span class="gw" data-testid="gateway-name">${name}</span>
      ${overview ? html`<span class="muted">v${overview.gateway.version}</span>` : null}
      <span class=${`link link-${link.state}`} data-testid="link-state" title="live updates from the gateway">${linkText}</span>
      <span class="spacer"></span>
      <span class="user" data-testid="user">${session.user} <span class=${`role role-${session.role}`}>${session.role}</span></span>
      ${session.loginRequired ? html`<button class="small" data-testid="logout" onClick=${logout}>Log out</button>` : null}
    </header>
    <nav role="tablist">
      ${TABS.map(
        ([id, label]) =>
          html`<button role="tab" aria-selected=${tab === id} class=${tab === id ? 'active' : ''} data-testid=${`tab-${id}`} onClick=${() => setTab(id)}>${label}</button>`,
      )}
    </nav>
    <main class=${`tab-${tab}`}>
      ${tab === 'overview' ? html`<${OverviewView} overview=${overview} writes=${writes} />` : null}
      ${tab === 'devices' ? html`<${DevicesView} />` : null}
      ${tab === 'tags' ? html`<${TagsView} session=${session} />` : null}
      ${tab === 'broker' ? html`<${BrokerView} />` : null}
      ${tab === 'config' ? html`<${ConfigView} />` : null}
    </main>
  </div>`;
}

function App(): VNode {
  const [session, setSession] = useState<Session | null>(null);
  const [error, setError] = useState('');

  const check = useCallback(() => {
    api
      .session()
      .then((answer) => {
        setCsrf(answer.csrf ?? '');
        setSession(answer);
        setError('');
      })
      .catch((reason: unknown) => {
        setError(messageOf(reason));
        window.setTimeout(check, 3000);
      });
  }, []);

  useEffect(() => {
    onUnauthorized(check);
    // The stream was refused: logged out (the login form) or something else (open it again later).
    live.onClosed = () => {
      api
        .session()
        .then((answer) => {
          if (answer.authenticated) live.restartLater(2000);
          else {
            setCsrf('');
            setSession(answer);
          }
        })
        .catch(() => live.restartLater(3000));
    };
    check();
  }, []);

  if (!session)
    return html`<main class="splash">${error ? html`<p class="bad">the gateway does not answer: ${error} (trying again)</p>` : html`<p class="muted">loading…</p>`}</main>`;
  if (!session.authenticated)
    return html`<${Login}
      gateway=${session.gateway}
      onLogin=${(answer: LoginAnswer) => {
        setCsrf(answer.csrf);
        setSession({ ...session, authenticated: true, user: answer.user, role: answer.role, csrf: answer.csrf });
      }}
    />`;
  return html`<${Console} key=${session.user} session=${session} onLogout=${check} />`;
}

render(html`<${App} />`, document.getElementById('app')!);
