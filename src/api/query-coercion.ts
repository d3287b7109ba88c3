/**
 * Request bodies are JSON and are validated exactly as sent: no type coercion, so `"Infinity"`
 * is no number, `null` no boolean and `1` no name. Only the query string and path parameters
 * arrive as text; this turns those texts into the numbers and booleans their schema asks for,
 * and only when they spell a finite decimal number or `true`/`false`. Anything else stays text
 * and fails validation with a message that names the field.
 */

/** A finite decimal number as people write it: no exponents, no `Infinity`, no hex. */
const FINITE_DECIMAL = /^-?(0|[1-9]\d{0,15})(\.\d{1,15})?$/;

interface PropertySchema {
  type?: string | string[];
  anyOf?: PropertySchema[];
}

function typesOf(schema: PropertySchema | undefined): string[] {
  if (!schema) return [];
  if (schema.anyOf) return schema.anyOf.flatMap(typesOf);
  return Array.isArray(schema.type) ? schema.type : schema.type ? [schema.type] : [];
}

/** The value a query or path text stands for under `schema`, or the text itself. */
export function coerceText(text: string, schema: PropertySchema | undefined): unknown {
  const types = typesOf(schema);
  if ((types.includes('integer') || types.includes('number')) && FINITE_DECIMAL.test(text)) {
    const value = Number(text);
    // -0 is written "-0" only by someone probing: keep it text, so it fails validation.
    if (Number.isFinite(value) && !Object.is(value, -0)) return value;
  }
  if (types.includes('boolean') && (text === 'true' || text === 'false')) return text === 'true';
  return text;
}

/**
 * Coerces, in place, the string values of `values` (a parsed query string or the path
 * parameters) whose properties in `schema` are numbers, integers or booleans.
 */
export function coerceTextValues(values: unknown, schema: { properties?: Record<string, PropertySchema> } | undefined): void {
  if (!values || typeof values !== 'object' || !schema?.properties) return;
  const record = values as Record<string, unknown>;
  for (const [key, value] of Object.entries(record)) {
    if (typeof value === 'string') record[key] = coerceText(value, schema.properties[key]);
  }
}
