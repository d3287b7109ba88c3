/** `nubis metrics`: the control plane's Prometheus metrics, as GET /metrics serves them or (--json) as samples. */
import type { Command } from 'commander';
import { client, globals } from '../common.ts';
import { printJson } from '../output.ts';
import { parsePrometheusText } from '../prometheus-text.ts';

/** The metric name a line of the text format is about: a sample's, or a `# HELP`/`# TYPE` line's. */
function nameOfLine(line: string): string | undefined {
  return /^#\s*(?:HELP|TYPE)\s+(\S+)/.exec(line)?.[1] ?? /^[a-zA-Z_:][a-zA-Z0-9_:]*/.exec(line)?.[0];
}

/** Registers `metrics` on the program. */
export function registerMetricsCommands(program: Command): void {
  program
    .command('metrics [prefix...]')
    .description(
      'Print the metrics Prometheus scrapes (GET /metrics; needs metrics.read, e.g. a token made with nubis token create NAME --role metrics); ' +
        'with prefixes, only the metrics whose names start with one, e.g. nubis metrics nubis_host_ nubis_vms',
    )
    .action(async (prefixes: string[], _options: unknown, command: Command) => {
      const text = await client(command).text('/metrics');
      const wanted = (name: string | undefined): boolean => prefixes.length === 0 || (name !== undefined && prefixes.some((prefix) => name.startsWith(prefix)));
      if (globals(command).json) return printJson(parsePrometheusText(text).filter((sample) => wanted(sample.name)));
      const lines = text.split('\n').filter((line) => line !== '' && wanted(nameOfLine(line)));
      if (lines.length > 0) console.log(lines.join('\n'));
    });
}
