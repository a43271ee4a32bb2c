// End-to-end: a person adds Sonoff OTA in Home Assistant's real frontend.
// Run through scripts/e2e (it starts scripts/develop first), or by hand
// against a running demo:
//
//   HA_URL=http://127.0.0.1:8123 node e2e/flash.spec.mjs
//
// Settings (environment): HA_URL (only http://127.0.0.1:PORT is accepted),
// HA_USERNAME / HA_PASSWORD (scripts/develop's dev / sonoff-ota-dev),
// CHROMIUM (default /usr/bin/chromium), SCREENSHOT_DIR (default
// docs/screenshots), E2E_DEBUG=1 for stack traces, DIY_PORT (the virtual DIY
// Sonoff's REST port from the demo's banner; scripts/e2e passes it).
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
  callWS,
  chooseMenuOption,
  confirmHttpConfigTrial,
  dialogWith,
  expectField,
  expectNoText,
  expectText,
  field,
  fillField,
  flowDialog,
  login,
  openDevicesAndServices,
  openIntegrationFlow,
  openPath,
  setSwitch,
  submit,
  templatePattern,
  toggleField,
  waitForStates,
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
// The demo's devices (scripts/develop.py) and what they become in Tasmota.
const SETUP_DEVICEID = '10000b77c1';
const SETUP_MAC = '5CCF7F0B77C1'; // its station MAC (scripts/develop.py), Tasmota's spelling
const DIY_DEVICEID = '1000e4c17c';
const DIY_DEVICE_NAME = `Sonoff ${DIY_DEVICEID}`;
const SETUP_MODE_OPTION = text(EN.config.step.path.menu_options.setup_mode);
const DIY_OPTION = text(EN.config.step.path.menu_options.diy_manual);
const SETUP_MODE_TITLE = text(EN.config.step.setup_mode.title, 'Setup mode: where the device calls back');
const CALLBACK_HOST_LABEL = text(EN.config.step.setup_mode.data.callback_host);
const FIRMWARE_SECTION = text(EN.config.step.setup_mode.sections.firmware.name, 'Firmware (optional)');
const TASMOTA_VERSION_LABEL = text(EN.config.step.setup_mode.sections.firmware.data.tasmota_version);
const FIRMWARE_FILE_LABEL = text(EN.config.step.setup_mode.sections.firmware.data.firmware_file);
const DIY_MANUAL_TITLE = text(EN.config.step.diy_manual.title, "DIY mode: the device's address");
const HOST_LABEL = text(EN.config.step.diy_manual.data.host);
const PORT_LABEL = text(EN.config.step.diy_manual.data.port);
const FLASH_NOW_LABEL = text(EN.config.step.diy_confirm.data.flash_now);
const SETUP_PROGRESS = [
  'provisioning', 'wait_dispatch', 'cloud_session', 'upgrading', 'wait_finalstage', 'finalstage',
  'tasmota_ap', 'configuring', 'wait_discovery',
].map((key) => templatePattern(text(EN.config.progress[key])));
const SETUP_DONE = fill(text(EN.config.create_entry.default), { deviceid: SETUP_DEVICEID });
const SETUP_FINISH_TITLE = fill(text(EN.config.step.finish.title), { deviceid: SETUP_DEVICEID });
const DIY_CONFIRM_TITLE = fill(text(EN.config.step.diy_confirm.title), { device_type: 'diy_plug', deviceid: DIY_DEVICEID });
const DIY_ADDED = fill(text(EN.config.abort.device_added), { deviceid: DIY_DEVICEID });
const FIRMWARE_NAME = text(EN.entity.update.firmware.name, 'Firmware');
const TASMOTA_FIRMWARE_NAME = text(EN.entity.update.tasmota_firmware.name, 'Tasmota firmware');
// The finish step's "upgrade to the full build now" toggle, where the flow has one
// (its label from en.json once translated; HA shows the raw field name otherwise).
const FINISH_UPGRADE_LABEL = EN.config.step.finish.data?.upgrade ?? 'upgrade';
// The eWeLink Firmware entity's release notes (update.py: _NO_WAY_BACK, _SETUP_MODE).
const FIRMWARE_NOTES = /no way back to eWeLink/;
// The Tasmota firmware entity's release notes (update.py: _TASMOTA_NOTES).
const TASMOTA_NOTES = /with Tasmota's own over-the-air update/;
// scripts/develop.py: the latest-release stand-in's number, the virtual Tasmota's number.
const TASMOTA_RELEASE = '14.4.1';
const LITE_LABEL = `${TASMOTA_RELEASE} (lite)`;
const FULL_LABEL = `${TASMOTA_RELEASE} (tasmota)`;
const TOO_LONG_SSID = 'x'.repeat(33); // 33 bytes: one more than 802.11 allows
const HOME_SSID = 'Demo home 2.4GHz';
const HOME_WIFI_PASSWORD = 'demo-wifi-pass'; // a demo value, never a real secret

/**
 * `template` with the given placeholders filled in, as a RegExp that lets the
 * other {placeholders} be anything (e.g. the Tasmota device's name).
 */
function fill(template, values) {
  const known = template.replace(/\{([a-z_]+)\}/g, (all, key) => (key in values ? values[key] : all));
  return templatePattern(known);
}

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
  {
    name: 'setup mode: the callback address defaults to 127.0.0.1',
    run: async ({ page, state, screenshot }) => {
      await chooseMenuOption(state.flow, SETUP_MODE_OPTION);
      state.flow = flowDialog(page, SETUP_MODE_TITLE);
      await expectText(state.flow, SETUP_MODE_TITLE);
      await expectText(state.flow, CALLBACK_HOST_LABEL, { exact: false });
      // The dropdown keeps its value in an <input> inside its shadow root
      // (CSS locators pierce open shadow roots).
      const values = await state.flow.evaluate((host) => {
        const found = [];
        const walk = (root) => {
          for (const el of root.querySelectorAll('*')) {
            if (typeof el.value === 'string') found.push(el.value);
            if (el.shadowRoot) walk(el.shadowRoot);
          }
        };
        walk(host);
        return found;
      });
      if (!values.includes('127.0.0.1')) throw new Error('the callback address field does not show 127.0.0.1 (the demo YAML sets it)');
      await screenshot('setup-mode-address');
    },
  },
  {
    name: 'setup mode: the collapsed firmware section offers a release, a URL or a file',
    run: async ({ state, screenshot }) => {
      await expectText(state.flow, FIRMWARE_SECTION);
      await state.flow.getByText(FIRMWARE_SECTION, { exact: true }).first().click();
      await expectText(state.flow, TASMOTA_VERSION_LABEL, { exact: false });
      await expectText(state.flow, FIRMWARE_FILE_LABEL, { exact: false });
      await screenshot('setup-mode-firmware');
      // left empty: the newest Tasmota lite that fits is flashed
    },
  },
  {
    name: 'setup mode: the flash runs through its progress steps',
    // the progress may be quick: the next step also accepts the finish form directly
    run: async ({ page, state, screenshot }) => {
      await submit(state.flow);
      // The virtual device needs well under a second: catch whichever stage
      // is on screen first, then wait for the end.
      const progress = page.getByText(new RegExp(SETUP_PROGRESS.map((re) => re.source).join('|'))).first();
      const broken = page.getByText('Invalid flow specified', { exact: true }).first();
      const finished = page.getByText(SETUP_FINISH_TITLE).first();
      const first = await Promise.race([
        progress.waitFor({ state: 'visible', timeout: 30_000 }).then(() => 'progress'),
        finished.waitFor({ state: 'visible', timeout: 30_000 }).then(() => 'finished'),
        broken.waitFor({ state: 'visible', timeout: 30_000 }).then(() => 'error'),
      ]);
      if (first === 'error') {
        throw new Error('no progress step was shown: the dialog went straight to "Invalid flow specified" (see the next step)');
      }
      await screenshot('setup-mode-progress');
    },
  },
  {
    name: 'setup mode: the flow ends with the device in Home Assistant',
    run: async ({ page, state, screenshot }) => {
      const finishTitle = page.getByText(SETUP_FINISH_TITLE).first();
      const error = page.getByText(/Invalid flow specified|Unknown error|Error/).first();
      const shown = await Promise.race([
        finishTitle.waitFor({ state: 'visible', timeout: 60_000 }).then(() => 'finish'),
        error.waitFor({ state: 'visible', timeout: 60_000 }).then(() => 'error'),
      ]);
      if (shown === 'finish') {
        const finish = dialogWith(page, SETUP_FINISH_TITLE);
        await finish.getByRole('button', { name: 'Submit', exact: true }).last().waitFor({ state: 'visible' });
        // Upgrade later, from the dashboard (the path the steps below show).
        // HA renders the boolean as a switch whose accessible name is not its label: when
        // the label is shown, the dialog's one switch is the upgrade toggle.
        if (await finish.getByText(FINISH_UPGRADE_LABEL, { exact: true }).count()) {
          const named = toggleField(finish, FINISH_UPGRADE_LABEL);
          const toggle = (await named.count()) ? named : finish.getByRole('switch').first();
          await toggle.waitFor({ state: 'visible' });
          if (await toggle.isChecked()) await finish.getByText(FINISH_UPGRADE_LABEL, { exact: true }).first().click();
          if (await toggle.isChecked()) await toggle.click({ force: true, timeout: 5_000 });
          if (await toggle.isChecked()) throw new Error('the "upgrade to full Tasmota now" switch did not turn off');
        }
        await screenshot('setup-mode-finish');
        await submit(finish);
      }
      const done = page.getByText(SETUP_DONE).first();
      const first = await Promise.race([
        done.waitFor({ state: 'visible', timeout: 60_000 }).then(() => 'done'),
        error.waitFor({ state: 'visible', timeout: 60_000 }).then(() => 'error'),
      ]);
      if (first === 'error' && !(await done.isVisible())) {
        const shot = await screenshot('setup-mode-error');
        const entries = await callWS(page, { type: 'config_entries/get', domain: 'sonoff_ota' });
        const message = (await dialogWith(page, /Invalid flow specified/).innerText().catch(() => '')).trim();
        await page.getByRole('button', { name: 'OK', exact: true }).last().click().catch(() => {});
        await expectNoText(page, /Invalid flow specified/).catch(() => {});
        throw new Error(
          `the setup-mode flow dialog shows ${JSON.stringify(message.replace(/\s+/g, ' '))} instead of ` +
            `the success text (screenshot ${shot}); Sonoff OTA config entries on the server: ${entries.length}. ` +
            'INTEGRATION BUG: the flow finished server-side while the frontend still fetched its progress step.',
        );
      }
      await screenshot('setup-mode-done');
      state.setupDevicePath = (await done.textContent()).match(/\/config\/devices\/device\/\w+/)?.[0];
      const dialog = dialogWith(page, SETUP_DONE);
      await dialog.getByRole('button', { name: /^(Finish|OK|Close)$/ }).first().click();
      await expectNoText(page, SETUP_DONE);
    },
  },
  {
    name: 'Add integration again: the saved Wi-Fi skips to the menu; DIY mode',
    run: async ({ page, state }) => {
      await openDevicesAndServices(page);
      state.flow = await openIntegrationFlow(page, { name: INTEGRATION_NAME, firstStepTitle: PATH_STEP_TITLE });
      await chooseMenuOption(state.flow, DIY_OPTION);
      state.flow = flowDialog(page, DIY_MANUAL_TITLE);
      await expectText(state.flow, DIY_MANUAL_TITLE);
    },
  },
  {
    name: "DIY mode: enter the device's address, see the confirmation",
    run: async ({ page, state, settings, screenshot }) => {
      if (!settings.diyPort) throw new Error('DIY_PORT is not set (the DIY Sonoff port from the demo banner)');
      await fillField(state.flow, HOST_LABEL, '127.0.0.1');
      const port = await expectField(state.flow, PORT_LABEL);
      await port.fill(String(settings.diyPort));
      await submit(state.flow);
      state.flow = flowDialog(page, DIY_CONFIRM_TITLE);
      await expectText(state.flow, DIY_CONFIRM_TITLE);
      await setSwitch(state.flow, FLASH_NOW_LABEL, false);
      await screenshot('diy-confirm-flash-later');
    },
  },
  {
    name: 'DIY mode: "Flash it now" off adds the device only',
    run: async ({ page, state }) => {
      await submit(state.flow);
      const dialog = dialogWith(page, DIY_ADDED);
      await expectText(dialog, DIY_ADDED);
      await dialog.getByRole('button', { name: /^(Finish|OK|Close)$/ }).first().click();
      await expectNoText(page, DIY_ADDED);
    },
  },
  {
    name: 'the DIY device has a Firmware update entity',
    run: async ({ page, state, screenshot }) => {
      // Its eWeLink Firmware entity (not the setup-mode device's "Tasmota firmware" one).
      const uniqueId = `${DIY_DEVICEID}_firmware`;
      const entry = await ourEntity(page, uniqueId, "the DIY device's Firmware entity");
      state.update = await waitForStates(
        page,
        (states) => states.find((s) => s.entity_id === entry.entity_id && s.state === 'on'),
        { what: `${entry.entity_id} to offer Tasmota` },
      );
      await openPath(page, '/config/integrations/integration/sonoff_ota');
      await page.getByText(DIY_DEVICE_NAME, { exact: false }).first().click();
      await page.waitForURL((url) => url.pathname.startsWith('/config/devices/device/'));
      await page.getByText(FIRMWARE_NAME, { exact: true }).first().click();
      state.moreInfo = dialogWith(page, /Update available|Install/);
      await state.moreInfo.getByRole('button', { name: /^(Install|Update)$/ }).first().waitFor({ state: 'visible' });
      // The release notes arrive (they used to stay an endless spinner).
      await expectText(state.moreInfo, FIRMWARE_NOTES);
      await expectNoSpinner(state.moreInfo, 'the Firmware dialog');
      await screenshot('firmware-update-entity');
    },
  },
  {
    name: 'Install flashes the DIY device from the dashboard',
    run: async ({ page, state, screenshot }) => {
      const { entity_id: updateId } = state.update;
      await state.moreInfo.getByRole('button', { name: /^(Install|Update)$/ }).first().click();
      const confirm = page.getByRole('button', { name: /^(Install|Confirm|Yes)$/ });
      void confirm;
      await waitForStates(page, (states) => {
        const s = states.find((x) => x.entity_id === updateId);
        return !s || s.attributes.in_progress || s.state === 'unavailable';
      }, { what: `${updateId} to start installing` });
      await screenshot('firmware-installing');
      await waitForStates(page, (states) => {
        const s = states.find((x) => x.entity_id === updateId);
        return !s || s.state === 'unavailable' || (!s.attributes.in_progress && s.state === 'off');
      }, { timeout: 90_000, what: `${updateId} to finish installing` });
    },
  },
  {
    name: 'both flashed devices are switches in the Tasmota integration',
    run: async ({ page, state, screenshot }) => {
      state.switches = await waitForStates(page, (states) => {
        const found = states.filter((s) => /^switch\.sonoff_/.test(s.entity_id) && ['on', 'off'].includes(s.state));
        return found.length >= 2 ? found : null;
      }, { what: 'two switch.sonoff_* entities' });
      await openPath(page, '/config/integrations/integration/tasmota');
      for (const s of state.switches) await expectText(page, s.attributes.friendly_name, { exact: false });
      await screenshot('tasmota-devices');
    },
  },
  {
    name: 'toggle a Tasmota switch in the UI; the relay answers over MQTT',
    run: async ({ page, state, screenshot }) => {
      const target = state.switches.find((s) => s.entity_id.endsWith('e4c17c')) ?? state.switches[0];
      const before = target.state;
      const name = target.attributes.friendly_name;
      await page.getByText(name, { exact: true }).first().click();
      await page.waitForURL((url) => url.pathname.startsWith('/config/devices/device/'));
      // HA's toggle (ha-switch) draws its own track over the native input: click it.
      const toggle = page.locator('ha-switch').first();
      await toggle.waitFor({ state: 'visible' });
      await toggle.click();
      const want = before === 'on' ? 'off' : 'on';
      await waitForStates(page, (states) => states.find((s) => s.entity_id === target.entity_id && s.state === want), {
        what: `${target.entity_id} to turn ${want} (the virtual relay's MQTT state)`,
      });
      await screenshot('tasmota-switch-toggled');
    },
  },
  {
    name: "the setup-mode device's Tasmota firmware entity offers the full build",
    run: async ({ page, state, screenshot }) => {
      const uniqueId = `${SETUP_MAC}_tasmota_firmware`;
      const entry = await ourEntity(page, uniqueId, 'the Tasmota firmware entity of the setup-mode device');
      state.upgradeId = entry.entity_id;
      await waitForStates(page, (states) => states.find((s) => s.entity_id === entry.entity_id && s.state === 'on' &&
        s.attributes.installed_version === LITE_LABEL && s.attributes.latest_version === FULL_LABEL), {
        timeout: 60_000,
        what: `${entry.entity_id} to offer ${FULL_LABEL} over ${LITE_LABEL}`,
      });
      await openPath(page, `/config/devices/device/${entry.device_id}`);
      await page.getByText(TASMOTA_FIRMWARE_NAME, { exact: true }).first().click();
      state.moreInfo = dialogWith(page, new RegExp(TASMOTA_FIRMWARE_NAME));
      await expectText(state.moreInfo, TASMOTA_NOTES);
      await expectText(state.moreInfo, LITE_LABEL);
      await expectText(state.moreInfo, FULL_LABEL);
      await state.moreInfo.getByRole('button', { name: /^(Install|Update)$/ }).first().waitFor({ state: 'visible' });
      await expectNoSpinner(state.moreInfo, 'the Tasmota firmware dialog');
      await screenshot('tasmota-firmware-entity');
    },
  },
  {
    name: 'Update upgrades it to the full build over MQTT; the dialog shows the progress',
    run: async ({ page, state, screenshot }) => {
      const id = state.upgradeId;
      await state.moreInfo.getByRole('button', { name: /^(Install|Update)$/ }).first().click();
      // The demo's full image does not fit beside the lite one: Tasmota flashes
      // tasmota-minimal first and fetches the full build from there (the demo paces
      // that download over a few seconds): catch it on screen.
      state.upgradeStages = new Set();
      await waitForStates(page, (states) => {
        const s = states.find((x) => x.entity_id === id);
        if (s?.attributes.upgrade_stage) state.upgradeStages.add(s.attributes.upgrade_stage);
        if (s?.attributes.upgrade_stage === 'failed') throw new Error(`the upgrade failed: ${s.attributes.upgrade_error}`);
        return s?.attributes.in_progress && s.attributes.upgrade_stage === 'minimal';
      }, { timeout: 120_000, what: `${id} to reach the tasmota-minimal step` });
      await expectText(state.moreInfo, /Installing/, { exact: false });
      await state.moreInfo.getByRole('progressbar').first().waitFor({ state: 'visible' });
      await screenshot('tasmota-upgrade-progress');
    },
  },
  {
    name: 'the entity shows the full build once Tasmota is back',
    run: async ({ page, state, screenshot }) => {
      const id = state.upgradeId;
      const done = await waitForStates(page, (states) => {
        const s = states.find((x) => x.entity_id === id);
        if (s?.attributes.upgrade_stage) state.upgradeStages.add(s.attributes.upgrade_stage);
        if (s?.attributes.upgrade_stage === 'failed') throw new Error(`the upgrade failed: ${s.attributes.upgrade_error}`);
        return s && !s.attributes.in_progress && s.state === 'off' && s.attributes.installed_version === FULL_LABEL ? s : null;
      }, { timeout: 180_000, what: `${id} to report ${FULL_LABEL}` });
      if (done.attributes.upgrade_stage !== 'done') throw new Error(`the upgrade ended in stage ${done.attributes.upgrade_stage}`);
      // The demo's full image does not fit beside the lite one: Tasmota went through -minimal.
      if (!state.upgradeStages.has('minimal')) {
        throw new Error(`the upgrade never showed the tasmota-minimal step (stages seen: ${[...state.upgradeStages].join(', ')})`);
      }
      await expectText(state.moreInfo, FULL_LABEL);
      await expectNoText(state.moreInfo, LITE_LABEL);
      await screenshot('tasmota-upgraded');
    },
  },
];

/** Our entity registry entry with `uniqueId` (waits for it to be registered). */
async function ourEntity(page, uniqueId, what, { timeout = 30_000 } = {}) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const entry = (await callWS(page, { type: 'config/entity_registry/list' })).find(
      (e) => e.platform === 'sonoff_ota' && e.unique_id === uniqueId,
    );
    if (entry) return entry;
    if (Date.now() > deadline) throw new Error(`no sonoff_ota entity with unique id ${uniqueId} (${what}) within ${timeout} ms`);
    await page.waitForTimeout(250);
  }
}

/** Fail when a loading spinner stays in `scope` (e.g. release notes that never arrive). */
async function expectNoSpinner(scope, what, { timeout = 15_000 } = {}) {
  const spinner = scope.locator('ha-spinner, ha-circular-progress, mwc-circular-progress');
  const deadline = Date.now() + timeout;
  for (;;) {
    let shown = 0;
    for (const one of await spinner.all()) if (await one.isVisible()) shown += 1;
    if (!shown) return;
    if (Date.now() > deadline) throw new Error(`${what} still shows a loading spinner after ${timeout} ms`);
    await scope.page().waitForTimeout(250);
  }
}

function settingsFromEnv(env) {
  const baseUrl = (env.HA_URL ?? 'http://127.0.0.1:8123').replace(/\/+$/, '');
  assertLoopback(baseUrl);
  return {
    baseUrl,
    username: env.HA_USERNAME ?? 'dev',
    password: env.HA_PASSWORD ?? 'sonoff-ota-dev',
    diyPort: env.DIY_PORT ? Number(env.DIY_PORT) : undefined,
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
