// A small filesystem for disk-full tests: a tmpfs of a few megabytes mounted on a temp folder
// (needs root), filled with ballast files up to the last block and freed again piece by piece.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, statfsSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export class SmallDisk {
  readonly path: string;
  private readonly ballast: Array<{ file: string; bytes: number }> = [];
  private pieces = 0;

  private constructor(path: string) {
    this.path = path;
  }

  /** Mounts a tmpfs of `megabytes`; undefined when that is not permitted (not root). */
  static mount(megabytes: number): SmallDisk | undefined {
    const path = mkdtempSync(join(tmpdir(), 'plc2mqtt-small-disk-'));
    try {
      execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${megabytes}m,mode=0755`, 'tmpfs', path], { stdio: 'ignore' });
    } catch {
      rmSync(path, { recursive: true, force: true });
      return undefined;
    }
    return new SmallDisk(path);
  }

  /** Bytes free for new data now. */
  get free(): number {
    const stats = statfsSync(this.path);
    return stats.bavail * stats.bsize;
  }

  /** Fills the filesystem to its last block with ballast files (64 KB pieces, then 4 KB ones). */
  fill(): void {
    for (const size of [64 * 1024, 4096]) {
      for (;;) {
        const file = join(this.path, `ballast-${this.pieces++}`);
        try {
          writeFileSync(file, Buffer.alloc(size, 0x42));
        } catch {
          rmSync(file, { force: true });
          break;
        }
        this.ballast.push({ file, bytes: size });
      }
    }
  }

  /** Deletes ballast files (largest first) until at least `bytes` were freed; returns how much was. */
  release(bytes: number): number {
    this.ballast.sort((a, b) => a.bytes - b.bytes);
    let freed = 0;
    while (freed < bytes && this.ballast.length > 0) {
      const piece = this.ballast.pop()!;
      unlinkSync(piece.file);
      freed += piece.bytes;
    }
    return freed;
  }

  unmount(): void {
    try {
      execFileSync('umount', ['-l', this.path], { stdio: 'ignore' });
    } finally {
      rmSync(this.path, { recursive: true, force: true });
    }
  }
}
