/** `nubis image`: the guest images of the catalogue, the built-in tiny image, and imports. */
import type { Static } from '@sinclair/typebox';
import type { Command } from 'commander';
import { NubisError } from '../../core/errors.ts';
import { cacheDir, dataPaths } from '../../core/paths.ts';
import { buildTinyImage, readTinyImage } from '../../images/build-tiny.ts';
import type { Accepted, Image } from '../../wire/schemas.ts';
import { client, globals, runOperation } from '../common.ts';
import { stageForImport } from '../import-staging.ts';
import { printJson, printTable } from '../output.ts';

interface ImageImportOptions {
  kernel?: string;
  initrd?: string;
  inImportFolder?: boolean;
}

/** Registers `image` and its subcommands on the program. */
export function registerImageCommands(program: Command): void {
  const image = program.command('image').description('Guest images');
  image
    .command('list')
    .description('List images')
    .action(async (_options: unknown, command: Command) => {
      const images = await client(command).request<Array<Static<typeof Image>>>('GET', '/v1/images');
      if (globals(command).json) return printJson(images);
      printTable(
        ['NAME', 'KIND', 'FORMAT', 'SIZE', 'BUILTIN'],
        images.map((i) => [i.name, i.kind, i.format, `${(i.sizeBytes / 1048576).toFixed(1)} MiB`, i.builtin ? 'yes' : 'no']),
      );
    });
  image
    .command('build <name>')
    .description('Build a built-in image (tiny) into the local cache')
    .option('--force', 'rebuild even when the cached image is current')
    .option('--if-missing', 'do nothing when an image was built before, even from older sources')
    .action(async (name: string, options: { force?: boolean; ifMissing?: boolean }, command: Command) => {
      if (name !== 'tiny') throw new NubisError('IMAGE_NOT_FOUND', `No built-in image ${name}; the built-in image is tiny`);
      const g = globals(command);
      const existing = options.ifMissing ? readTinyImage(cacheDir()) : undefined;
      const built =
        existing ??
        (await buildTinyImage({
          cacheDir: cacheDir(),
          force: options.force,
          onProgress: (message) => void (g.json ? undefined : console.error(`  ${message}`)),
        }));
      if (g.json) printJson(built);
      else console.log(`tiny: kernel ${built.kernelVersion}, initrd ${built.initrdPath}`);
    });
  image
    .command('import <name> [file]')
    .description(
      "Import a qcow2 or raw disk image, or a kernel+initrd pair: the files are put into the control plane's import folder (<data>/import/) and checked there",
    )
    .option('--kernel <file>', 'kernel of a kernel+initrd image')
    .option('--initrd <file>', 'initrd of a kernel+initrd image')
    .option('--in-import-folder', "the files are already in the control plane's import folder: send their names as given (for a CLI on another machine)")
    .action(importImage);
}

async function importImage(name: string, file: string | undefined, options: ImageImportOptions, command: Command): Promise<void> {
  const files = file ? [file] : [options.kernel, options.initrd].filter((f): f is string => f !== undefined);
  if (file && (options.kernel || options.initrd)) throw new NubisError('IMAGE_INVALID', 'Give either a disk image FILE or --kernel and --initrd, not both');
  if (!file && files.length !== 2) throw new NubisError('IMAGE_INVALID', 'Give a disk image FILE, or both --kernel and --initrd');
  const staged = options.inImportFolder ? { names: files, remove: async () => {} } : await stageForImport(dataPaths(globals(command).data).imports, files);
  try {
    const body = { name, ...(file ? { path: staged.names[0] } : { kernelPath: staged.names[0], initrdPath: staged.names[1] }) };
    const { operation } = await client(command).request<Static<typeof Accepted>>('POST', '/v1/images', body);
    const final = await runOperation(command, `Importing ${name}`, operation);
    if (globals(command).json) printJson(final.result);
    else console.log(`${name}: imported`);
  } catch (error) {
    // The control plane names the staged copy; the user knows the file they gave.
    if (error instanceof NubisError) {
      const message = staged.names.reduce((text, stagedName, index) => text.replaceAll(stagedName, files[index]), error.message);
      throw new NubisError(error.code, message, { cause: error, details: error.details });
    }
    throw error;
  } finally {
    await staged.remove();
  }
}
