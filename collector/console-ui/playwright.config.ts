import { defineConfig } from "@playwright/test";

// Run by tests/tests/console_browser.rs (cargo xtask test, root tier), which starts a real
// collector and sensor and passes their coordinates in VIGIL_* variables. The browser is
// Debian's chromium; Playwright's own browsers are never downloaded.
export default defineConfig({
  testDir: "e2e",
  timeout: 120_000,
  workers: 1,
  retries: 0,
  reporter: "list",
  outputDir: process.env.VIGIL_PLAYWRIGHT_OUTPUT ?? "test-results",
  use: {
    headless: true,
    // The console's certificate chains to the deployment CA, which this throwaway browser
    // profile does not hold; the Rust tests check the chain and name against that CA.
    ignoreHTTPSErrors: true,
    launchOptions: {
      executablePath: process.env.VIGIL_CHROMIUM ?? "/usr/bin/chromium",
    },
  },
});
