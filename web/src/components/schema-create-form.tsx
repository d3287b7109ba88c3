/**
 * A create form built from the create request's schema in the API's own OpenAPI document
 * (`POST path`): a field the API gains appears without a change here. What the API refuses is
 * shown beside the field it names (`details.field`), anything else above the button; once
 * created, the page of the new resource follows. The new VM and new desktop pool pages use it.
 */
import { type FormEvent, useEffect, useState } from 'react';
import { useLocation } from 'wouter';
import { ApiError } from '../api/client';
import { bodyOf, type FormValues, type JsonSchema, SchemaFields } from './schema-form';

/** The JSON schema of the body of `POST path`, read from the API's OpenAPI document. */
export async function requestSchema(path: string): Promise<JsonSchema> {
  const response = await fetch('/v1/openapi.json', { credentials: 'same-origin' });
  if (!response.ok) throw new Error(`The API's OpenAPI document did not load (${response.status})`);
  const document = (await response.json()) as { paths: Record<string, Record<string, { requestBody?: { content: Record<string, { schema: JsonSchema }> } }>> };
  const schema = document.paths[path]?.post?.requestBody?.content['application/json']?.schema;
  if (!schema) throw new Error(`The OpenAPI document has no request body for POST ${path}`);
  return schema;
}

interface SchemaCreateFormProps {
  title: string;
  /** The form's accessible name. */
  label: string;
  /** The API path whose POST body the form builds. */
  path: string;
  initial: FormValues;
  /** Sends the body; resolves with the page to go to, rejects with the API's refusal. */
  create: (body: Record<string, unknown>) => Promise<string>;
}

export function SchemaCreateForm({ title, label, path, initial, create }: SchemaCreateFormProps) {
  const [schema, setSchema] = useState<JsonSchema>();
  const [values, setValues] = useState<FormValues>(initial);
  const [errors, setErrors] = useState<Record<string, string>>({});
  const [formError, setFormError] = useState<string>();
  const [busy, setBusy] = useState(false);
  const [, navigate] = useLocation();
  useEffect(() => {
    requestSchema(path).then(setSchema, (error: unknown) => setFormError(error instanceof Error ? error.message : String(error)));
  }, [path]);
  const showRefusal = (error: unknown) => {
    setBusy(false);
    const field = error instanceof ApiError ? error.field?.split('.')[0] : undefined;
    const message = error instanceof Error ? error.message : String(error);
    if (field && schema?.properties?.[field]) setErrors({ [field]: message });
    else setFormError(message);
  };
  const submit = (event: FormEvent) => {
    event.preventDefault();
    if (!schema) return;
    setBusy(true);
    setErrors({});
    setFormError(undefined);
    create(bodyOf(schema, values)).then(navigate, showRefusal);
  };
  return (
    <>
      <h1>{title}</h1>
      {!schema ? (
        formError ? (
          <p role="alert">{formError}</p>
        ) : (
          <p aria-busy="true">Loading the create request's schema…</p>
        )
      ) : (
        <form className="schema-form card" onSubmit={submit} aria-label={label} noValidate>
          <SchemaFields schema={schema} values={values} errors={errors} onChange={setValues} />
          {formError && (
            <p role="alert" className="error">
              {formError}
            </p>
          )}
          <button type="submit" disabled={busy}>
            Create
          </button>
        </form>
      )}
    </>
  );
}
