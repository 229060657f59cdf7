// Builds the web console's page: esbuild bundles src/console/ui/app/main.ts (Preact, htm, uPlot
// and the CSS it imports) into dist/console/app-<hash>.js and app-<hash>.css, and index.html
// refers to them. The console server (src/console/server.ts) serves index.html at / (no-cache) and
// the hashed files under /assets/ (immutable). Nothing is fetched from the internet at run time:
// the page works on a plant network. Run by `npm run build` after tsc (this file runs as
// dist/src/console/ui/build.js).
import { mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';
import { build } from 'esbuild';

const root = fileURLToPath(new URL('../../../../', import.meta.url));
const entry = join(root, 'src/console/ui/app/main.ts');
const out = join(root, 'dist/console');

/** Older builds' hashed files go: the directory holds one build. */
function clean(): void {
  mkdirSync(out, { recursive: true });
  for (const name of readdirSync(out)) if (/^app-.*\.(js|css|map)$/.test(name) || name === 'index.html') rmSync(join(out, name));
}

function page(script: string, style: string | undefined): string {
  // No inline script or style: the console's CSP allows scripts from 'self' only.
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>plc2mqtt console</title>
${style ? `<link rel="stylesheet" href="/assets/${style}">\n` : ''}<script type="module" src="/assets/${script}"></script>
</head>
<body>
<div id="app"><noscript>The plc2mqtt console needs JavaScript.</noscript></div>
</body>
</html>
`;
}

function size(bytes: number): string {
  return bytes < 1024 ? `${bytes} B` : `${(bytes / 1024).toFixed(1)} kB`;
}

async function main(): Promise<void> {
  clean();
  const result = await build({
    entryPoints: [entry],
    bundle: true,
    format: 'esm',
    minify: true,
    target: 'es2022',
    platform: 'browser',
    sourcemap: 'external',
    outdir: out,
    entryNames: 'app-[hash]',
    assetNames: 'app-[hash]',
    metafile: true,
    legalComments: 'none',
    logLevel: 'warning',
  });
  const outputs = Object.keys(result.metafile.outputs).map((path) => basename(path));
  const script = outputs.find((name) => name.endsWith('.js'));
  const style = outputs.find((name) => name.endsWith('.css'));
  if (!script) throw new Error('esbuild wrote no script');
  writeFileSync(join(out, 'index.html'), page(script, style));
  const lines = ['index.html', script, ...(style ? [style] : [])].map((name) => {
    const body = readFileSync(join(out, name));
    return `  ${name.padEnd(24)} ${size(body.length).padStart(9)} raw ${size(gzipSync(body, { level: 9 }).length).padStart(9)} gzip`;
  });
  console.log(`web console built in dist/console/:\n${lines.join('\n')}`);
}

main().catch((error: unknown) => {
  console.error(error instanceof Error ? error.message : error);
  process.exitCode = 1;
});
