/**
 * Reading a password: from stdin, one line per secret, with --password-stdin (for scripts), or
 * asked on the terminal without echo. Never from a command-line argument, where `ps` shows it.
 */
import { NubisError } from '../core/errors.ts';

let stdinLines: Promise<string[]> | undefined;

/** Every line of stdin, read once and handed out in order. */
function linesOfStdin(): Promise<string[]> {
  stdinLines ??= (async () => {
    const chunks: Buffer[] = [];
    for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
    return Buffer.concat(chunks).toString('utf8').split(/\r?\n/);
  })();
  return stdinLines;
}

/** The next secret: the next line of stdin when `fromStdin`, else typed at `prompt` on the terminal, unechoed. */
export async function readSecret(prompt: string, fromStdin: boolean): Promise<string> {
  if (fromStdin) {
    const lines = await linesOfStdin();
    const line = lines.shift();
    if (line === undefined || line === '') throw new NubisError('VALIDATION_FAILED', 'Expected a password on stdin (one per line)');
    return line;
  }
  if (!process.stdin.isTTY) throw new NubisError('VALIDATION_FAILED', 'No terminal to ask the password on: pass it on stdin with --password-stdin');
  process.stderr.write(prompt);
  process.stdin.setRawMode(true);
  process.stdin.resume();
  let typed = '';
  try {
    return await new Promise<string>((resolve, reject) => {
      const onData = (data: Buffer) => {
        for (const char of data.toString('utf8')) {
          if (char === '\r' || char === '\n') {
            process.stdin.off('data', onData);
            return resolve(typed);
          }
          if (char === '\u0003') {
            process.stdin.off('data', onData);
            return reject(new NubisError('VALIDATION_FAILED', 'Cancelled'));
          }
          typed = char === '\u007f' ? typed.slice(0, -1) : typed + char;
        }
      };
      process.stdin.on('data', onData);
    });
  } finally {
    process.stdin.setRawMode(false);
    process.stdin.pause();
    process.stderr.write('\n');
  }
}
