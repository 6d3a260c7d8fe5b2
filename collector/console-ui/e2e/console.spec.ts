// The console in a real browser against a real collector and sensor: sign in with a link from
// `vigil console login`, see the alert of a real exec appear live, open it and check its
// process tree, filter, sign out; an expired link and a request without a session are refused.
// Screenshots of each page go to VIGIL_SCREENSHOT_DIR (target/console-screenshots).

import { expect, test, type Page } from "@playwright/test";
import { execFileSync, spawnSync } from "node:child_process";
import { mkdirSync } from "node:fs";

function need(name: string): string {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: run this through tests/tests/console_browser.rs`);
  return value;
}

const vigil = need("VIGIL_BIN");
const cliArgs: string[] = JSON.parse(need("VIGIL_CLI_ARGS"));
const testSh = need("VIGIL_TEST_SH");
const marker = need("VIGIL_MARKER");
const linkTtlSecs = Number(need("VIGIL_LINK_TTL_SECS"));
const shots = need("VIGIL_SCREENSHOT_DIR");
const RULE_TITLE = "Vigil e2e - marked shell copy";

function loginLink(): string {
  return execFileSync(vigil, [...cliArgs, "console", "login"], { encoding: "utf8" }).trim();
}

async function shot(page: Page, name: string): Promise<void> {
  mkdirSync(shots, { recursive: true });
  await page.screenshot({ path: `${shots}/${name}.png`, fullPage: true });
}

test("sign in, see a real alert live, open its process tree, filter, sign out", async ({ page }) => {
  const link = loginLink();
  const origin = new URL(link).origin;
  expect((await page.request.get(`${origin}/api/alerts`)).status()).toBe(401);

  await page.goto(link);
  await expect(page).toHaveURL(`${origin}/`);
  await expect(page.locator("#operator")).toHaveText("signed in as e2e-operator");
  await expect(page.getByTestId("alerts")).toBeVisible();
  await shot(page, "1-alerts");

  // A real exec on this machine, after the page is open: its alert must appear without reload.
  const child = spawnSync(testSh, ["-c", "exit 0", marker]);
  expect(child.status).toBe(0);
  const pid = child.pid;
  const row = page.locator(`tr.alert-row[data-pid="${pid}"]`);
  await expect(row).toBeVisible({ timeout: 20_000 });
  await expect(row).toContainText(RULE_TITLE);
  await expect(page.locator('[data-testid="counts"] rect')).not.toHaveCount(0);
  await shot(page, "2-alerts-live");

  const clicked = Date.now();
  await row.click();
  // Generous: the machines this runs on are shared and loaded.
  await expect(page.getByTestId("alert-title")).toHaveText(RULE_TITLE, { timeout: 30_000 });
  console.log(`alert page shown ${Date.now() - clicked} ms after the click`);
  // Oldest known ancestor first, the alerting process last (it started no children).
  const pids = await page
    .locator('[data-testid="process-tree"] .node')
    .evaluateAll((nodes) => nodes.map((n) => Number(n.getAttribute("data-pid"))));
  console.log(`process tree pids: ${pids.join(" > ")} (test worker ${process.pid}, its parent ${process.ppid})`);
  expect(pids.at(-1)).toBe(pid);
  expect(pids.at(-2)).toBe(process.pid);
  expect(pids.at(-3)).toBe(process.ppid);
  // ...whose parent is the Rust test that started Playwright.
  expect(pids.at(-4)).toBe(Number(need("VIGIL_HARNESS_PID")));
  // Its exec is on the timeline (after the fork that made it, when that was captured).
  await expect(page.locator(`[data-testid="event-rows"] tr[data-event-pid="${pid}"][data-action="exec"]`)).toHaveCount(1);
  await shot(page, "3-alert");

  await page.getByRole("link", { name: "← Alerts" }).click();
  await page.getByTestId("filter-q").fill(marker);
  await page.getByRole("button", { name: "Apply" }).click();
  await expect(page.locator("tr.alert-row")).toHaveCount(1);
  await expect(page.locator(`tr.alert-row[data-pid="${pid}"]`)).toBeVisible();
  await expect(page.getByTestId("total")).toHaveText("1");
  await shot(page, "4-alerts-filtered");
  await page.getByTestId("filter-q").fill(`not-${marker}`);
  await page.getByRole("button", { name: "Apply" }).click();
  await expect(page.getByTestId("total")).toHaveText("0");
  await expect(page.locator("tr.alert-row")).toHaveCount(0);

  await page.getByRole("button", { name: "Sign out" }).click();
  await expect(page.getByTestId("notice")).toContainText("Signed out");
  expect((await page.request.get(`${origin}/api/alerts`)).status()).toBe(401);
  await page.reload();
  await expect(page.getByTestId("notice")).toContainText("Not signed in");
  await shot(page, "5-signed-out");
});

test("an expired sign-in link is refused", async ({ page }) => {
  const link = loginLink();
  // NB: time has to pass for a link to expire; the collector under test gives links a short TTL.
  await page.waitForTimeout((linkTtlSecs + 1) * 1000);
  const response = await page.goto(link);
  expect(response?.status()).toBe(403);
  await expect(page.locator("h1")).toHaveText("Sign-in refused");
  expect((await page.request.get(`${new URL(link).origin}/api/session`)).status()).toBe(401);
  await shot(page, "6-expired-link");
});
