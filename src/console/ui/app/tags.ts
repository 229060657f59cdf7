// The tags tab: every tag's live value in a virtualized table (fixed row height; only the rows in
// view, plus a few, are in the DOM), so 10,000 tags updating several times a second cost one
// render of ~40 rows per animation frame. A click opens the side panel: the tag's trend (GET
// /trend, then its live values appended) and, for operators, the write form.
import { html } from 'htm/preact';
import type { VNode } from 'preact';
import { useEffect, useMemo, useRef, useState } from 'preact/hooks';
import { api, type CommandAnswer, messageOf, type Session, type TagValue } from './api.js';
import { Chart } from './chart.js';
import { age, plottable, time, value } from './format.js';
import { useNow } from './live.js';
import { type TagEntry, tagStore } from './tag-store.js';

/** Row height in px: must match .vt-row's height in the CSS. */
const ROW = 24;
const OVERSCAN = 10;

let loading: Promise<void> | undefined;

/** GET /tags into the store (one request at a time). */
export function loadTags(): Promise<void> {
  loading ??= api
    .tags()
    .then((answer) => tagStore.load(answer.tags))
    .finally(() => {
      loading = undefined;
    });
  return loading;
}

let unknownTimer = 0;
tagStore.onUnknown = () => {
  window.clearTimeout(unknownTimer);
  unknownTimer = window.setTimeout(() => void loadTags().catch(() => {}), 1000);
};

function Row({
  entry,
  index,
  now,
  selected,
  onSelect,
}: {
  entry: TagEntry;
  index: number;
  now: number;
  selected: boolean;
  onSelect: (key: string) => void;
}): VNode {
  const quality = entry.quality ?? 'none';
  return html`<div
    class=${`vt-row${selected ? ' selected' : ''}${index % 2 ? ' odd' : ''}`}
    role="row"
    data-testid="tag-row"
    data-key=${entry.key}
    style=${{ transform: `translateY(${index * ROW}px)` }}
    onClick=${() => onSelect(entry.key)}
  >
    <span role="cell" class="c-device" title=${entry.device}>${entry.device}</span>
    <span role="cell" class="c-tag" title=${entry.tag}>${entry.tag}${entry.writable ? html` <span class="w" title="writable">✎</span>` : null}</span>
    <span role="cell" class=${`c-value q-text-${quality}`} data-testid="tag-value">${value(entry.value)}</span>
    <span role="cell" class="c-unit">${entry.unit}</span>
    <span role="cell" class="c-quality"><span class=${`q q-${quality}`}>${entry.quality ?? '—'}</span></span>
    <span role="cell" class="c-reason" title=${entry.reason ?? ''}>${entry.reason ?? ''}</span>
    <span role="cell" class="c-ts">${entry.ts ? time(entry.ts) : ''}</span>
    <span role="cell" class="c-age">${entry.ts ? age(now - entry.ts) : ''}</span>
  </div>`;
}

function TagTable({
  rows,
  selected,
  onSelect,
  resetKey,
}: {
  rows: TagEntry[];
  selected: string | null;
  onSelect: (key: string) => void;
  resetKey: string;
}): VNode {
  const viewport = useRef<HTMLDivElement>(null);
  const [scrollTop, setScrollTop] = useState(0);
  const [height, setHeight] = useState(600);
  // Re-renders every second for the ages; the time is taken at each render.
  useNow(1000);
  const now = Date.now();

  useEffect(() => {
    const element = viewport.current;
    if (!element) return;
    const observer = new ResizeObserver(() => setHeight(element.clientHeight));
    observer.observe(element);
    setHeight(element.clientHeight);
    return () => observer.disconnect();
  }, []);

  // A new filter starts at the top.
  useEffect(() => {
    if (viewport.current) viewport.current.scrollTop = 0;
    setScrollTop(0);
  }, [resetKey]);

  const first = Math.max(0, Math.floor(scrollTop / ROW) - OVERSCAN);
  const last = Math.min(rows.length, Math.ceil((scrollTop + height) / ROW) + OVERSCAN);
  const visible: VNode[] = [];
  for (let index = first; index < last; index++) {
    const entry = rows[index]!;
    visible.push(
      html`<${Row} key=${entry.key} entry=${entry} index=${index} now=${now} selected=${entry.key === selected} onSelect=${onSelect} />`,
    );
  }
  // The header sits in the scrolling box (sticky), so its columns line up with the rows' whatever the scrollbar.
  return html`<div class="vt" role="table" aria-rowcount=${rows.length}>
    <div class="vt-body" ref=${viewport} onScroll=${(event: Event) => setScrollTop((event.currentTarget as HTMLElement).scrollTop)}>
      <div class="vt-head" role="row">
        <span role="columnheader">device</span><span role="columnheader">tag</span><span role="columnheader">value</span>
        <span role="columnheader">unit</span><span role="columnheader">quality</span><span role="columnheader">reason</span>
        <span role="columnheader">source time</span><span role="columnheader">age</span>
      </div>
      <div class="vt-space" style=${{ height: `${rows.length * ROW}px` }}>${visible}</div>
      ${rows.length === 0 ? html`<p class="muted empty">no tag matches</p>` : null}
    </div>
  </div>`;
}

interface Series {
  xs: number[];
  ys: Array<number | null>;
  windowSeconds: number;
}

function append(series: Series, x: number, y: number): Series {
  const from = x - series.windowSeconds;
  let start = 0;
  while (start < series.xs.length && series.xs[start]! < from) start++;
  return { xs: [...series.xs.slice(start), x], ys: [...series.ys.slice(start), y], windowSeconds: series.windowSeconds };
}

function Trend({ entry }: { entry: TagEntry }): VNode {
  const [series, setSeries] = useState<Series | null>(null);
  const [error, setError] = useState('');
  const lastTs = useRef(0);
  const key = entry.key;

  useEffect(() => {
    let cancelled = false;
    setSeries(null);
    setError('');
    lastTs.current = 0;
    api
      .trend(entry.device, entry.tag)
      .then((trend) => {
        if (cancelled) return;
        let next: Series = {
          xs: trend.points.map(([ts]) => ts / 1000),
          ys: trend.points.map(([, y]) => y),
          windowSeconds: trend.minutes * 60,
        };
        lastTs.current = trend.points.at(-1)?.[0] ?? 0;
        const current = tagStore.get(key);
        const y = plottable(current?.value);
        if (current && y !== undefined && current.ts > lastTs.current) {
          next = append(next, current.ts / 1000, y);
          lastTs.current = current.ts;
        }
        setSeries(next);
      })
      .catch((reason: unknown) => !cancelled && setError(messageOf(reason)));
    const stop = tagStore.subscribe(() => {
      const current = tagStore.get(key);
      if (!current || current.ts <= lastTs.current) return;
      const y = plottable(current.value);
      if (y === undefined) return;
      lastTs.current = current.ts;
      setSeries((previous) => (previous ? append(previous, current.ts / 1000, y) : previous));
    });
    return () => {
      cancelled = true;
      stop();
    };
  }, [key]);

  let body: VNode;
  if (error) body = html`<p class="bad">${error}</p>`;
  else if (!series) body = html`<p class="muted">loading…</p>`;
  else if (series.xs.length === 0 && plottable(entry.value) === undefined)
    body = html`<p class="muted">no trend: only numbers and booleans are recorded</p>`;
  else
    body = html`<${Chart} xs=${series.xs} ys=${series.ys} label=${entry.tag} height=${200} stepped=${typeof entry.value === 'boolean'} />`;
  return html`<div class="trend" data-testid="trend">
    <h3>Trend${series ? html` <span class="muted">(last ${Math.round(series.windowSeconds / 60)} min)</span>` : null}</h3>
    ${body}
  </div>`;
}

/** The text typed: JSON when it parses to a number, true/false, text or an array; else the text itself. */
export function parseWriteValue(text: string): TagValue {
  // An integer beyond 2^53 would lose digits as a JSON number: sent as text, which int64 tags take exactly.
  if (/^-?\d+$/.test(text) && !Number.isSafeInteger(Number(text))) return text;
  try {
    const parsed: unknown = JSON.parse(text);
    if (typeof parsed === 'number' || typeof parsed === 'boolean' || typeof parsed === 'string') return parsed;
    if (Array.isArray(parsed) && parsed.every((item) => ['number', 'boolean', 'string'].includes(typeof item))) return parsed as TagValue;
  } catch {
    // not JSON: sent as text
  }
  return text;
}

function answerText(answer: CommandAnswer): string {
  if (!answer.ok) return `refused: ${answer.error ?? 'failed'}`;
  const readBack = answer.readBack === undefined ? '' : `, read back ${value(answer.readBack)}`;
  return `ok: wrote ${value(answer.value)}${readBack}`;
}

function WriteForm({ entry }: { entry: TagEntry }): VNode {
  const [text, setText] = useState('');
  const [busy, setBusy] = useState(false);
  const [answer, setAnswer] = useState<{ ok: boolean; text: string } | null>(null);
  useEffect(() => {
    setText('');
    setAnswer(null);
  }, [entry.key]);

  const submit = (event: Event) => {
    event.preventDefault();
    if (busy || text.trim() === '') return;
    setBusy(true);
    setAnswer(null);
    api
      .write(entry.device, entry.tag, parseWriteValue(text.trim()))
      .then((result) => setAnswer({ ok: result.ok, text: answerText(result) }))
      .catch((reason: unknown) => setAnswer({ ok: false, text: `error: ${messageOf(reason)}` }))
      .finally(() => setBusy(false));
  };
  return html`<form class="write" data-testid="write-form" onSubmit=${submit}>
    <h3>Write</h3>
    <div class="write-row">
      <input
        data-testid="write-value"
        value=${text}
        placeholder=${`e.g. ${value(entry.value) || '42'}`}
        onInput=${(event: Event) => setText((event.currentTarget as HTMLInputElement).value)}
        aria-label="value to write"
      />
      <button type="submit" data-testid="write-submit" disabled=${busy}>${busy ? 'writing…' : 'Write'}</button>
    </div>
    <p class="hint muted">numbers, true/false and [arrays] as JSON; anything else is sent as text</p>
    ${answer ? html`<p data-testid="write-answer" class=${`answer ${answer.ok ? 'good' : 'bad'}`}>${answer.text}</p>` : null}
  </form>`;
}

function Panel({ entry, session, onClose }: { entry: TagEntry; session: Session; onClose: () => void }): VNode {
  const quality = entry.quality ?? 'none';
  return html`<aside class="panel" aria-label="tag details">
    <div class="panel-head">
      <h2 title=${entry.key}>${entry.device} / ${entry.tag}</h2>
      <button class="link" onClick=${onClose} aria-label="close">✕</button>
    </div>
    <div class="panel-value">
      <span class=${`big q-text-${quality}`}>${value(entry.value)}</span> <span class="muted">${entry.unit}</span>
      <span class=${`q q-${quality}`}>${entry.quality ?? 'no value yet'}</span>
    </div>
    ${entry.reason ? html`<p class="error-text">${entry.reason}</p>` : null}
    <p class="muted">${entry.ts ? `source time ${time(entry.ts)}` : 'not read yet'}</p>
    <${Trend} entry=${entry} />
    ${
      entry.writable
        ? session.role === 'operator'
          ? html`<${WriteForm} entry=${entry} />`
          : html`<p class="muted">writable tag: writes need the operator role</p>`
        : null
    }
  </aside>`;
}

const QUALITIES = ['good', 'uncertain', 'bad', 'none'] as const;

export function TagsView({ session }: { session: Session }): VNode {
  const [, setFrame] = useState(0);
  const [error, setError] = useState('');
  const [text, setText] = useState('');
  const [device, setDevice] = useState('');
  const [quality, setQuality] = useState('');
  const [selected, setSelected] = useState<string | null>(null);

  useEffect(() => {
    const stop = tagStore.subscribe(() => setFrame(tagStore.values));
    if (!tagStore.loaded) loadTags().catch((reason: unknown) => setError(messageOf(reason)));
    return stop;
  }, []);
  useEffect(() => {
    const close = (event: KeyboardEvent) => event.key === 'Escape' && setSelected(null);
    window.addEventListener('keydown', close);
    return () => window.removeEventListener('keydown', close);
  }, []);

  const needle = text.trim().toLowerCase();
  const rows = useMemo(
    () =>
      tagStore.entries.filter(
        (entry) =>
          (device === '' || entry.device === device) &&
          (needle === '' || entry.search.includes(needle)) &&
          (quality === '' || (entry.quality ?? 'none') === quality),
      ),
    // A quality filter depends on the values too; the others on the tag list only.
    [tagStore.structure, device, needle, quality, quality === '' ? 0 : tagStore.values],
  );
  const entry = selected ? tagStore.get(selected) : undefined;

  return html`<div class="tags-layout">
    <div class="tags-main">
      <div class="filters">
        <input
          type="search"
          data-testid="tag-filter-text"
          placeholder="filter device/tag"
          value=${text}
          onInput=${(event: Event) => setText((event.currentTarget as HTMLInputElement).value)}
          aria-label="filter by device or tag name"
        />
        <select data-testid="tag-filter-device" value=${device} onChange=${(event: Event) => setDevice((event.currentTarget as HTMLSelectElement).value)} aria-label="device">
          <option value="">all devices</option>
          ${tagStore.devices.map((name) => html`<option value=${name}>${name}</option>`)}
        </select>
        <select data-testid="tag-filter-quality" value=${quality} onChange=${(event: Event) => setQuality((event.currentTarget as HTMLSelectElement).value)} aria-label="quality">
          <option value="">any quality</option>
          ${QUALITIES.map((name) => html`<option value=${name}>${name === 'none' ? 'no value yet' : name}</option>`)}
        </select>
        <span class="muted">${tagStore.loaded ? `${rows.length.toLocaleString('en-US')} of ${tagStore.entries.length.toLocaleString('en-US')} tags` : 'loading…'}</span>
        ${error ? html`<span class="bad">${error}</span>` : null}
      </div>
      <${TagTable} rows=${rows} selected=${selected} onSelect=${setSelected} resetKey=${`${device}\u0000${needle}\u0000${quality}`} />
    </div>
    ${entry ? html`<${Panel} entry=${entry} session=${session} onClose=${() => setSelected(null)} />` : null}
  </div>`;
}
