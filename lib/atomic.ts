/**
 * Replacing a file atomically, in a folder others may write to.
 *
 * - The new text is staged in a file beside the one it replaces, under a
 *   random name, opened with O_CREAT|O_EXCL|O_NOFOLLOW: a file or a link
 *   planted at that name makes the open fail, it is never written through.
 * - The staged file is synced, given the old file's mode and (best effort,
 *   when we may) its owner, then renamed over it.
 * - A staged file is removed on every failure: a failed write (a full
 *   disk), a failed rename, a check that refused it.
 * - A symbolic link is kept: the file it points to is what gets replaced
 *   (`targetOf`), so a sites-enabled link still points where it did.
 *
 * @module
 */
import { constants } from "node:fs";
import { lstat, open, readlink, rename, stat, unlink } from "node:fs/promises";
import { randomBytes } from "node:crypto";
import { basename, dirname, join, resolve } from "node:path";

/** How many links `targetOf` follows before it gives up (Linux's own limit). */
const MAX_LINKS = 40;

/** The mode of a new file (less the umask). */
export const NEW_FILE_MODE = 0o644;

/** The file that writing to `path` replaces: `path`, or where its chain of links ends (which may not exist yet). */
export async function targetOf(path: string): Promise<string> {
  let current = resolve(path);
  for (let hops = 0; hops < MAX_LINKS; hops++) {
    const info = await lstat(current).catch(() => undefined);
    if (!info?.isSymbolicLink()) return current;
    current = resolve(dirname(current), await readlink(current));
  }
  throw new RangeError(`Cannot follow ${path}: more than ${MAX_LINKS} links`);
}

/** A hidden name beside `path`, random, so that nobody can plant a file or a link there beforehand. */
export function stagedName(path: string, random: () => string = () => randomBytes(8).toString("hex")): string {
  return join(dirname(path), `.${basename(path)}.render-${random()}`);
}

/** The owner and mode a replacement keeps, from the file it replaces; undefined when there is none. */
export interface Keep {
  mode: number;
  uid: number;
  gid: number;
}

/** What `path` has now (following links), to keep; undefined when it does not exist. */
export async function keepOf(path: string): Promise<Keep | undefined> {
  const info = await stat(path).catch(() => undefined);
  return info && { mode: info.mode & 0o7777, uid: info.uid, gid: info.gid };
}

/**
 * Writes `text` to a new staged file beside `target`, synced, with `keep`'s
 * mode and owner; returns its path. Removes it and throws on any failure.
 */
export async function stage(
  target: string,
  text: string,
  keep: Keep | undefined,
  random?: () => string,
): Promise<string> {
  const staged = stagedName(target, random);
  const { O_WRONLY, O_CREAT, O_EXCL, O_NOFOLLOW } = constants;
  const file = await open(staged, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, keep?.mode ?? NEW_FILE_MODE);
  try {
    await file.writeFile(text);
    if (keep) {
      const info = await file.stat();
      // only root may give a file away: otherwise it is ours, as a plain write would make it
      if (info.uid !== keep.uid || info.gid !== keep.gid) await file.chown(keep.uid, keep.gid).catch(() => {});
      await file.chmod(keep.mode); // the umask took bits off at the open, and chown clears set-id bits
    }
    await file.sync();
  } catch (err) {
    await file.close().catch(() => {});
    await unlink(staged).catch(() => {});
    throw err;
  }
  await file.close();
  return staged;
}

/** Renames `staged` over `target`; removes `staged` and throws when that fails. */
export async function commit(staged: string, target: string): Promise<void> {
  try {
    await rename(staged, target);
  } catch (err) {
    await unlink(staged).catch(() => {});
    throw err;
  }
}

/** Replaces `target` (not a link: see targetOf) with `text` atomically, keeping its mode and owner. */
export async function writeAtomically(target: string, text: string): Promise<void> {
  await commit(await stage(target, text, await keepOf(target)), target);
}
