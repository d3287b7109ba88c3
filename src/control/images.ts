/**
 * The image catalogue: the built-in `tiny` image (registered from the build cache at start) and
 * images users import. Imports are read only from the import folder (`<data>/import/`), only
 * regular files, checked by content (never trusted by extension), and copied into the image
 * store with our own file mode; see import-source.ts.
 */
import { chmod, mkdir, readdir, rename, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { NubisError } from '../core/errors.ts';
import { newId } from '../core/ids.ts';
import type { Db } from '../state/database.ts';
import type { ImagesTable } from '../state/schema.ts';
import { recordImageReferences } from './trusted-launch.ts';
import { openImagesToVms } from '../core/data-folder.ts';
import { VMS_GID } from '../compute/vm-user.ts';
import { checkDisk, checkInitrd, checkKernel, copyImportSource, openImportSource, type ImportFileRole, type ImportSource } from './import-source.ts';

export type ImageFiles = { kernelPath: string; initrdPath: string } | { path: string };

export interface ImageView {
  id: string;
  name: string;
  kind: 'kernel' | 'disk';
  format: string;
  sizeBytes: number;
  builtin: boolean;
  createdAt: string;
}

function toView(row: ImagesTable): ImageView {
  return { id: row.id, name: row.name, kind: row.kind, format: row.format, sizeBytes: row.size_bytes, builtin: row.builtin === 1, createdAt: row.created_at };
}

/** What an import asks for: names in the import folder (see ImageImportRequest). */
export interface ImageImportFiles {
  name: string;
  path?: string;
  kernelPath?: string;
  initrdPath?: string;
}

/** What the check of an import found. */
export interface CheckedImport {
  kind: 'kernel' | 'disk';
  format: string;
}

/** What an import's work gets from its operation. */
export interface ImportContext {
  /** Cancels the import: the copy stops, nothing is left. */
  signal?: AbortSignal;
  /** Progress of the copy, 0..1. */
  onProgress?: (share: number) => void | Promise<void>;
}

/** The files an import names, and what each is for. */
interface ImportShape {
  kind: 'kernel' | 'disk';
  given: string[];
  roles: ImportFileRole[];
}

const STAGING_PREFIX = '.staging-';
const imageNamePattern = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;

export class ImageCatalogue {
  readonly #db: Db;
  readonly #imagesDir: string;
  readonly #importDir: string;

  /** `imagesDir` is the image store; `importDir` the only folder imports are read from. */
  constructor(db: Db, folders: { imagesDir: string; importDir: string }) {
    this.#db = db;
    this.#imagesDir = folders.imagesDir;
    this.#importDir = folders.importDir;
  }

  /** The folder imports are read from. */
  get importDir(): string {
    return this.#importDir;
  }

  /**
   * Creates the import folder (mode 0700: only the control plane's user puts files there) and
   * removes staging folders an interrupted import left in the image store. Called at start.
   */
  async prepareFolders(): Promise<void> {
    await mkdir(this.#importDir, { recursive: true, mode: 0o700 });
    await chmod(this.#importDir, 0o700);
    await mkdir(this.#imagesDir, { recursive: true, mode: 0o750 });
    for (const entry of await readdir(this.#imagesDir)) {
      if (entry.startsWith(STAGING_PREFIX)) await rm(join(this.#imagesDir, entry), { recursive: true, force: true });
    }
    await openImagesToVms(this.#imagesDir, VMS_GID);
  }

  /** Registers (or refreshes) a built-in kernel+initrd image such as `tiny`. */
  async registerBuiltin(name: string, files: { kernelPath: string; initrdPath: string }): Promise<void> {
    const size = (await stat(files.kernelPath)).size + (await stat(files.initrdPath)).size;
    const existing = await this.#db.selectFrom('images').select('id').where('name', '=', name).executeTakeFirst();
    if (existing) {
      await this.#db
        .updateTable('images')
        .set({ files: JSON.stringify(files), size_bytes: size })
        .where('id', '=', existing.id)
        .execute();
      await recordImageReferences(this.#db, existing.id, files, { replace: true }); // a rebuild is the platform's own
      return;
    }
    const id = newId('img');
    await this.#db
      .insertInto('images')
      .values({
        id,
        name,
        kind: 'kernel',
        format: 'kernel+initrd',
        files: JSON.stringify(files),
        size_bytes: size,
        builtin: 1,
        created_at: new Date().toISOString(),
      })
      .execute();
    await recordImageReferences(this.#db, id, files, { replace: true });
  }

  async list(): Promise<ImageView[]> {
    return (await this.#db.selectFrom('images').selectAll().orderBy('name').execute()).map(toView);
  }

  async row(ref: string): Promise<ImagesTable> {
    const row = await this.#db
      .selectFrom('images')
      .selectAll()
      .where((eb) => eb.or([eb('name', '=', ref), eb('id', '=', ref)]))
      .executeTakeFirst();
    if (!row) throw new NubisError('IMAGE_NOT_FOUND', `No image ${ref}; see nubis image list (the built-in one is tiny)`);
    return row;
  }

  async get(ref: string): Promise<ImageView> {
    return toView(await this.row(ref));
  }

  /** Files of an image, for building a VM spec. */
  filesOf(row: ImagesTable): ImageFiles {
    return JSON.parse(row.files) as ImageFiles;
  }

  /**
   * Checks an import before anything is copied, so a bad request is answered at once: the name
   * is free, the files are regular files in the import folder, a disk is qcow2 or raw without a
   * backing or data file (qemu-img, with a deadline), a kernel has the Linux boot header and an
   * initrd a cpio or compressor magic. Returns the checked facts.
   */
  async checkImport(request: ImageImportFiles, signal?: AbortSignal): Promise<CheckedImport> {
    if (await this.#db.selectFrom('images').select('id').where('name', '=', request.name).executeTakeFirst()) {
      throw new NubisError('IMAGE_NAME_TAKEN', `An image named ${request.name} exists; choose another name`);
    }
    const checked = this.#shape(request);
    const sources = await this.#openSources(checked);
    try {
      return { kind: checked.kind, format: await this.#checkContent(sources, signal) };
    } finally {
      await Promise.all(sources.map((source) => source.handle.close()));
    }
  }

  /**
   * Copies the files of a checked import into the image store and records the image. The files
   * are opened and checked again (they may have changed since `checkImport`), copied into a
   * staging folder with mode 0640, the copies checked once more (what is stored is what was
   * checked), and the folder renamed into place. A cancelled or failed import leaves no files
   * and no record.
   */
  async import(request: ImageImportFiles, checked: CheckedImport, context: ImportContext = {}): Promise<ImageView> {
    const { signal } = context;
    const shape = this.#shape(request);
    if (shape.kind !== checked.kind)
      throw new NubisError('IMAGE_INVALID', `The import of ${request.name} changed between its check and its copy; import again`);
    await mkdir(this.#imagesDir, { recursive: true, mode: 0o750 });
    const staging = join(this.#imagesDir, `${STAGING_PREFIX}${newId('imp')}`);
    const finalDir = join(this.#imagesDir, request.name);
    const sources = await this.#openSources(shape);
    let renamed = false;
    try {
      await mkdir(staging, { mode: 0o750 });
      const names = checked.kind === 'disk' ? [`disk.${checked.format}`] : ['vmlinuz', 'initrd.img'];
      const total = sources.reduce((sum, source) => sum + source.sizeBytes, 0) || 1;
      let done = 0;
      const copies: ImportSource[] = [];
      try {
        for (const [index, source] of sources.entries()) {
          const destination = join(staging, names[index]);
          await copyImportSource(source, destination, {
            signal,
            sparse: checked.kind === 'disk',
            onProgress: async (share) => context.onProgress?.((done + share * source.sizeBytes) / total),
          });
          done += source.sizeBytes;
          copies.push(await openImportSource(staging, names[index], shape.roles[index]));
        }
        const format = await this.#checkContent(copies, signal);
        if (format !== checked.format)
          throw new NubisError('IMAGE_INVALID', `The file of ${request.name} changed while it was imported (it is now ${format}); import again`);
      } finally {
        await Promise.all(copies.map((copy) => copy.handle.close()));
      }
      signal?.throwIfAborted();
      try {
        await rename(staging, finalDir);
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code === 'ENOTEMPTY' || (error as NodeJS.ErrnoException).code === 'EEXIST') {
          throw new NubisError('IMAGE_NAME_TAKEN', `The image store already holds ${finalDir} (another import of ${request.name}?); choose another name`, {
            cause: error,
          });
        }
        throw error;
      }
      renamed = true;
      await openImagesToVms(this.#imagesDir, VMS_GID);
      const files =
        checked.kind === 'disk' ? { path: join(finalDir, names[0]) } : { kernelPath: join(finalDir, names[0]), initrdPath: join(finalDir, names[1]) };
      const size = sources.reduce((sum, source) => sum + source.sizeBytes, 0);
      const row: ImagesTable = {
        id: newId('img'),
        name: request.name,
        kind: checked.kind,
        format: checked.format,
        files: JSON.stringify(files),
        size_bytes: size,
        builtin: 0,
        created_at: new Date().toISOString(),
      };
      await recordImageReferences(this.#db, row.id, files); // what a trusted launch from it expects
      await this.#db.insertInto('images').values(row).execute();
      return toView(row);
    } catch (error) {
      await rm(renamed ? finalDir : staging, { recursive: true, force: true });
      throw error;
    } finally {
      await Promise.all(sources.map((source) => source.handle.close()));
    }
  }

  /** Which files an import names, and for what. */
  #shape(request: ImageImportFiles): ImportShape {
    // The name becomes a folder of the image store: the schema's rule, checked where it is used.
    if (!imageNamePattern.test(request.name))
      throw new NubisError('IMAGE_INVALID', `The image name ${JSON.stringify(request.name)} is not allowed; use lowercase letters, digits and inner hyphens`);
    if (request.path && (request.kernelPath || request.initrdPath)) {
      throw new NubisError('IMAGE_INVALID', 'Give either a disk image path or a kernel and initrd, not both');
    }
    if (request.path) return { kind: 'disk', given: [request.path], roles: ['disk'] };
    if (request.kernelPath && request.initrdPath) return { kind: 'kernel', given: [request.kernelPath, request.initrdPath], roles: ['kernel', 'initrd'] };
    throw new NubisError('IMAGE_INVALID', 'Give a disk image (path) or a kernel and an initrd (kernelPath and initrdPath), as names in the import folder');
  }

  /** Opens every file of an import, or none (what was opened is closed when one fails). */
  async #openSources(shape: ImportShape): Promise<ImportSource[]> {
    const sources: ImportSource[] = [];
    try {
      for (const [index, given] of shape.given.entries()) sources.push(await openImportSource(this.#importDir, given, shape.roles[index]));
      return sources;
    } catch (error) {
      await Promise.all(sources.map((source) => source.handle.close()));
      throw error;
    }
  }

  /** Checks opened files by content; returns the format (qcow2, raw or kernel+initrd). */
  async #checkContent(sources: ImportSource[], signal?: AbortSignal): Promise<string> {
    if (sources.length === 1) return checkDisk(sources[0], signal);
    await checkKernel(sources[0]);
    await checkInitrd(sources[1]);
    return 'kernel+initrd';
  }
}
