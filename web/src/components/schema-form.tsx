/**
 * A form built from a request's JSON schema as the OpenAPI document states it: one control per
 * property (text, number, checkbox, choice, a comma list for arrays of names, rows for arrays of
 * objects), the schema's description as the hint, and the API's validation message beside the
 * field it names. The browser does not check the values itself: the API's rules are the rules.
 */
import { type ReactElement, useId } from 'react';

export interface JsonSchema {
  type?: string;
  properties?: Record<string, JsonSchema>;
  required?: string[];
  items?: JsonSchema;
  anyOf?: JsonSchema[];
  enum?: unknown[];
  default?: unknown;
  description?: string;
  minimum?: number;
  maximum?: number;
  example?: unknown;
}

export type FormValues = Record<string, unknown>;

function choicesOf(schema: JsonSchema): string[] | undefined {
  if (schema.enum) return schema.enum.map(String);
  if (schema.anyOf?.every((option) => option.enum?.length === 1)) return schema.anyOf.map((option) => String(option.enum![0]));
  return undefined;
}

function labelOf(name: string): string {
  const words = name.replace(/([A-Z])/g, ' $1').toLowerCase();
  return words[0].toUpperCase() + words.slice(1);
}

function hintOf(schema: JsonSchema): string {
  const range = schema.minimum !== undefined && schema.maximum !== undefined ? ` (${schema.minimum}–${schema.maximum})` : '';
  return `${schema.description ?? ''}${range}`.trim();
}

/** The request body the values make: empty fields left out, numbers as numbers, arrays split. */
export function bodyOf(schema: JsonSchema, values: FormValues): Record<string, unknown> {
  const body: Record<string, unknown> = {};
  for (const [name, property] of Object.entries(schema.properties ?? {})) {
    const value = values[name];
    if (value === undefined || value === '') continue;
    if (property.type === 'integer' || property.type === 'number') body[name] = Number(value);
    else if (property.type === 'array' && property.items?.type === 'object') {
      const rows = (value as FormValues[]).map((row) => bodyOf(property.items!, row)).filter((row) => Object.keys(row).length > 0);
      if (rows.length > 0) body[name] = rows;
    } else if (property.type === 'array') {
      const items = String(value)
        .split(',')
        .map((item) => item.trim())
        .filter(Boolean);
      if (items.length > 0) body[name] = property.items?.type === 'integer' ? items.map(Number) : items;
    } else body[name] = value;
  }
  return body;
}

type FieldProps = { name: string; schema: JsonSchema; required: boolean; value: unknown; error?: string; onChange(value: unknown): void };

function Field({ name, schema, required, value, error, onChange }: FieldProps) {
  const id = useId();
  const hint = hintOf(schema);
  const described = [hint && `${id}-hint`, error && `${id}-error`].filter(Boolean).join(' ') || undefined;
  const common = { id, name, 'aria-invalid': error ? true : undefined, 'aria-describedby': described };
  const choices = choicesOf(schema);
  let control: ReactElement;
  if (schema.type === 'boolean')
    control = <input {...common} type="checkbox" checked={Boolean(value ?? schema.default)} onChange={(event) => onChange(event.target.checked)} />;
  else if (choices)
    control = (
      <select {...common} value={String(value ?? schema.default ?? '')} onChange={(event) => onChange(event.target.value)}>
        {!required && schema.default === undefined && <option value="">(not set)</option>}
        {choices.map((choice) => (
          <option key={choice}>{choice}</option>
        ))}
      </select>
    );
  else if (schema.type === 'array' && schema.items?.type === 'object')
    return <RowsField name={name} schema={schema} value={(value as FormValues[]) ?? []} error={error} onChange={onChange} />;
  else
    control = (
      <input
        {...common}
        inputMode={schema.type === 'integer' ? 'numeric' : undefined}
        value={String(value ?? '')}
        placeholder={schema.default !== undefined ? String(schema.default) : schema.type === 'array' ? 'comma-separated' : undefined}
        onChange={(event) => onChange(event.target.value)}
      />
    );
  return (
    <div className={`field${error ? ' field-error' : ''}`} data-field={name}>
      <label htmlFor={id}>
        {labelOf(name)}
        {required && <span aria-hidden="true"> *</span>}
      </label>
      {control}
      {hint && (
        <small id={`${id}-hint`} className="hint">
          {hint}
        </small>
      )}
      {error && (
        <small id={`${id}-error`} className="error" role="alert">
          {error}
        </small>
      )}
    </div>
  );
}

/** An array of objects: one row of sub-fields per item, added and removed by buttons. */
function RowsField({
  name,
  schema,
  value,
  error,
  onChange,
}: {
  name: string;
  schema: JsonSchema;
  value: FormValues[];
  error?: string;
  onChange(v: unknown): void;
}) {
  const item = schema.items!;
  return (
    <fieldset className={`field rows${error ? ' field-error' : ''}`} data-field={name}>
      <legend>{labelOf(name)}</legend>
      {schema.description && <small className="hint">{schema.description}</small>}
      {value.map((row, index) => (
        // biome-ignore lint/suspicious/noArrayIndexKey: rows have no identity but their place
        <div className="row" key={index}>
          {Object.entries(item.properties ?? {}).map(([sub, subSchema]) => (
            <Field
              key={sub}
              name={sub}
              schema={subSchema}
              required={item.required?.includes(sub) ?? false}
              value={row[sub]}
              onChange={(next) => onChange(value.map((other, at) => (at === index ? { ...other, [sub]: next } : other)))}
            />
          ))}
          <button type="button" onClick={() => onChange(value.filter((_, at) => at !== index))}>
            Remove
          </button>
        </div>
      ))}
      <button type="button" onClick={() => onChange([...value, {}])}>
        Add {labelOf(name).toLowerCase()}
      </button>
      {error && (
        <small className="error" role="alert">
          {error}
        </small>
      )}
    </fieldset>
  );
}

/** The fields of `schema`, with values and errors by property name. */
export function SchemaFields({
  schema,
  values,
  errors,
  onChange,
}: {
  schema: JsonSchema;
  values: FormValues;
  errors: Record<string, string>;
  onChange(values: FormValues): void;
}) {
  return (
    <>
      {Object.entries(schema.properties ?? {}).map(([name, property]) => (
        <Field
          key={name}
          name={name}
          schema={property}
          required={schema.required?.includes(name) ?? false}
          value={values[name]}
          error={errors[name]}
          onChange={(value) => onChange({ ...values, [name]: value })}
        />
      ))}
    </>
  );
}
