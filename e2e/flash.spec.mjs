// End-to-end: a person adds Sonoff OTA in Home Assistant's real frontend.
// Run through scripts/e2e (it starts scripts/develop first), or by hand
// against a running demo:
//
//   HA_URL=http://127.0.0.1:8123 node e2e/flash.spec.mjs
//
// Settings (environment): HA_URL (only http://127.0.0.1:PORT is accepted),
// HA_USERNAME / HA_PASSWORD (scripts/develop's dev / sonoff-ota-dev),
// CHROMIUM (default /usr/bin/chromium), SCREENSHOT_DIR (default
// docs/screenshots), E2E_DEBUG=1 for stack traces.
//
// To extend: add steps to STEPS. A step is { name, run(ctx) }; ctx.page is
// the browser page, ctx.state carries what earlier steps found (e.g.
// ctx.state.flow, the open config flow dialog), ctx.screenshot(name) saves
// the next numbered picture. The helpers in lib/ha.mjs do the clicking.
import { readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { assertLoopback, DEFAULT_CHROMIUM } from './lib/browser.mjs';
import {
  confirmHttpConfigTrial,
  expectField,
  expectNoText,
  expectText,
  fillField,
  flowDialog,
  login,
  openDevicesAndServices,
  openIntegrationFlow,
  submit,
} from './lib/ha.mjs';
import { runSteps } from './lib/runner.mjs';

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '..');

// What our integration shows, read from its own English translation so the
// test follows wording changes and still proves HA rendered the translation
// (not the raw key).
const EN = JSON.parse(
  readFileSync(join(REPO, 'custom_components', 'sonoff_ota', 'translations', 'en.json'), 'utf8'),
);
const INTEGRATION_NAME = 'Sonoff OTA';
const WIFI_STEP_TITLE = text(EN.config.step.user.title, 'Your home Wi-Fi');
const SSID_LABEL = text(EN.config.step.user.data.ssid);
const WIFI_PASSWORD_LABEL = text(EN.config.step.user.data.wifi_password);
const INVALID_SSID_ERROR = text(EN.config.error.invalid_ssid, 'The network name must be 1 to 32 bytes long.');
const PATH_STEP_TITLE = text(EN.config.step.path.title);
const TOO_LONG_SSID = 'x'.repeat(33); // 33 bytes: one more than 802.11 allows
const HOME_SSID = 'Demo home 2.4GHz';
const HOME_WIFI_PASSWORD = 'demo-wifi-pass'; // a demo value, never a real secret

/** A translated string, checked to exist (and, if given, to be what the brief expects). */
function text(value, expected) {
  if (typeof value !== 'string' || !value) throw new Error('a string the test needs is missing from en.json');
  if (expected !== undefined && value !== expected) {
    throw new Error(`en.json says ${JSON.stringify(value)} where the test expects ${JSON.stringify(expected)}`);
  }
  return value;
}

export const STEPS = [
  {
    name: 'log in as the demo owner',
    run: async ({ page, settings, screenshot }) => {
      await login(page, {
        baseUrl: settings.baseUrl,
        username: settings.username,
        password: settings.password,
        onLoginPage: () => screenshot('login'),
      });
      await confirmHttpConfigTrial(page);
    },
  },
  {
    name: 'open Settings > Devices & services',
    run: async ({ page }) => {
      await openDevicesAndServices(page);
    },
  },
  {
    name: 'Add integration, search "Sonoff OTA", open it',
    run: async ({ page, state, screenshot }) => {
      state.flow = await openIntegrationFlow(page, {
        name: INTEGRATION_NAME,
        firstStepTitle: WIFI_STEP_TITLE,
        onSearch: () => screenshot('add-integration'),
      });
    },
  },
  {
    name: 'the first step asks for the home Wi-Fi',
    run: async ({ state, screenshot }) => {
      await expectText(state.flow, WIFI_STEP_TITLE);
      await expectField(state.flow, SSID_LABEL);
      await expectField(state.flow, WIFI_PASSWORD_LABEL);
      await screenshot('wifi-step');
    },
  },
  {
    name: 'a 33-byte SSID is refused with the translated error',
    run: async ({ page, state, screenshot }) => {
      await fillField(state.flow, SSID_LABEL, TOO_LONG_SSID);
      await submit(state.flow);
      state.flow = flowDialog(page, WIFI_STEP_TITLE);
      await expectText(state.flow, INVALID_SSID_ERROR);
      await screenshot('invalid-ssid');
    },
  },
  {
    name: 'a valid SSID and password are accepted',
    run: async ({ page, state, screenshot }) => {
      await fillField(state.flow, SSID_LABEL, HOME_SSID);
      await fillField(state.flow, WIFI_PASSWORD_LABEL, HOME_WIFI_PASSWORD);
      await submit(state.flow);
      // The Wi-Fi step is done: the flow moves on to choosing how the
      // device is reached. Later flash steps continue from this dialog.
      state.flow = flowDialog(page, PATH_STEP_TITLE);
      await expectText(state.flow, PATH_STEP_TITLE);
      await expectNoText(page, WIFI_STEP_TITLE);
      await expectNoText(page, INVALID_SSID_ERROR);
      await screenshot('choose-path');
    },
  },
];

function settingsFromEnv(env) {
  const baseUrl = (env.HA_URL ?? 'http://127.0.0.1:8123').replace(/\/+$/, '');
  assertLoopback(baseUrl);
  return {
    baseUrl,
    username: env.HA_USERNAME ?? 'dev',
    password: env.HA_PASSWORD ?? 'sonoff-ota-dev',
    chromium: env.CHROMIUM ?? DEFAULT_CHROMIUM,
    screenshotDir: resolve(env.SCREENSHOT_DIR ?? join(REPO, 'docs', 'screenshots')),
    stagingDir: resolve(env.SCREENSHOT_STAGING_DIR ?? join(REPO, 'screenshots-tmp', 'e2e')),
  };
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  let code;
  try {
    code = await runSteps(STEPS, settingsFromEnv(process.env));
  } catch (err) {
    console.error(`[e2e] FAILED before the first step: ${err?.message ?? err}`);
    code = 1;
  }
  process.exit(code);
}
