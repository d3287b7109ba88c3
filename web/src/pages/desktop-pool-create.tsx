/**
 * Creating a desktop pool with a form built from the create request's schema
 * (POST /v1/desktop-pools), as the new VM page does; then the pool's page follows its spares
 * booting.
 */
import { api, unwrap } from '../api/client';
import { SchemaCreateForm } from '../components/schema-create-form';

export function DesktopPoolCreatePage() {
  const create = async (body: Record<string, unknown>) => {
    unwrap(await api.POST('/v1/desktop-pools', { body: body as never }));
    const { name, project } = body as { name: string; project?: string };
    return `/desktops/pools/${project ?? 'default'}/${name}`;
  };
  return (
    <SchemaCreateForm
      title="New desktop pool"
      label="Create a desktop pool"
      path="/v1/desktop-pools"
      initial={{ image: 'tiny', mode: 'floating' }}
      create={create}
    />
  );
}
