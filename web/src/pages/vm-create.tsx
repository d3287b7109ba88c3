/**
 * Creating a VM with a form built from the create request's schema in the API's own OpenAPI
 * document (/v1/openapi.json, POST /v1/vms): a field the API gains appears here without a change.
 * What the API refuses is shown beside the field it names; then the page of the new VM follows
 * its creation.
 */
import { type FormEvent, useEffect, useState } from 'react';
import { useLocation } from 'wouter';
import { ApiError, api, unwrap } from '../api/client';
import { bodyOf, type FormValues, type JsonSchema, SchemaFields } from '../components/schema-form';

/** The JSON schema of the body of `POST path`, read from the API's OpenAPI document. */
export async function requestSchema(path: string): Promise<JsonSchema> {
  const response = await fetch('/v1/openapi.json', { credentials: 'same-origin' });
  if (!response.ok) throw new Error(`The API's OpenAPI document did not load (${response.status})`);
  const document = (await response.json()) as { paths: Record<string, Record<string, { requestBody?: { content: Record<string, { schema: JsonSchema }> } }>> };
  const schema = document.paths[path]?.post?.requestBody?.content['application/json']?.schema;
  if (!schema) throw new Error(`The OpenAPI document has no request body for POST ${path}`);
  return schema;
}

export function VmCreatePage() {
  const [schema, setSchema] = useState<JsonSchema>();
  const [values, setValues] = useState<FormValues>({ image: 'tiny' });
  const [errors, setErrors] = useState<Record<string, string>>({});
  const [formError, setFormError] = useState<string>();
  const [busy, setBusy] = useState(false);
  const [, navigate] = useLocation();
  useEffect(() => {
    requestSchema('/v1/vms').then(setSchema, (error: unknown) => setFormError(error instanceof Error ? error.message : String(error)));
  }, []);
  const submit = (event: FormEvent) => {
    event.preventDefault();
    if (!schema) return;
    setBusy(true);
    setErrors({});
    setFormError(undefined);
    const body = bodyOf(schema, values) as { name: string; image: string; project?: string };
    api.POST('/v1/vms', { body: body as never }).then((result) => {
      try {
        unwrap(result);
        navigate(`/vms/${body.project ?? 'default'}/${body.name}`);
      } catch (error) {
        showRefusal(error);
      }
    }, showRefusal);
  };
  const showRefusal = (error: unknown) => {
    setBusy(false);
    const field = error instanceof ApiError ? error.field?.split('.')[0] : undefined;
    const message = error instanceof Error ? error.message : String(error);
    if (field && schema?.properties?.[field]) setErrors({ [field]: message });
    else setFormError(message);
  };
  return (
    <>
      <h1>New VM</h1>
      {!schema ? (
        formError ? (
          <p role="alert">{formError}</p>
        ) : (
          <p aria-busy="true">Loading the create request's schema…</p>
        )
      ) : (
        <form className="schema-form card" onSubmit={submit} aria-label="Create a VM" noValidate>
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
