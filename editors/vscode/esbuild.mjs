// Bundles src/extension.ts and vscode-languageclient into one out/extension.js, so the
// .vsix needs no node_modules (vsce package --no-dependencies). Type checking is tsc's job
// (`npm run compile` runs `tsc --noEmit` first).
import * as esbuild from 'esbuild';

const watch = process.argv.includes('--watch');
const options = {
  entryPoints: ['src/extension.ts'],
  bundle: true,
  outfile: 'out/extension.js',
  external: ['vscode'],
  format: 'cjs',
  platform: 'node',
  target: 'node20',
  // Minified (1 MB → 0.4 MB), but keeping function names so stack traces in logs still read.
  sourcemap: watch,
  minify: !watch,
  keepNames: true,
  logLevel: 'info',
};
if (watch) {
  const context = await esbuild.context(options);
  await context.watch();
} else {
  await esbuild.build(options);
}
