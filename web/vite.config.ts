/**
 * The web console's build: a single-page React app whose output (web/dist) the control plane
 * serves at `/` (src/api/web-console.ts). Asset names carry a content hash, so the server may let
 * browsers keep them for a year; index.html itself is never cached.
 */
import react from '@vitejs/plugin-react';
import { defineConfig } from 'vite';

export default defineConfig({
  root: import.meta.dirname,
  base: '/',
  plugins: [react()],
  build: {
    outDir: 'dist',
    emptyOutDir: true,
    // The content security policy allows no inline script: the entry is a file, never inlined.
    assetsInlineLimit: 0,
    modulePreload: { polyfill: false },
  },
  server: {
    // `npx vite web` against a running control plane: the API and the event stream on the same origin.
    proxy: { '/v1': { target: 'http://127.0.0.1:8600', ws: true } },
  },
});
