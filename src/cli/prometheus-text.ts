/**
 * Reads Prometheus' text exposition format (version 0.0.4, what GET /metrics answers) into
 * samples, for `nubis metrics --json`. The format: prometheus.io/docs/instrumenting/exposition_formats
 * ("Text-based format"): `# HELP` and `# TYPE` lines, then one sample a line,
 * `name{label="value",...} value [timestamp]`, label values escaping `\\`, `\"` and `\n`.
 */
import { NubisError } from '../core/errors.ts';

/** One sample: its metric name, labels, value and the type of its family (counter, gauge, histogram, ...). */
export interface MetricSample {
  name: string;
  labels: Record<string, string>;
  /** A number; `NaN`, `+Inf` and `-Inf` stay the text they are, which JSON cannot hold as numbers. */
  value: number | string;
  type?: string;
}

const NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*/;
const LABEL_NAME = /^[a-zA-Z_][a-zA-Z0-9_]*/;
/** A histogram's or summary's samples carry these suffixes after their family's name. */
const FAMILY_SUFFIXES = ['_bucket', '_sum', '_count', '_total', '_created'];

function unparsable(lineNumber: number, line: string, why: string): NubisError {
  return new NubisError('METRICS_UNPARSABLE', `Line ${lineNumber} of the metrics is not Prometheus text (${why}): ${line.slice(0, 200)}`);
}

/** The labels between `{` and `}` at `text[start]`; returns them and where the text goes on. */
function readLabels(text: string, start: number, fail: (why: string) => NubisError): { labels: Record<string, string>; end: number } {
  const labels: Record<string, string> = {};
  let at = start + 1;
  for (;;) {
    while (text[at] === ' ') at++;
    if (text[at] === '}') return { labels, end: at + 1 };
    const name = LABEL_NAME.exec(text.slice(at))?.[0];
    if (!name || text[at + name.length] !== '=' || text[at + name.length + 1] !== '"') throw fail('a label is not name="value"');
    at += name.length + 2;
    let value = '';
    while (text[at] !== '"') {
      if (at >= text.length) throw fail('a label value is not closed');
      if (text[at] === '\\') {
        const escaped = text[at + 1];
        value += escaped === 'n' ? '\n' : escaped;
        at += 2;
      } else value += text[at++];
    }
    labels[name] = value;
    at++;
    while (text[at] === ' ') at++;
    if (text[at] === ',') at++;
    else if (text[at] !== '}') throw fail('labels are not separated by commas');
  }
}

/** A sample value: a decimal, or NaN or an infinity (kept as text; any case, as Prometheus reads them: prom-client writes `Nan`). */
function readValue(token: string | undefined, fail: (why: string) => NubisError): number | string {
  if (token !== undefined && /^([+-]?inf(inity)?|nan)$/i.test(token)) return token;
  const value = Number(token);
  if (token === undefined || token === '' || !Number.isFinite(value)) throw fail('the value is no number');
  return value;
}

/** Every sample of a Prometheus text exposition, in its order; METRICS_UNPARSABLE names the first line that is not the format. */
export function parsePrometheusText(text: string): MetricSample[] {
  const types = new Map<string, string>();
  const samples: MetricSample[] = [];
  for (const [index, raw] of text.split('\n').entries()) {
    const line = raw.trim();
    const fail = (why: string) => unparsable(index + 1, line, why);
    if (line === '') continue;
    if (line.startsWith('#')) {
      const type = /^#\s*TYPE\s+(\S+)\s+(\S+)/.exec(line);
      if (type) types.set(type[1], type[2]);
      continue;
    }
    const name = NAME.exec(line)?.[0];
    if (!name) throw fail('no metric name');
    let labels: Record<string, string> = {};
    let rest = line.slice(name.length);
    if (rest.startsWith('{')) {
      const read = readLabels(line, name.length, fail);
      labels = read.labels;
      rest = line.slice(read.end);
    }
    const value = readValue(rest.trim().split(/\s+/)[0], fail);
    const family = types.has(name)
      ? name
      : FAMILY_SUFFIXES.map((suffix) => (name.endsWith(suffix) ? name.slice(0, -suffix.length) : '')).find((f) => types.has(f));
    samples.push({ name, labels, value, ...(family !== undefined ? { type: types.get(family) } : {}) });
  }
  return samples;
}
