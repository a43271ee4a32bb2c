// Launch Debian's Chromium (never a Playwright-downloaded browser) and keep
// every request on 127.0.0.1: anything else is aborted and recorded, so a
// frontend that reaches for the internet cannot slow or leak the run.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

export const DEFAULT_CHROMIUM = '/usr/bin/chromium';

// Flags known to work on the project machines (no GPU, no sandbox as root,
// no background traffic to Google services).
const CHROMIUM_FLAGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

/** Throw unless `url` is an http(s) URL on the literal 127.0.0.1. */
export function assertLoopback(url) {
  const parsed = new URL(url);
  if (parsed.hostname !== '127.0.0.1' || !/^https?:$/.test(parsed.protocol)) {
    throw new Error(`refusing to browse ${url}: only http://127.0.0.1 is allowed`);
  }
  return parsed;
}

/**
 * Start Chromium headless with a fresh profile; returns { browser, context,
 * page, blocked, close }. `blocked` lists URLs that were refused because they
 * were not on 127.0.0.1 (HA's frontend asks for brand icons on the internet).
 */
export async function launch({ executablePath = DEFAULT_CHROMIUM, viewport = { width: 1280, height: 860 } } = {}) {
  const userDataDir = mkdtempSync(join(tmpdir(), 'sonoff-ota-e2e-chromium-'));
  let context;
  try {
    context = await chromium.launchPersistentContext(userDataDir, {
      executablePath,
      headless: true,
      args: CHROMIUM_FLAGS,
      viewport,
      locale: 'en-US',
      timezoneId: 'UTC',
      colorScheme: 'light',
      reducedMotion: 'reduce',
    });
  } catch (err) {
    rmSync(userDataDir, { recursive: true, force: true });
    throw new Error(`could not start Chromium at ${executablePath}: ${err.message}`);
  }
  const blocked = [];
  await context.route('**/*', (route) => {
    const url = route.request().url();
    let host = '';
    try {
      host = new URL(url).hostname;
    } catch {
      // data:, blob: and the like never reach the network.
    }
    if (host === '127.0.0.1' || host === '') return route.continue();
    blocked.push(url);
    return route.abort('blockedbyclient');
  });
  const page = context.pages()[0] ?? (await context.newPage());
  const close = async () => {
    await context.close().catch(() => {});
    rmSync(userDataDir, { recursive: true, force: true });
  };
  return { browser: context.browser(), context, page, blocked, close };
}
