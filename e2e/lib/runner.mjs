// Run a list of named steps against one browser page. Each step is
// { name, run: async (ctx) => {...} }; `ctx` carries the page, the settings
// and anything earlier steps stored on it (ctx.state). The first failing step
// stops the run: its error, a screenshot of the moment and the page's own
// errors are printed, and the process exits non-zero. A step marked
// `continueAfterFailure: true` (its failure leaves the demo usable, e.g. a UI
// glitch after the server side finished) is reported the same way, but the
// later steps still run so one run shows every problem; the run still fails
// and publishes no screenshots.
import { launch } from './browser.mjs';
import { Screenshots } from './screenshots.mjs';

/**
 * @param {Array<{name: string, run: (ctx: object) => Promise<void>}>} steps
 * @param {{baseUrl: string, username: string, password: string, chromium: string,
 *          screenshotDir: string, stagingDir: string}} settings
 */
export async function runSteps(steps, settings) {
  const shots = new Screenshots(settings.screenshotDir, settings.stagingDir);
  const session = await launch({ executablePath: settings.chromium });
  const { page, blocked } = session;
  const pageErrors = [];
  page.on('pageerror', (err) => pageErrors.push(err?.message || String(err)));
  const ctx = { page, settings, state: {}, screenshot: (name) => shots.take(page, name) };
  const failures = [];
  try {
    for (const [i, step] of steps.entries()) {
      const started = Date.now();
      process.stdout.write(`[e2e] ${i + 1}/${steps.length} ${step.name} ... `);
      try {
        await step.run(ctx);
      } catch (err) {
        process.stdout.write('FAILED\n');
        failures.push({ step, err, url: page.url(), shot: await shots.failure(page, step.name) });
        console.error(`[e2e]   ${err?.message ?? err}`);
        if (step.continueAfterFailure) {
          console.error('[e2e]   (continuing with the next steps; the run fails at the end)');
          continue;
        }
        break;
      }
      process.stdout.write(`ok (${((Date.now() - started) / 1000).toFixed(1)} s)\n`);
    }
  } finally {
    await session.close();
  }
  if (blocked.length) {
    console.log(`[e2e] refused ${blocked.length} request(s) that were not for 127.0.0.1, e.g. ${blocked[0]}`);
  }
  if (failures.length) {
    for (const failed of failures) {
      console.error(`\n[e2e] FAILED at step "${failed.step.name}": ${failed.err?.message ?? failed.err}`);
      console.error(`[e2e] page URL was ${failed.url}; screenshot: ${failed.shot}`);
      if (process.env.E2E_DEBUG) console.error(failed.err?.stack);
    }
    if (pageErrors.length) console.error(`[e2e] the page reported errors: ${pageErrors.slice(0, 5).join(' | ')}`);
    return 1;
  }
  const published = shots.publish();
  console.log(`[e2e] all ${steps.length} steps passed; ${published.length} screenshots in ${settings.screenshotDir}:`);
  for (const file of published) console.log(`[e2e]   ${file}`);
  return 0;
}
