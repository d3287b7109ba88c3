/** The rule for pool and volume names, one for both so that they read alike in paths and URLs. */
import { NubisError } from '../../core/errors.ts';

const NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/;

/** Throws POOL_NAME_INVALID or VOLUME_NAME_INVALID unless `name` follows the naming rule. */
export function validateName(name: string, what: 'Pool' | 'Volume'): void {
  if (typeof name !== 'string' || !NAME_PATTERN.test(name)) {
    throw new NubisError(
      `${what.toUpperCase()}_NAME_INVALID`,
      `${what} name ${JSON.stringify(name)} must be 1-63 letters, digits, dots, dashes or underscores, starting with a letter or digit`,
      { details: { name } },
    );
  }
}
