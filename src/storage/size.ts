/**
 * Byte sizes as people write them: `20G`, `512MiB`, `1.5T`, `4096`. Binary multiples (K = 1024),
 * as `qemu-img` and LVM use them.
 */
import { NubisError } from '../core/errors.ts';

const UNITS: Record<string, number> = { '': 1, B: 1, K: 2 ** 10, M: 2 ** 20, G: 2 ** 30, T: 2 ** 40, P: 2 ** 50 };

/** Parses a size; throws VOLUME_SIZE_INVALID naming the value when it does not parse. */
export function parseSize(value: string | number, what = 'size'): number {
  if (typeof value === 'number') {
    if (Number.isSafeInteger(value) && value >= 0) return value;
    throw new NubisError('VOLUME_SIZE_INVALID', `The ${what} ${value} is not a whole number of bytes`, { details: { value } });
  }
  const match = /^\s*(\d+(?:\.\d+)?)\s*([KMGTP]?)(?:i?B)?\s*$/i.exec(value);
  if (!match) {
    throw new NubisError('VOLUME_SIZE_INVALID', `The ${what} ${JSON.stringify(value)} does not parse; write it like 20G, 512M or 4096`, { details: { value } });
  }
  const bytes = Math.round(Number(match[1]) * UNITS[match[2]!.toUpperCase()]!);
  if (!Number.isSafeInteger(bytes)) throw new NubisError('VOLUME_SIZE_INVALID', `The ${what} ${JSON.stringify(value)} is too large`, { details: { value } });
  return bytes;
}

/** `1073741824` -> `1 GiB`, for messages. */
export function formatSize(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${Number.isInteger(value) ? value : value.toFixed(1)} ${units[unit]}`;
}
