// Numbered screenshots (01-login.png, 02-add-integration.png, ...).
// They are written to a staging dir and only replace the published set
// (docs/screenshots/) when the whole run passed, so a failed run never leaves
// a mix of old and new pictures behind.
import { copyFileSync, mkdirSync, readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';

const NUMBERED = /^\d\d-[a-z0-9-]+\.png$/;

export class Screenshots {
  /**
   * @param {string} publishDir where the set goes on success (docs/screenshots)
   * @param {string} stagingDir scratch dir for this run (emptied first)
   */
  constructor(publishDir, stagingDir) {
    this.publishDir = publishDir;
    this.stagingDir = stagingDir;
    this.taken = [];
    rmSync(stagingDir, { recursive: true, force: true });
    mkdirSync(stagingDir, { recursive: true });
  }

  /** Save the page as NN-<name>.png (name: lower-case words joined by '-'). */
  async take(page, name) {
    const file = `${String(this.taken.length + 1).padStart(2, '0')}-${name}.png`;
    if (!NUMBERED.test(file)) throw new Error(`bad screenshot name ${JSON.stringify(name)}`);
    await page.screenshot({ path: join(this.stagingDir, file), animations: 'disabled', caret: 'hide' });
    this.taken.push(file);
    return file;
  }

  /** Save a picture of a failure (not numbered, never published). */
  async failure(page, stepName) {
    const file = join(this.stagingDir, `FAILED-${stepName.replace(/[^a-z0-9]+/gi, '-').toLowerCase()}.png`);
    await page.screenshot({ path: file }).catch(() => {});
    return file;
  }

  /** Replace the numbered PNGs in publishDir with this run's set. */
  publish() {
    mkdirSync(this.publishDir, { recursive: true });
    for (const old of readdirSync(this.publishDir)) {
      if (NUMBERED.test(old)) rmSync(join(this.publishDir, old));
    }
    for (const file of this.taken) copyFileSync(join(this.stagingDir, file), join(this.publishDir, file));
    return this.taken.map((file) => join(this.publishDir, file));
  }
}
