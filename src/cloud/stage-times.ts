// How long a cloud-bound message takes from its append to the outbox (the sample's read, the same
// tick) to its commit, its send and its acknowledgement: a whole-ms histogram per stage, cheap
// enough to keep always (one array increment per message and stage). Logged when the gateway
// stops (bench/e2e.js prints it), so a latency regression shows in which stage it happens.
const MAX_MS = 60_000;

class Histogram {
  // Float64: a Uint32 bin would wrap after ~24 h at 50,000 messages/s.
  private readonly counts = new Float64Array(MAX_MS + 1);
  private total = 0;

  add(ms: number): void {
    this.counts[ms < 0 ? 0 : ms > MAX_MS ? MAX_MS : Math.round(ms)]!++;
    this.total++;
  }

  percentiles(): { p50: number; p90: number; p99: number; max: number } | undefined {
    if (this.total === 0) return undefined;
    const at = (p: number): number => {
      const rank = Math.max(1, Math.ceil(p * this.total));
      let seen = 0;
      for (let ms = 0; ms <= MAX_MS; ms++) if ((seen += this.counts[ms]!) >= rank) return ms;
      return MAX_MS;
    };
    let max = MAX_MS;
    while (max > 0 && this.counts[max] === 0) max--;
    return { p50: at(0.5), p90: at(0.9), p99: at(0.99), max };
  }
}

export class StageTimes {
  readonly committed = new Histogram();
  readonly sent = new Histogram();
  readonly acknowledged = new Histogram();

  /** Percentiles in ms since the append, per stage; undefined for a stage nothing passed. */
  summary(): Record<'committed' | 'sent' | 'acknowledged', ReturnType<Histogram['percentiles']>> {
    return { committed: this.committed.percentiles(), sent: this.sent.percentiles(), acknowledged: this.acknowledged.percentiles() };
  }
}

/** The process's stage times: one outbox and one uplink per gateway. */
export const stageTimes = new StageTimes();
