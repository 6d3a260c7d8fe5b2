import { defineConfig } from "vite";

// Built files go to dist/ (embedded by the collector with rust-embed); hashed names under
// assets/ may be cached for good. No inline scripts or styles: the console's CSP forbids them.
export default defineConfig({
  build: {
    outDir: "dist",
    emptyOutDir: true,
    assetsInlineLimit: 0,
    modulePreload: { polyfill: false },
  },
});
