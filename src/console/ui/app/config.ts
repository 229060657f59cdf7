// The config tab: the running config (secrets redacted by the server) and a box that validates
// pasted config text with the same report as `plc2mqtt validate`.
import { html } from 'htm/preact';
import type { VNode } from 'preact';
import { useState } from 'preact/hooks';
import { api, type ConfigInfo, messageOf, type ValidateAnswer } from './api.js';
import { usePoll } from './live.js';

function Validate(): VNode {
  const [text, setText] = useState('');
  const [busy, setBusy] = useState(false);
  const [answer, setAnswer] = useState<ValidateAnswer | null>(null);
  const [error, setError] = useState('');

  const submit = (event: Event) => {
    event.preventDefault();
    setBusy(true);
    setError('');
    api
      .validate(text)
      .then(setAnswer)
      .catch((reason: unknown) => {
        setAnswer(null);
        setError(messageOf(reason));
      })
      .finally(() => setBusy(false));
  };
  return html`<form class="validate" onSubmit=${submit}>
    <h2>Validate a config</h2>
    <p class="muted">Paste a config file (JSON with comments): it is checked as <code>plc2mqtt validate</code> would, nothing is applied.</p>
    <textarea
      data-testid="validate-text"
      spellcheck=${false}
      rows="16"
      value=${text}
      onInput=${(event: Event) => setText((event.currentTarget as HTMLTextAreaElement).value)}
      aria-label="config to validate"
    ></textarea>
    <div><button type="submit" data-testid="validate-submit" disabled=${busy || text.trim() === ''}>${busy ? 'checking…' : 'Validate'}</button></div>
    ${error ? html`<pre class="report bad-box" data-testid="validate-report">${error}</pre>` : null}
    ${answer ? html`<pre class=${`report ${answer.ok ? 'good-box' : 'bad-box'}`} data-testid="validate-report">${answer.report}</pre>` : null}
  </form>`;
}

export function ConfigView(): VNode {
  const [config, setConfig] = useState<ConfigInfo | null>(null);
  const [error, setError] = useState('');
  // The config changes only with a reload: loaded when shown and at reconnections.
  usePoll(() => {
    api
      .config()
      .then((answer) => {
        setConfig(answer);
        setError('');
      })
      .catch((reason: unknown) => setError(messageOf(reason)));
  }, 60_000);

  return html`<div class="config-layout">
    <section class="config-running">
      <h2>Running config ${config?.file ? html`<code class="muted">${config.file}</code>` : null}</h2>
      <p class="muted">Secrets are redacted; values from environment variables show as <code>\${NAME}</code>.</p>
      ${error ? html`<p class="bad">${error}</p>` : null}
      ${config ? html`<pre class="json" data-testid="config-json">${JSON.stringify(config.config, null, 2)}</pre>` : html`<p class="muted">loading…</p>`}
    </section>
    <section class="config-validate"><${Validate} /></section>
  </div>`;
}
