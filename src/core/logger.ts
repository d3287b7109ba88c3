/** The logger every process uses: pino, JSON lines, level from NUBIS_LOG_LEVEL (default info). */
import { pino } from 'pino';

export type Logger = pino.Logger;

/** A logger named after its process (`control-plane`, `agent host-1`, `cli`). */
export function createLogger(name: string, destination?: string): Logger {
  const level = process.env.NUBIS_LOG_LEVEL ?? 'info';
  return destination ? pino({ name, level }, pino.destination({ dest: destination, mkdir: true, sync: false })) : pino({ name, level });
}
