/**
 * Labels of hosts and pools (`zone=a`, `region=eu`), and the requirements of projects that name
 * them. One strict format, checked where the API receives a label and again here, where labels
 * are parsed from text and stored.
 */
import { NubisError } from '../core/errors.ts';
import { formatLabels, LABEL_KEY_PATTERN, LABEL_VALUE_PATTERN, MAX_LABELS } from '../wire/label-format.ts';

export { formatLabels, MAX_LABELS };

export type Labels = Record<string, string>;

const keyFormat = new RegExp(LABEL_KEY_PATTERN);
const valueFormat = new RegExp(LABEL_VALUE_PATTERN);

/** Throws `VALIDATION_FAILED` naming the first bad key or value. */
export function checkLabels(labels: Labels, what: string): Labels {
  const entries = Object.entries(labels);
  if (entries.length > MAX_LABELS) throw new NubisError('VALIDATION_FAILED', `${what} has ${entries.length} labels; at most ${MAX_LABELS} are allowed`);
  for (const [key, value] of entries) {
    if (!keyFormat.test(key))
      throw new NubisError(
        'VALIDATION_FAILED',
        `Label key ${JSON.stringify(key)} of ${what} is not valid: use lowercase letters, digits, '.', '-', '_' (e.g. zone)`,
      );
    if (typeof value !== 'string' || !valueFormat.test(value))
      throw new NubisError(
        'VALIDATION_FAILED',
        `Label ${key}=${JSON.stringify(value)} of ${what} is not valid: use letters, digits, '.', '-', '_' (e.g. zone=a)`,
      );
  }
  return labels;
}

/** Labels as stored: a JSON object that `checkLabels` passed before it was written. */
export function parseStoredLabels(text: string): Labels {
  const parsed = JSON.parse(text) as unknown;
  if (!parsed || typeof parsed !== 'object' || Array.isArray(parsed)) return {};
  return parsed as Labels;
}

/** `base` with `change` applied: a key given an empty value is removed. */
export function mergeLabels(base: Labels, change: Labels): Labels {
  const merged: Labels = { ...base };
  for (const [key, value] of Object.entries(change)) {
    if (value === '') delete merged[key];
    else merged[key] = value;
  }
  return merged;
}

/** The first requirement `labels` do not meet, as `key=value`, or undefined when all are met. */
export function unmetRequirement(labels: Labels, requirements: Labels): string | undefined {
  for (const [key, value] of Object.entries(requirements)) if (labels[key] !== value) return `${key}=${value}`;
  return undefined;
}
