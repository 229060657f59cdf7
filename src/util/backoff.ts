// Capped exponential back-off with jitter, so a hundred devices that lost the same switch
// don't all reconnect in the same millisecond.

export interface BackoffOptions {
  initial: number;
  max: number;
}

export const DEFAULT_BACKOFF: BackoffOptions = { initial: 1000, max: 30_000 };

/** Delay before retry number `attempt` (1-based): half fixed, half random ("equal jitter"). */
export function backoffDelay(attempt: number, options: BackoffOptions = DEFAULT_BACKOFF, random: () => number = Math.random): number {
  const ceiling = Math.min(options.max, options.initial * 2 ** Math.max(0, attempt - 1));
  return Math.round(ceiling / 2 + random() * (ceiling / 2));
}
