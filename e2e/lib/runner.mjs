// Run a list of named steps against one browser page. Each step is
// { name, run: async (ctx) => {...} }; `ctx` carries the page, the settings
// and anything earlier steps stored on it (ctx.state). The first failing step
// stops the run: its error, a screenshot of the moment and the page's own
// errors are printed, and the process exits non-zero.
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
  let failed = null;
  try {
    for (const [i, step] of steps.entries()) {
      const started = Date.now();
      process.stdout.write(`[e2e] ${i + 1}/${steps.length} ${step.name} ... `);
      try {
        await step.run(ctx);
      } catch (err) {
        process.stdout.write('FAILED\n');
        failed = { step, err, url: page.url(), shot: await shots.failure(page, step.name) };
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
  if (failed) {
    console.error(`\n[e2e] FAILED at step "${failed.step.name}": ${failed.err?.message ?? failed.err}`);
    console.error(`[e2e] page URL was ${failed.url}; screenshot: ${failed.shot}`);
    if (pageErrors.length) console.error(`[e2e] the page reported errors: ${pageErrors.slice(0, 5).join(' | ')}`);
    if (process.env.E2E_DEBUG) console.error(failed.err?.stack);
    return 1;
  }
  const published = shots.publish();
  console.log(`[e2e] all ${steps.length} steps passed; ${published.length} screenshots in ${settings.screenshotDir}:`);
  for (const file of published) console.log(`[e2e]   ${file}`);
  return 0;
}
