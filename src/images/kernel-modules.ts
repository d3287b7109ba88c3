// Picks kernel modules out of an unpacked linux-image package for an initramfs, in load order.
import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { NubisError } from '../core/errors.ts';

/** One module to put in the initramfs: its name and its uncompressed `.ko` bytes. */
export interface ResolvedModule {
  name: string;
  data: Buffer;
}

/**
 * Returns `wanted` plus every module they depend on, each after its dependencies, so that
 * `insmod` in that order never meets an "Unknown symbol". Dependencies come from each module's
 * own `depends=` field in its .modinfo section, so no modules.dep or depmod is needed. `.ko.xz`
 * files are decompressed (with xz, or busybox's xz applet); plain `.ko` are taken as they are.
 */
export function resolveKernelModules(modulesDir: string, wanted: readonly string[]): ResolvedModule[] {
  const files = indexModules(join(modulesDir, 'kernel'));
  const ordered: ResolvedModule[] = [];
  const visiting = new Set<string>();
  const done = new Set<string>();

  const visit = (requested: string, neededBy?: string): void => {
    const name = canonicalName(requested);
    if (done.has(name)) return;
    if (visiting.has(name)) {
      throw new NubisError('IMAGE_BUILD_FAILED', `Kernel module ${name} depends on itself through ${neededBy}`);
    }
    const file = files.get(name);
    if (!file) {
      const why = neededBy ? `, which ${neededBy} needs,` : '';
      throw new NubisError(
        'IMAGE_BUILD_FAILED',
        `Kernel module ${name}${why} is not in ${modulesDir}; it may be built into this kernel, so drop it from the image's module list`,
      );
    }
    visiting.add(name);
    const data = readModule(file);
    for (const dependency of dependsOf(data)) visit(dependency, name);
    visiting.delete(name);
    done.add(name);
    ordered.push({ name, data });
  };

  for (const name of wanted) visit(name);
  return ordered;
}

/** The kernel treats "-" and "_" in module names as the same character. */
function canonicalName(name: string): string {
  return name.replaceAll('-', '_');
}

function indexModules(dir: string): Map<string, string> {
  const found = new Map<string, string>();
  const walk = (path: string): void => {
    for (const entry of readdirSync(path, { withFileTypes: true })) {
      const child = join(path, entry.name);
      if (entry.isDirectory()) walk(child);
      else {
        const match = /^(.+)\.ko(\.xz)?$/.exec(entry.name);
        if (match) found.set(canonicalName(match[1]), child);
      }
    }
  };
  try {
    walk(dir);
  } catch (error) {
    throw new NubisError('IMAGE_BUILD_FAILED', `Cannot list kernel modules under ${dir}`, { cause: error });
  }
  return found;
}

function readModule(path: string): Buffer {
  if (!path.endsWith('.xz')) return readFileSync(path);
  for (const [command, args] of [
    ['xz', ['-dc', path]],
    ['busybox', ['xz', '-dc', path]],
  ] as const) {
    try {
      return execFileSync(command, args, { maxBuffer: 64 * 1024 * 1024, stdio: ['ignore', 'pipe', 'ignore'] });
    } catch {
      // Try the next decompressor.
    }
  }
  throw new NubisError('IMAGE_BUILD_FAILED', `Cannot decompress ${path}; install xz-utils`);
}

/** The `depends=a,b` string of a module's .modinfo section (NUL-separated key=value pairs). */
function dependsOf(module: Buffer): string[] {
  const key = Buffer.from('\0depends=');
  const start = module.indexOf(key);
  if (start < 0) return [];
  const valueStart = start + key.length;
  const value = module.toString('latin1', valueStart, module.indexOf(0, valueStart));
  return value.split(',').filter((name) => name !== '');
}
