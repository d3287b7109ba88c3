/** The fields of a VM that say it is a template or a linked clone of one (imports only TypeBox: schemas.ts spreads them). */
import { Type } from '@sinclair/typebox';

export const VmTemplateFields = {
  template: Type.Optional(Type.Boolean({ description: 'A template: read-only, never started; nubis vm clone makes VMs of it' })),
  linkedTo: Type.Optional(
    Type.String({ pattern: '^[a-z0-9][a-z0-9-]{0,62}$', maxLength: 63, description: 'A linked clone: the id of the template whose disks back its own' }),
  ),
};
