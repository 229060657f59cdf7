// Allocation sampling of another Node process through its inspector (started with
// --inspect=127.0.0.1:PORT): V8's sampling heap profiler, counting objects that were collected too,
// so the figure is everything allocated (garbage included), not what is still alive. Used by
// bench/e2e.ts --alloc for the bytes allocated per message and where.
import WebSocket from 'ws';

interface ProfileNode {
  callFrame: { functionName: string; url: string; lineNumber: number };
  selfSize: number;
  children: ProfileNode[];
}

export interface AllocationFigures {
  bytes: number;
  /** The biggest allocation sites: the function and its two callers, bytes. */
  top: Array<{ site: string; bytes: number }>;
}

export class AllocationSampler {
  private constructor(
    private readonly ws: WebSocket,
    private nextId = 0,
    private readonly pending = new Map<number, (result: unknown) => void>(),
  ) {
    ws.on('message', (data: Buffer) => {
      const message = JSON.parse(data.toString()) as { id?: number; result?: unknown };
      if (message.id !== undefined) this.pending.get(message.id)?.(message.result);
      if (message.id !== undefined) this.pending.delete(message.id);
    });
  }

  /** Connects to the inspector on `port` (waits up to 30 s for it). */
  static async connect(port: number): Promise<AllocationSampler> {
    let targets: Array<{ webSocketDebuggerUrl: string }> | undefined;
    for (let attempt = 0; attempt < 150 && !targets; attempt++) {
      try {
        targets = (await (await fetch(`http://127.0.0.1:${port}/json/list`)).json()) as typeof targets;
      } catch {
        await new Promise((resolve) => setTimeout(resolve, 200));
      }
    }
    if (!targets?.[0]) throw new Error(`no inspector on port ${port}`);
    const ws = new WebSocket(targets[0].webSocketDebuggerUrl);
    await new Promise((resolve, reject) => ws.once('open', resolve).once('error', reject));
    return new AllocationSampler(ws);
  }

  private call(method: string, params: Record<string, unknown> = {}): Promise<unknown> {
    const id = ++this.nextId;
    return new Promise((resolve) => {
      this.pending.set(id, resolve);
      this.ws.send(JSON.stringify({ id, method, params }));
    });
  }

  async start(): Promise<void> {
    await this.call('HeapProfiler.enable');
    await this.call('HeapProfiler.startSampling', {
      samplingInterval: 4096,
      includeObjectsCollectedByMajorGC: true,
      includeObjectsCollectedByMinorGC: true,
    });
  }

  async stop(): Promise<AllocationFigures> {
    const { profile } = (await this.call('HeapProfiler.stopSampling')) as { profile: { head: ProfileNode } };
    this.ws.close();
    const sites = new Map<string, number>();
    let bytes = 0;
    const walk = (node: ProfileNode, stack: string[]): void => {
      const frame = node.callFrame;
      const here = [...stack, `${frame.functionName || '(anonymous)'} ${frame.url.replace(/^.*\//, '')}:${frame.lineNumber + 1}`];
      if (node.selfSize > 0) {
        bytes += node.selfSize;
        const site = here.slice(-3).reverse().join(' ← ');
        sites.set(site, (sites.get(site) ?? 0) + node.selfSize);
      }
      for (const child of node.children) walk(child, here);
    };
    walk(profile.head, []);
    const top = [...sites]
      .sort((a, b) => b[1] - a[1])
      .slice(0, 12)
      .map(([site, siteBytes]) => ({ site, bytes: siteBytes }));
    return { bytes, top };
  }
}
