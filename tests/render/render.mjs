// Renders Adaptive Cards in headless Chromium (Debian's /usr/bin/chromium, no browser
// download) with Microsoft's adaptivecards renderer, takes a PNG of each and clicks every
// button. Used by tests/test_cards.py:
//
//   node tests/render/render.mjs OUT_DIR < cards.json     # [{"name": ..., "card": {...}}, ...]
//
// prints {"<name>": {text, buttons, links, bold, problems, executed, png}, ...} as JSON.
// teams-light-hostconfig.json is Microsoft's Teams light host config (from the
// adaptivecards-designer package, MIT).
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { chromium } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
const outDir = process.argv[2];
const cards = JSON.parse(readFileSync(0, "utf8"));
const hostConfig = JSON.parse(readFileSync(join(here, "teams-light-hostconfig.json"), "utf8"));

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM_PATH || "/usr/bin/chromium",
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
try {
  // A viewer in India: the last reply time must show in the viewer's time zone.
  const context = await browser.newContext({
    locale: "en-US", timezoneId: "Asia/Kolkata", viewport: { width: 800, height: 1000 }, deviceScaleFactor: 1,
  });
  const page = await context.newPage();
  const failures = [];
  page.on("pageerror", (e) => failures.push(String(e)));
  page.on("requestfailed", (r) => failures.push(`request failed: ${r.url()}`));
  await page.goto(pathToFileURL(join(here, "card.html")).href);
  const results = {};
  for (const { name, card } of cards) {
    await page.mouse.move(0, 0); // no hover or focus left over from the previous card's clicks
    const seen = await page.evaluate(([c, h]) => {
      document.activeElement?.blur();
      return window.renderCard(c, h);
    }, [card, hostConfig]);
    const png = join(outDir, `${name}.png`);
    await page.locator("#card").screenshot({ path: png });
    for (const button of await page.locator("#card button").all()) await button.click();
    seen.executed = await page.evaluate(() => window.executedActions);
    seen.png = png;
    results[name] = seen;
  }
  if (failures.length) throw new Error(failures.join("\n"));
  process.stdout.write(JSON.stringify(results));
} finally {
  await browser.close();
}
