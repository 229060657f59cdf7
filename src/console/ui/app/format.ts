// How numbers, sizes, times and tag values are shown.
import type { TagValue } from './api.js';

export function bytes(value: number): string {
  if (value < 1024) return `${value} B`;
  const units = ['kB', 'MB', 'GB', 'TB'];
  let scaled = value / 1024;
  let unit = 0;
  while (scaled >= 1024 && unit < units.length - 1) {
    scaled /= 1024;
    unit++;
  }
  return `${scaled < 10 ? scaled.toFixed(1) : Math.round(scaled)} ${units[unit]}`;
}

/** A duration in seconds, two units at most: "3 d 4 h", "5 min 3 s", "12 s", "0.4 s". */
export function duration(seconds: number): string {
  if (!Number.isFinite(seconds)) return '—';
  const negative = seconds < 0;
  const s = Math.abs(seconds);
  let text: string;
  if (s < 10) text = `${s.toFixed(1)} s`;
  else if (s < 60) text = `${Math.floor(s)} s`;
  else if (s < 3600) text = `${Math.floor(s / 60)} min ${Math.floor(s % 60)} s`;
  else if (s < 86400) text = `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  else text = `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
  return negative ? `-${text}` : text;
}

/** An age from milliseconds, compact for the tag table. */
export function age(ms: number): string {
  const s = Math.max(0, ms) / 1000;
  if (s < 10) return `${s.toFixed(1)} s`;
  if (s < 120) return `${Math.floor(s)} s`;
  if (s < 7200) return `${Math.floor(s / 60)} min`;
  if (s < 172800) return `${Math.floor(s / 3600)} h`;
  return `${Math.floor(s / 86400)} d`;
}

const pad = (value: number, width = 2) => String(value).padStart(width, '0');

/** Local time with milliseconds; with the date when it is not today. */
export function time(ms: number): string {
  const date = new Date(ms);
  const clock = `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}.${pad(date.getMilliseconds(), 3)}`;
  const today = new Date();
  if (date.toDateString() === today.toDateString()) return clock;
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())} ${clock}`;
}

export function dateTime(iso: string): string {
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? iso : time(date.getTime()).replace(/\.\d{3}$/, '');
}

function number(value: number): string {
  if (Number.isInteger(value) || !Number.isFinite(value)) return String(value);
  const abs = Math.abs(value);
  if (abs >= 1e6 || abs < 1e-4) return value.toPrecision(6);
  return String(Number.parseFloat(value.toPrecision(7)));
}

export function value(v: TagValue | null | undefined): string {
  if (v === undefined) return '';
  if (v === null) return 'null';
  if (typeof v === 'number') return number(v);
  if (Array.isArray(v)) return `[${v.map((item) => (typeof item === 'number' ? number(item) : String(item))).join(', ')}]`;
  return String(v);
}

/** A number a chart can draw: numbers, 64-bit strings, booleans as 0/1. */
export function plottable(v: TagValue | null | undefined): number | undefined {
  if (typeof v === 'number') return Number.isFinite(v) ? v : undefined;
  if (typeof v === 'boolean') return v ? 1 : 0;
  if (typeof v === 'string' && /^-?\d+$/.test(v)) return Number(v);
  return undefined;
}

export function count(value: number): string {
  return value.toLocaleString('en-US');
}
