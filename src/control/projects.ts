/** Projects (tenants): every resource belongs to one; `default` exists from the first start. */
import { NubisError } from '../core/errors.ts';
import type { Db } from '../state/database.ts';

/** The projects a list shows when none is named: every one, or these ids (access/authorize.ts projectsWith). */
export type VisibleProjects = 'all' | string[];

/** The id of the project named `name` (default: `default`), or `PROJECT_NOT_FOUND`. */
export async function projectIdByName(db: Db, name = 'default'): Promise<string> {
  const project = await db.selectFrom('projects').select('id').where('name', '=', name).executeTakeFirst();
  if (!project) throw new NubisError('PROJECT_NOT_FOUND', `No project ${name}; create it with nubis project create ${name}`);
  return project.id;
}
