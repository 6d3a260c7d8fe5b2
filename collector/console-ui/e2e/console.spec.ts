// The console in a real browser against a real collector and sensor: sign in with a link from
// `vigil console login`, see the alert of a real exec appear live, open it and check its
// process tree, page and filter among 100 000 seeded alerts (timed: reported, not asserted),
// see the fleet's health and the rules' hits, sign out; an expired link and a request without
// a session are refused. Screenshots of each page go to VIGIL_SCREENSHOT_DIR
// (target/console-screenshots).

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
const RULE_ID = "0c7d7f0e-52a4-4b8e-a3f5-6f0a2a51c1d2";
const seededAlerts = Number(need("VIGIL_SEEDED_ALERTS"));
const seededRule = need("VIGIL_SEEDED_RULE");
const quietSensor = need("VIGIL_QUIET_SENSOR");
const quietDrops = need("VIGIL_QUIET_DROPS");
const sensorHost = need("VIGIL_SENSOR_HOST");
const timings: string[] = [];

function timed(what: string, started: number): void {
  timings.push(`${what}: ${Date.now() - started} ms`);
}

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

  // First paint of the alerts table with 100 000 stored: from opening the link to the first
  // page of rows.
  const opened = Date.now();
  await page.goto(link);
  await expect(page.locator("tr.alert-row")).toHaveCount(50, { timeout: 30_000 });
  timed("alerts table first paint (sign-in link to 50 rows)", opened);
  await expect(page).toHaveURL(`${origin}/`);
  await expect(page.locator("#operator")).toHaveText("signed in as e2e-operator");
  expect(Number(await page.getByTestId("total").textContent())).toBeGreaterThanOrEqual(seededAlerts);
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
  await expect(page.locator("tr.alert-row")).toHaveCount(50, { timeout: 30_000 });
  const firstPage = await page.locator("tr.alert-row").evaluateAll((rows) => rows.map((r) => Number(r.getAttribute("data-alert-id"))));
  const paging = Date.now();
  await page.getByTestId("older").click();
  await expect(page.locator("tr.alert-row")).toHaveCount(firstPage.length + 50, { timeout: 30_000 });
  timed("next page (Older: 50 more rows)", paging);
  const twoPages = await page.locator("tr.alert-row").evaluateAll((rows) => rows.map((r) => Number(r.getAttribute("data-alert-id"))));
  // The older page goes on below the first, still newest first, nothing repeated.
  expect(twoPages.slice(0, firstPage.length)).toEqual(firstPage);
  expect(twoPages.every((id, i) => i === 0 || id < twoPages[i - 1])).toBe(true);
  await shot(page, "4-alerts-older");

  await page.getByTestId("filter-q").fill(marker);
  const filtering = Date.now();
  await page.getByRole("button", { name: "Apply" }).click();
  await expect(page.locator("tr.alert-row")).toHaveCount(1, { timeout: 30_000 });
  await expect(page.getByTestId("total")).toHaveText("1");
  timed(`free-text filter over ${seededAlerts}+ alerts`, filtering);
  await expect(page.locator(`tr.alert-row[data-pid="${pid}"]`)).toBeVisible();
  await shot(page, "5-alerts-filtered");
  const byRule = Date.now();
  await page.getByTestId("filter-q").fill("");
  await page.getByTestId("filter-rule").fill(seededRule);
  await page.getByRole("button", { name: "Apply" }).click();
  await expect(page.getByTestId("total")).toHaveText(String(seededAlerts), { timeout: 30_000 });
  timed("rule filter (total and first page)", byRule);
  await page.getByTestId("filter-q").fill(`not-${marker}`);
  await page.getByRole("button", { name: "Apply" }).click();
  await expect(page.getByTestId("total")).toHaveText("0");
  await expect(page.locator("tr.alert-row")).toHaveCount(0);

  // Sensors: the real sensor's heartbeat (its certificate name, this host); the seeded one that
  // reported drops and then fell silent, both highlighted.
  await page.getByRole("link", { name: "Sensors" }).click();
  const live = page.locator('tr.sensor-row[data-sensor="e2e-sensor"]');
  await expect(live).toBeVisible();
  await expect(live).toContainText(sensorHost);
  await expect(live.getByTestId("state")).toHaveText("ok");
  const quiet = page.locator(`tr.sensor-row[data-sensor="${quietSensor}"]`);
  // The collector calls it silent 3 heartbeats (3 s) after it started watching; the page
  // refreshes itself.
  await expect(quiet.getByTestId("state")).toHaveText("SILENT", { timeout: 20_000 });
  await expect(quiet).toHaveClass(/silent/);
  await expect(quiet).toHaveClass(/drops/);
  await expect(quiet.locator("td.bad").first()).toHaveText(quietDrops);
  await expect(page.getByTestId("fleet-summary")).toContainText("1 silent");
  await shot(page, "6-sensors");

  // Rules: the pushed central set, what the sensor runs, and hits per rule: the real exec's
  // rule fired once, the seeded rule 100 000 times, and the collector's own health rules.
  await page.getByRole("link", { name: "Rules" }).click();
  await expect(page.getByTestId("central")).toContainText("Version 1: 1 rules in central.yml");
  await expect(page.locator('[data-testid="central-rules"] tr[data-rule-id="vigil-e2e-central"]')).toContainText("Vigil e2e - central rule");
  await expect(page.locator(`tr.hit-row[data-rule-id="${RULE_ID}"]`)).toContainText(RULE_TITLE);
  await expect(page.locator(`tr.hit-row[data-rule-id="${RULE_ID}"]`).getByTestId("hit-count")).toHaveText("1");
  await expect(page.locator(`tr.hit-row[data-rule-id="${seededRule}"]`).getByTestId("hit-count")).toHaveText(String(seededAlerts));
  await expect(page.locator('tr.hit-row[data-rule-id="vigil-sensor-kernel-drops"]').getByTestId("hit-count")).toHaveText("1");
  await expect(page.locator('tr.hit-row[data-rule-id="vigil-sensor-silent"]').getByTestId("hit-count")).toHaveText("1");
  // The sensor fetched the central set; it says which version it runs on its next fetch.
  await expect(async () => {
    await page.reload();
    await expect(page.locator('[data-testid="sensor-rules"] tr[data-sensor="e2e-sensor"] td').nth(4)).toHaveText("1", { timeout: 1000 });
  }).toPass({ timeout: 20_000 });
  await shot(page, "7-rules");
  // A rule's row opens the alerts table filtered to that rule.
  await page.locator(`tr.hit-row[data-rule-id="${RULE_ID}"]`).click();
  await expect(page.getByTestId("total")).toHaveText("1");
  await expect(page.locator(`tr.alert-row[data-pid="${pid}"]`)).toBeVisible();

  console.log(`\n==== console with ${seededAlerts} stored alerts (debug build, shared machine; reported, not a gate) ====`);
  for (const t of timings) console.log(`==== ${t}`);
  console.log("====\n");

  await page.getByRole("button", { name: "Sign out" }).click();
  await expect(page.getByTestId("notice")).toContainText("Signed out");
  for (const path of ["/api/alerts", "/api/sensors", "/api/rules"]) {
    expect((await page.request.get(`${origin}${path}`)).status()).toBe(401);
  }
  await page.reload();
  await expect(page.getByTestId("notice")).toContainText("Not signed in");
  await shot(page, "8-signed-out");
});

test("an expired sign-in link is refused", async ({ page }) => {
  const link = loginLink();
  // NB: time has to pass for a link to expire; the collector under test gives links a short TTL.
  await page.waitForTimeout((linkTtlSecs + 1) * 1000);
  const response = await page.goto(link);
  expect(response?.status()).toBe(403);
  await expect(page.locator("h1")).toHaveText("Sign-in refused");
  expect((await page.request.get(`${new URL(link).origin}/api/session`)).status()).toBe(401);
  await shot(page, "9-expired-link");
});
