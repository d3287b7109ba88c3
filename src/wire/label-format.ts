/** The format of labels of hosts and pools, shared by the API's schemas and the services that store them. */

/** `zone`, `region`, `topology.example.com/rack`: lowercase, digits, `.`, `-`, `_`, one `/`. */
export const LABEL_KEY_PATTERN = '^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?(/[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?)?$';
export const LABEL_VALUE_PATTERN = '^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$';
export const MAX_LABELS = 32;

/** Labels as `key=value,key=value` (or `-` for none), for messages and tables. */
export function formatLabels(labels: Record<string, string>): string {
  return (
    Object.entries(labels)
      .map(([key, value]) => `${key}=${value}`)
      .join(',') || '-'
  );
}
