/**
 * The CLI's side of an image import: the API reads only the control plane's import folder
 * (`<data>/import/`), so `nubis image import NAME FILE` on the control plane's machine puts FILE
 * there first (a hard link when it can, else a copy of mode 0600) and passes the name it got.
 */
import { randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream, existsSync, type Stats } from 'node:fs';
import { link, realpath, rm, stat } from 'node:fs/promises';
import { basename, isAbsolute, relative, resolve } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { NubisError } from '../core/errors.ts';

/** Files put into the import folder for one import. */
export interface StagedImport {
  /** The names to send to the API, in the order of the files given. */
  names: string[];
  /** Removes what was put into the import folder (files that were there already stay). */
  remove(): Promise<void>;
}

/**
 * Puts local files into the import folder `importDir` and returns their names there. A file that
 * already is inside the folder is passed by its name and not copied.
 */
export async function stageForImport(importDir: string, files: readonly string[]): Promise<StagedImport> {
  if (!existsSync(importDir)) {
    throw new NubisError(
      'CLI_NOT_CONFIGURED',
      `No import folder ${importDir}: run nubis image import on the control plane's machine (with --data set to its data folder), or copy the files into its import folder and add --in-import-folder`,
    );
  }
  const realDir = await realpath(importDir);
  const names: string[] = [];
  const created: string[] = [];
  const remove = async () => {
    await Promise.all(created.map((path) => rm(path, { force: true })));
  };
  try {
    for (const file of files) {
      const source = resolve(file);
      let stats: Stats;
      try {
        stats = await stat(source);
      } catch (error) {
        throw new NubisError('IMAGE_INVALID', `No file ${file}; check the path`, { cause: error });
      }
      if (!stats.isFile()) throw new NubisError('IMAGE_INVALID', `${file} is not a regular file; import a regular file`);
      const real = await realpath(source);
      const inside = relative(realDir, real);
      if (inside && !inside.startsWith('..') && !isAbsolute(inside)) {
        names.push(inside);
        continue;
      }
      const safeBase = basename(real)
        .replace(/[^A-Za-z0-9._+@-]/g, '_')
        .slice(-100);
      const name = `cli-${process.pid}-${randomBytes(4).toString('hex')}-${safeBase}`;
      const destination = resolve(realDir, name);
      try {
        await link(real, destination);
        created.push(destination);
      } catch {
        // Another file system, or a file the user may read but not link: copy it.
        created.push(destination);
        await pipeline(createReadStream(real), createWriteStream(destination, { flags: 'wx', mode: 0o600 }));
      }
      names.push(name);
    }
    return { names, remove };
  } catch (error) {
    await remove();
    throw error;
  }
}
