/**
 * Reading a VM's serial console log: its tail for humans, and waiting for a line (the guest's
 * readiness line) without polling guesses: the wait is woken by fs.watch on the log file.
 */
import { constants, existsSync, watch, type FSWatcher } from 'node:fs';
import { type FileHandle, open } from 'node:fs/promises';
import { NubisError } from '../core/errors.ts';

/** The line the built-in guest prints once it serves (src/images/README-guest.md). */
export const READINESS_PATTERN = /NUBIS-READY name=(\S+) ips=(\S+)/;

/**
 * Opens the log for reading. The log is in the folder QEMU's user owns, so a QEMU a guest took
 * over could put a link there to a file only root may read: the agent (root) opens no link and
 * nothing but a regular file.
 */
async function openLog(logPath: string): Promise<FileHandle> {
  const handle = await open(logPath, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  if (!(await handle.stat()).isFile()) {
    await handle.close();
    throw new NubisError('VM_CONSOLE_FAILED', `The serial log ${logPath} is not a regular file; it is not read`);
  }
  return handle;
}

/** The current size of the log, as the offset from which a new boot's output starts. */
export async function serialLogOffset(logPath: string): Promise<number> {
  if (!existsSync(logPath)) return 0;
  const handle = await openLog(logPath);
  try {
    return (await handle.stat()).size;
  } finally {
    await handle.close();
  }
}

/** The last `lineCount` lines of the log (empty when there is no log yet). */
export async function serialLogTail(logPath: string, lineCount: number): Promise<string[]> {
  if (!existsSync(logPath)) return [];
  const handle = await openLog(logPath);
  let text: string;
  try {
    text = (await handle.readFile('utf8')).replaceAll('\r', '');
  } finally {
    await handle.close();
  }
  const lines = text.split('\n');
  if (lines.at(-1) === '') lines.pop();
  return lines.slice(-lineCount);
}

/** Reads the log from `fromOffset` on; returns the text and the new offset. */
async function readFrom(logPath: string, fromOffset: number): Promise<{ text: string; offset: number }> {
  if (!existsSync(logPath)) return { text: '', offset: fromOffset };
  const handle = await openLog(logPath);
  try {
    const { size } = await handle.stat();
    if (size <= fromOffset) return { text: '', offset: Math.min(size, fromOffset) };
    const buffer = Buffer.alloc(size - fromOffset);
    const { bytesRead } = await handle.read(buffer, 0, buffer.length, fromOffset);
    return { text: buffer.subarray(0, bytesRead).toString('utf8'), offset: fromOffset + bytesRead };
  } finally {
    await handle.close();
  }
}

/**
 * Resolves with the first line at or after `fromOffset` that matches `pattern`. Rejects with
 * `VM_READY_TIMEOUT` after `timeoutMs`, or with the signal's reason when aborted.
 */
export function waitForSerialLine(
  logPath: string,
  pattern: RegExp,
  options: { fromOffset: number; timeoutMs: number; signal?: AbortSignal },
): Promise<RegExpMatchArray> {
  return new Promise((resolve, reject) => {
    let offset = options.fromOffset;
    let pending = '';
    let watcher: FSWatcher | undefined;
    let reading = false;
    let again = false;
    let settled = false;
    const finish = (): void => {
      settled = true;
      watcher?.close();
      clearTimeout(timer);
      clearInterval(fallback);
      options.signal?.removeEventListener('abort', onAbort);
    };
    const onAbort = (): void => {
      finish();
      reject(options.signal?.reason ?? new Error('aborted'));
    };
    const check = async (): Promise<void> => {
      if (reading) {
        again = true;
        return;
      }
      reading = true;
      try {
        do {
          again = false;
          const chunk = await readFrom(logPath, offset);
          offset = chunk.offset;
          pending += chunk.text.replaceAll('\r', '');
          const lines = pending.split('\n');
          pending = lines.pop() ?? '';
          for (const line of lines) {
            const match = line.match(pattern);
            if (match && !settled) {
              finish();
              resolve(match);
              return;
            }
          }
        } while (again && !settled);
      } catch (error) {
        if (!settled) {
          finish();
          reject(error);
        }
      } finally {
        reading = false;
      }
    };
    const timer = setTimeout(() => {
      finish();
      reject(new NubisError('VM_READY_TIMEOUT', `No line matching ${pattern} appeared in ${logPath} within ${options.timeoutMs} ms`));
    }, options.timeoutMs);
    // fs.watch misses the file's creation when it does not exist yet, and some file systems drop
    // events; a slow fallback re-check covers both without driving the wait.
    const fallback = setInterval(() => void check(), 1000);
    options.signal?.addEventListener('abort', onAbort, { once: true });
    try {
      watcher = watch(logPath.replace(/[^/]+$/, ''), () => void check());
    } catch {
      // The folder vanished: the fallback timer still checks.
    }
    void check();
  });
}
