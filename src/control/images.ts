/**
 * The image catalogue: the built-in `tiny` image (registered from the build cache at start) and
 * images users import. Imported disks are checked with qemu-img, never trusted by extension.
 */
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { copyFile, mkdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { NubisError } from '../core/errors.ts';
import { newId } from '../core/ids.ts';
import type { Db } from '../state/database.ts';
import type { ImagesTable } from '../state/schema.ts';

const run = promisify(execFile);

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

export class ImageCatalogue {
  readonly #db: Db;
  readonly #imagesDir: string;

  constructor(db: Db, imagesDir: string) {
    this.#db = db;
    this.#imagesDir = imagesDir;
  }

  /** Registers (or refreshes) a built-in kernel+initrd image such as `tiny`. */
  async registerBuiltin(name: string, files: { kernelPath: string; initrdPath: string }): Promise<void> {
    const size = (await stat(files.kernelPath)).size + (await stat(files.initrdPath)).size;
    const existing = await this.#db.selectFrom('images').select('id').where('name', '=', name).executeTakeFirst();
    if (existing) {
      await this.#db.updateTable('images').set({ files: JSON.stringify(files), size_bytes: size }).where('id', '=', existing.id).execute();
      return;
    }
    await this.#db
      .insertInto('images')
      .values({ id: newId('img'), name, kind: 'kernel', format: 'kernel+initrd', files: JSON.stringify(files), size_bytes: size, builtin: 1, created_at: new Date().toISOString() })
      .execute();
  }

  async list(): Promise<ImageView[]> {
    return (await this.#db.selectFrom('images').selectAll().orderBy('name').execute()).map(toView);
  }

  async row(ref: string): Promise<ImagesTable> {
    const row = await this.#db.selectFrom('images').selectAll().where((eb) => eb.or([eb('name', '=', ref), eb('id', '=', ref)])).executeTakeFirst();
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
   * Checks the files of an import before anything is copied: a disk must be a qcow2 or raw image
   * as qemu-img sees it; a kernel+initrd pair must both exist. Returns the checked facts.
   */
  async checkImport(request: { name: string; path?: string; kernelPath?: string; initrdPath?: string }): Promise<{ kind: 'kernel' | 'disk'; format: string }> {
    if (await this.#db.selectFrom('images').select('id').where('name', '=', request.name).executeTakeFirst()) {
      throw new NubisError('IMAGE_NAME_TAKEN', `An image named ${request.name} exists; choose another name`);
    }
    if (request.path && (request.kernelPath || request.initrdPath)) {
      throw new NubisError('IMAGE_INVALID', 'Give either a disk image path or a kernel and initrd, not both');
    }
    if (request.path) {
      if (!existsSync(request.path)) throw new NubisError('IMAGE_INVALID', `No file at ${request.path}`);
      let info: { format?: string; 'backing-filename'?: string };
      try {
        info = JSON.parse((await run('qemu-img', ['info', '--output=json', request.path])).stdout) as typeof info;
      } catch (error) {
        throw new NubisError('IMAGE_INVALID', `qemu-img cannot read ${request.path}: ${(error as { stderr?: string }).stderr?.trim() ?? (error as Error).message}`);
      }
      if (info.format !== 'qcow2' && info.format !== 'raw') {
        throw new NubisError('IMAGE_INVALID', `${request.path} is a ${info.format} image; import qcow2 or raw (convert with qemu-img convert -O qcow2)`);
      }
      if (info['backing-filename']) throw new NubisError('IMAGE_INVALID', `${request.path} has a backing file; flatten it first (qemu-img convert)`);
      return { kind: 'disk', format: info.format };
    }
    if (request.kernelPath && request.initrdPath) {
      for (const path of [request.kernelPath, request.initrdPath]) if (!existsSync(path)) throw new NubisError('IMAGE_INVALID', `No file at ${path}`);
      return { kind: 'kernel', format: 'kernel+initrd' };
    }
    throw new NubisError('IMAGE_INVALID', 'Give a disk image (path) or a kernel and an initrd (kernelPath and initrdPath)');
  }

  /** Copies checked files into the image store and records the image. */
  async import(request: { name: string; path?: string; kernelPath?: string; initrdPath?: string }, checked: { kind: 'kernel' | 'disk'; format: string }): Promise<ImageView> {
    const dir = join(this.#imagesDir, request.name);
    await mkdir(dir, { recursive: true });
    let files: ImageFiles;
    let size: number;
    if (checked.kind === 'disk') {
      const path = join(dir, `disk.${checked.format}`);
      await copyFile(request.path!, path);
      files = { path };
      size = (await stat(path)).size;
    } else {
      const kernelPath = join(dir, 'vmlinuz');
      const initrdPath = join(dir, 'initrd.img');
      await copyFile(request.kernelPath!, kernelPath);
      await copyFile(request.initrdPath!, initrdPath);
      files = { kernelPath, initrdPath };
      size = (await stat(kernelPath)).size + (await stat(initrdPath)).size;
    }
    const row: ImagesTable = { id: newId('img'), name: request.name, kind: checked.kind, format: checked.format, files: JSON.stringify(files), size_bytes: size, builtin: 0, created_at: new Date().toISOString() };
    await this.#db.insertInto('images').values(row).execute();
    return toView(row);
  }
}
