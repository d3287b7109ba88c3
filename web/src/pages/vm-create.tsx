/**
 * Creating a VM with a form built from the create request's schema (POST /v1/vms); then the page
 * of the new VM follows its creation.
 */
import { api, unwrap } from '../api/client';
import { SchemaCreateForm } from '../components/schema-create-form';

export function VmCreatePage() {
  const create = async (body: Record<string, unknown>) => {
    unwrap(await api.POST('/v1/vms', { body: body as never }));
    const { name, project } = body as { name: string; project?: string };
    return `/vms/${project ?? 'default'}/${name}`;
  };
  return <SchemaCreateForm title="New VM" label="Create a VM" path="/v1/vms" initial={{ image: 'tiny' }} create={create} />;
}
