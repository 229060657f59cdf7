// Every tag's latest value, kept outside the views: the GET /tags snapshot, then the `samples`
// rows of the live stream applied as they come (a row older than what the tag shows is ignored).
// However many rows arrive, the views are told once per animation frame.
import type { Quality, SampleRow, TagStatus, TagValue } from './api.js';

export interface TagEntry {
  /** `<device>/<tag>` (the rows' data-key). */
  key: string;
  device: string;
  tag: string;
  unit: string;
  writable: boolean;
  value: TagValue | null | undefined;
  quality: Quality | undefined;
  reason: string | null;
  /** Source timestamp, ms; 0 before the first reading. */
  ts: number;
  /** device/tag in lower case, for the text filter. */
  search: string;
}

const mapKey = (device: string, tag: string) => `${device}\u0000${tag}`;

export class TagStore {
  entries: TagEntry[] = [];
  devices: string[] = [];
  loaded = false;
  /** Bumped when tags come or go (the filtered list is computed again). */
  structure = 0;
  /** Bumped once per frame in which values changed. */
  values = 0;
  /** Rows for tags the snapshot did not have (a reload added them): the snapshot is due again. */
  onUnknown: () => void = () => {};
  private byKey = new Map<string, TagEntry>();
  /** Rows that came before the first snapshot: applied once it is loaded (newer ones win by ts). */
  private early: SampleRow[] = [];
  private readonly listeners = new Set<() => void>();
  private frame = 0;

  /** Takes a snapshot; values newer than it that came live meanwhile are kept. */
  load(tags: TagStatus[]): void {
    const byKey = new Map<string, TagEntry>();
    const entries: TagEntry[] = [];
    const devices = new Set<string>();
    for (const status of tags) {
      const id = mapKey(status.device, status.tag);
      const previous = this.byKey.get(id);
      const entry: TagEntry = {
        key: `${status.device}/${status.tag}`,
        device: status.device,
        tag: status.tag,
        unit: status.unit ?? '',
        writable: status.writable,
        value: status.value,
        quality: status.quality,
        reason: status.reason ?? null,
        ts: status.ts ?? 0,
        search: `${status.device}/${status.tag}`.toLowerCase(),
      };
      if (previous && previous.ts > entry.ts) {
        entry.value = previous.value;
        entry.quality = previous.quality;
        entry.reason = previous.reason;
        entry.ts = previous.ts;
      }
      byKey.set(id, entry);
      entries.push(entry);
      devices.add(status.device);
    }
    this.byKey = byKey;
    this.entries = entries;
    this.devices = [...devices];
    this.loaded = true;
    this.structure++;
    const early = this.early;
    this.early = [];
    if (early.length > 0) this.apply(early);
    this.changed();
  }

  apply(rows: SampleRow[]): void {
    if (!this.loaded) {
      // (Bounded: a snapshot that never comes must not grow the page.)
      if (this.early.length < 200_000) this.early.push(...rows);
      return;
    }
    let unknown = false;
    for (const [device, tag, value, quality, reason, ts] of rows) {
      const entry = this.byKey.get(mapKey(device, tag));
      if (!entry) {
        unknown = true;
        continue;
      }
      if (ts < entry.ts) continue;
      entry.value = value;
      entry.quality = quality;
      entry.reason = reason;
      entry.ts = ts;
    }
    this.changed();
    if (unknown) this.onUnknown();
  }

  get(key: string): TagEntry | undefined {
    const slash = key.indexOf('/');
    return this.byKey.get(mapKey(key.slice(0, slash), key.slice(slash + 1))) ?? this.entries.find((entry) => entry.key === key);
  }

  /** Called at most once per animation frame after changes. */
  subscribe(listener: () => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  private changed(): void {
    if (this.frame !== 0) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = 0;
      this.values++;
      for (const listener of this.listeners) listener();
    });
  }
}

export const tagStore = new TagStore();
