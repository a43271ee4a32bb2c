// Helpers that drive Home Assistant's real frontend the way a person does.
// HA's UI is built from web components with open shadow roots; Playwright's
// role/text locators pierce them, so controls are located by what a user
// reads (roles, accessible names, visible text). Two exceptions use HA's tag
// names: dialog scoping (DIALOG_HOSTS, see there) and callWS (the
// <home-assistant> root element holds the frontend's connection).
import { assertLoopback } from './browser.mjs';

export const DEFAULT_TIMEOUT_MS = 30_000;

/**
 * Wait until `text` (string or RegExp) is visible on the page or inside
 * `scope` (a Locator, e.g. a dialog). Returns the matching locator. A string
 * must match a whole text unless `exact: false`.
 */
export async function expectText(scopeOrPage, text, { timeout = DEFAULT_TIMEOUT_MS, exact = typeof text === 'string' } = {}) {
  const locator = scopeOrPage.getByText(text, { exact }).first();
  try {
    await locator.waitFor({ state: 'visible', timeout });
  } catch {
    throw new Error(`expected to see ${JSON.stringify(String(text))} within ${timeout} ms, but it did not appear`);
  }
  return locator;
}

/** Wait until `text` is gone (e.g. a dialog closed). */
export async function expectNoText(scopeOrPage, text, { timeout = DEFAULT_TIMEOUT_MS } = {}) {
  const locator = scopeOrPage.getByText(text, { exact: typeof text === 'string' }).first();
  try {
    await locator.waitFor({ state: 'hidden', timeout });
  } catch {
    throw new Error(`expected ${JSON.stringify(String(text))} to disappear within ${timeout} ms, but it is still shown`);
  }
}

/** Wait until HA's frontend is loaded: the sidebar's Settings entry is shown. */
export async function waitForFrontend(page, { timeout = 90_000 } = {}) {
  // includeHidden: a modal dialog shown at start-up hides the sidebar from
  // the accessibility tree, but the frontend is loaded all the same.
  const settings = sidebarLink(page, 'Settings', { includeHidden: true });
  try {
    await settings.waitFor({ state: 'visible', timeout });
  } catch {
    throw new Error(
      `HA's frontend did not finish loading within ${timeout} ms (still "Loading..."?). ` +
        'A failing websocket command (see the HA log, e.g. get_services and a missing Python package) stalls it.',
    );
  }
  await page.waitForLoadState('networkidle');
}

/** Run a websocket command as the logged-in user, through the frontend's own connection. */
export async function callWS(page, message) {
  return page.evaluate(async (msg) => {
    const root = document.querySelector('home-assistant');
    if (!root?.hass) throw new Error('the frontend has no hass connection yet');
    return root.hass.callWS(msg);
  }, message);
}

/**
 * HA >= 2026.x stages a changed HTTP server config (our 127.0.0.1 and port)
 * as a five-minute trial and shows "Confirm new HTTP server configuration";
 * unconfirmed, it reverts and restarts. Confirm it, as a user would, when
 * HA reports a pending trial. Returns true if there was one.
 */
export async function confirmHttpConfigTrial(page) {
  let config;
  try {
    config = await callWS(page, { type: 'http/config' });
  } catch (err) {
    if (/unknown_command|Unknown command/i.test(String(err?.message ?? err))) return false; // older HA
    throw err;
  }
  if (!config?.revert_at) return false;
  const title = 'Confirm new HTTP server configuration';
  const dialog = dialogWith(page, title);
  await expectText(dialog, title);
  await dialog.getByRole('button', { name: 'Confirm', exact: true }).click();
  await expectNoText(page, title);
  const after = await callWS(page, { type: 'http/config' });
  if (after?.revert_at) throw new Error('confirmed the HTTP server configuration, but HA still plans to revert it');
  return true;
}

/**
 * Log in through HA's login page. `onLoginPage(page)` runs once the filled
 * form is shown (for a screenshot). Leaves the page on the loaded frontend.
 */
export async function login(page, { baseUrl, username, password, onLoginPage }) {
  assertLoopback(baseUrl);
  await page.goto(baseUrl, { waitUntil: 'domcontentloaded' });
  await page.waitForURL((url) => url.pathname.startsWith('/auth/authorize'), { timeout: DEFAULT_TIMEOUT_MS });
  await fillField(page, 'Username', username);
  await fillField(page, 'Password', password);
  if (onLoginPage) await onLoginPage(page);
  await page.getByRole('button', { name: 'Log in', exact: true }).click();
  const error = page.getByText(/Invalid username or password|Unable to connect/i).first();
  const result = await Promise.race([
    page.waitForURL((url) => !url.pathname.startsWith('/auth/'), { timeout: DEFAULT_TIMEOUT_MS }).then(() => 'ok'),
    error.waitFor({ state: 'visible', timeout: DEFAULT_TIMEOUT_MS }).then(() => 'error'),
  ]);
  if (result === 'error') throw new Error(`login as ${username} failed: ${await error.textContent()}`);
  await waitForFrontend(page);
}

/**
 * A sidebar entry by its label. Its accessible name carries badge counts
 * ("3 Settings 3" with three repairs), so match the label between them.
 */
export function sidebarLink(page, label, { includeHidden = false } = {}) {
  return page
    .getByRole('link', { name: new RegExp(`^(\\S+ )?${escapeRegExp(label)}( \\d+)?$`), includeHidden })
    .first();
}

/** Click a sidebar entry (e.g. "Settings") and wait for its page. */
export async function openSidebarItem(page, name) {
  await sidebarLink(page, name).click();
  await page.waitForLoadState('networkidle');
}

/** Settings → Devices & services. */
export async function openDevicesAndServices(page) {
  await openSidebarItem(page, 'Settings');
  await page.waitForURL((url) => url.pathname.startsWith('/config'));
  await page.getByRole('link', { name: /Devices & services/ }).first().click();
  await page.waitForURL((url) => url.pathname.startsWith('/config/integrations'));
  await page.getByRole('button', { name: 'Add integration' }).first().waitFor({ state: 'visible' });
  await page.waitForLoadState('networkidle');
}

/**
 * Devices & services → Add integration → search `name` → pick it. Returns
 * the config flow dialog (a Locator) once it shows `firstStepTitle`.
 * `onSearch(page)` runs after the search shows the result (for a screenshot).
 */
export async function openIntegrationFlow(page, { name, firstStepTitle, onSearch, pickerTitle = 'Select brand' }) {
  await page.getByRole('button', { name: 'Add integration' }).first().click();
  const picker = dialogWith(page, pickerTitle);
  const search = picker.getByRole('textbox').first();
  await search.waitFor({ state: 'visible', timeout: DEFAULT_TIMEOUT_MS });
  await search.fill(name);
  const item = picker.getByText(name, { exact: true }).first();
  await item.waitFor({ state: 'visible', timeout: DEFAULT_TIMEOUT_MS });
  if (onSearch) await onSearch(page);
  await item.click();
  const flow = flowDialog(page, firstStepTitle);
  await expectText(flow, firstStepTitle);
  return flow;
}

// HA's dialog components. The ARIA dialog element sits deep inside their
// shadow roots while the content is slotted in from outside, so role-based
// scoping (getByRole('dialog').filter(...)) never sees the text: scope by
// the component that holds both.
const DIALOG_HOSTS = 'ha-dialog, ha-md-dialog, ha-adaptive-dialog, ha-wa-dialog';

/**
 * The innermost open dialog showing `text` (string or RegExp). The host
 * element has no box of its own: wait for text or controls inside it, not
 * for the locator itself to be visible.
 */
export function dialogWith(page, text) {
  return page.locator(DIALOG_HOSTS).filter({ has: page.getByText(text) }).last();
}

/** The open config flow dialog showing `text` (a step title, an error...). */
export function flowDialog(page, text) {
  return dialogWith(page, text);
}

function escapeRegExp(text) {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

/**
 * The form field labelled `label` inside `scope` (a page or a dialog).
 * Required fields show their label with a trailing "*", which is allowed.
 */
export function field(scope, label) {
  const name = new RegExp(`^\\s*${escapeRegExp(label)}\\s*\\*?\\s*$`);
  // HA's text fields get their accessible name across a shadow boundary,
  // which getByLabel does not follow; the role query does.
  // Number fields (e.g. a port) are spinbuttons.
  return scope
    .getByRole('textbox', { name })
    .or(scope.getByRole('spinbutton', { name }))
    .or(scope.getByLabel(name))
    .first();
}

/** Wait until the field labelled `label` is shown; returns it. */
export async function expectField(scope, label, { timeout = DEFAULT_TIMEOUT_MS } = {}) {
  const locator = field(scope, label);
  try {
    await locator.waitFor({ state: 'visible', timeout });
  } catch {
    throw new Error(`no field labelled ${JSON.stringify(label)} is shown`);
  }
  return locator;
}

/** Fill the field labelled `label` and check it holds `value`. */
export async function fillField(scope, label, value) {
  const locator = await expectField(scope, label);
  await locator.fill(value);
  const actual = await locator.inputValue();
  if (actual !== value) throw new Error(`field ${JSON.stringify(label)} holds ${JSON.stringify(actual)} after filling`);
}

/** Press the flow's submit button (labelled `label`, "Submit" by default). */
export async function submit(scope, label = 'Submit') {
  const button = scope.getByRole('button', { name: label, exact: true }).last();
  await button.waitFor({ state: 'visible', timeout: DEFAULT_TIMEOUT_MS });
  await button.click();
}

/** Pick the entry labelled `label` in a flow menu step (e.g. "Setup mode: ..."). */
export async function chooseMenuOption(scope, label) {
  const option = scope.getByText(label, { exact: true }).first();
  try {
    await option.waitFor({ state: 'visible', timeout: DEFAULT_TIMEOUT_MS });
  } catch {
    throw new Error(`the menu has no entry ${JSON.stringify(label)}`);
  }
  await option.click();
}

/**
 * Open `path` (e.g. "/config/integrations/integration/tasmota") of the HA the
 * page is logged in to, as typing the address would, and wait for the frontend.
 */
export async function openPath(page, path) {
  const url = new URL(path, page.url());
  assertLoopback(url.href);
  await page.goto(url.href, { waitUntil: 'domcontentloaded' });
  await waitForFrontend(page);
}

/** The switch or checkbox whose accessible name matches `label` (a string or RegExp). */
export function toggleField(scope, label) {
  const name = label instanceof RegExp ? label : new RegExp(escapeRegExp(label));
  return scope.getByRole('switch', { name }).or(scope.getByRole('checkbox', { name })).first();
}

/**
 * Switch the toggle labelled `label` inside `scope` on or off (and check it
 * took). HA renders a flow's boolean as a checkbox, a dashboard toggle as a switch.
 */
export async function setSwitch(scope, label, on) {
  const toggle = toggleField(scope, label);
  try {
    await toggle.waitFor({ state: 'visible', timeout: DEFAULT_TIMEOUT_MS });
  } catch {
    throw new Error(`no switch labelled ${JSON.stringify(label)} is shown`);
  }
  if ((await toggle.isChecked()) !== on) {
    // HA's checkbox keeps the native input under its own ripple layer: click the
    // label (what a person does), and force the click as a fallback.
    await scope.getByText(label, { exact: true }).first().click({ timeout: 5_000 }).catch(() => {});
    if ((await toggle.isChecked()) !== on) await toggle.click({ force: true, timeout: 5_000 });
  }
  if ((await toggle.isChecked()) !== on) throw new Error(`switch ${JSON.stringify(label)} did not turn ${on ? 'on' : 'off'}`);
}

/** A regular expression matching a translated text with its {placeholders} filled in. */
export function templatePattern(template) {
  const parts = template.split(/\{[a-z_]+\}/);
  return new RegExp(parts.map(escapeRegExp).join('.*?'));
}

/** The current state object of `entityId` (undefined if it does not exist). */
export async function entityState(page, entityId) {
  const states = await callWS(page, { type: 'get_states' });
  return states.find((s) => s.entity_id === entityId);
}

/**
 * Poll HA's states (through the frontend's connection) until `predicate(states)`
 * returns something truthy; returns that. Short polling waits only.
 */
export async function waitForStates(page, predicate, { timeout = DEFAULT_TIMEOUT_MS, what = 'a state change' } = {}) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const found = predicate(await callWS(page, { type: 'get_states' }));
    if (found) return found;
    if (Date.now() > deadline) throw new Error(`waited ${timeout} ms for ${what}, in vain`);
    await page.waitForTimeout(250);
  }
}
