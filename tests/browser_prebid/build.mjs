// Bundles entry.js (Prebid.js from npm + priceFloors) into dist/prebid.js with esbuild.
import { build } from 'esbuild';

const started = Date.now();
await build({
  entryPoints: ['entry.js'],
  bundle: true,
  format: 'iife',
  target: ['chrome100'],
  outfile: 'dist/prebid.js',
  minify: true,
  logLevel: 'warning',
});
console.log(`dist/prebid.js built in ${((Date.now() - started) / 1000).toFixed(1)} s`);
