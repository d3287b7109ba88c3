/**
 * Creating a desktop pool with a form built from the create request's schema in the API's
 * OpenAPI document (POST /v1/desktop-pools), as the new VM page does: a field the API gains
 * appears by itself, and what the API refuses is shown beside the field it names. Then the
 * pool's page follows its spares booting.
 */
import { type FormEvent, useEffect, useState } from 'react';
import { useLocation } from 'wouter';
import { ApiError, api, unwrap } from '../api/client';
import { bodyOf, type FormValues, type JsonSchema, SchemaFields } from '../components/schema-form';
import { requestSchema } from './vm-create';

export function DesktopPoolCreatePage() {
  const [schema, setSchema] = useState<JsonSchema>();
  const [values, setValues] = useState<FormValues>({ image: 'tiny', mode: 'floating' });
  const [errors, setErrors] = useState<Record<string, string>>({});
  const [formError, setFormError] = useState<string>();
  const [busy, setBusy] = useState(false);
  const [, navigate] = useLocation();
  useEffect(() => {
    requestSchema('/v1/desktop-pools').then(setSchema, (error: unknown) => setFormError(error instanceof Error ? error.message : String(error)));
  }, []);
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
    const body = bodyOf(schema, values) as { name: string; project?: string };
    api.POST('/v1/desktop-pools', { body: body as never }).then((result) => {
      try {
        unwrap(result);
        navigate(`/desktops/pools/${body.project ?? 'default'}/${body.name}`);
      } catch (error) {
        showRefusal(error);
      }
    }, showRefusal);
  };
  return (
    <>
      <h1>New desktop pool</h1>
      {!schema ? (
        formError ? (
          <p role="alert">{formError}</p>
        ) : (
          <p aria-busy="true">Loading the create request's schema…</p>
        )
      ) : (
        <form className="schema-form card" onSubmit={submit} aria-label="Create a desktop pool" noValidate>
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
