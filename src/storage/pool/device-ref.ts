/**
 * What a client may name as a pool member: an absolute path on the storage node, or the URI of
 * another NBD server's export in a strict form. The API's schema checks the same pattern when a
 * request arrives, and the storage node checks it again before it touches anything, since its
 * management socket can be called without the API in front.
 */
import { NubisError } from '../../core/errors.ts';

/** Longest device string accepted (PATH_MAX on Linux). */
export const DEVICE_REF_MAX_LENGTH = 4096;

// No control characters (NUL ends a C string early; newlines forge log lines), and no `..`
// segment: a path must say where it points without relying on what its parents resolve to.
const NO_DOTDOT = String.raw`(?!.*/\.\.(?:/|$))`;
const ABSOLUTE_PATH = String.raw`${NO_DOTDOT}/[^\x00-\x1f\x7f]*`;
// NBD URI spec (nbd-uri.md in the NBD repository): nbd://host[:port][/export] and
// nbd+unix:///[export]?socket=PATH. We take no percent-escapes, user info or other query keys.
const EXPORT_NAME = '[A-Za-z0-9._~/+=:@-]{0,1024}';
const HOST = String.raw`(?:[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|\[[0-9A-Fa-f:.]{2,45}\])`;
const NBD_TCP = `nbd://${HOST}(?::[0-9]{1,5})?(?:/${EXPORT_NAME})?`;
const NBD_UNIX = String.raw`nbd\+unix:///${EXPORT_NAME}\?socket=${NO_DOTDOT}/[^\x00-\x20\x7f&#?%]+`;

/** The pattern a device string matches (JSON Schema `pattern`, also valid with the `u` flag). */
export const DEVICE_REF_PATTERN = `^(?:${ABSOLUTE_PATH}|${NBD_TCP}|${NBD_UNIX})$`;
const DEVICE_REF = new RegExp(DEVICE_REF_PATTERN, 'u');

/** What to tell a client whose device string does not parse. */
export const DEVICE_REF_RULE = 'an absolute path without control characters or .. segments, nbd://HOST[:PORT]/EXPORT or nbd+unix:///EXPORT?socket=/PATH';

/**
 * Checks a device string from a client and returns it; throws POOL_DEVICE_INVALID naming it
 * otherwise. It is only a syntax check: whether the device exists and may be used is the
 * opener's business (`openMemberDevice`).
 */
export function checkDeviceRef(ref: unknown): string {
  if (typeof ref !== 'string')
    throw new NubisError('POOL_DEVICE_INVALID', `Device ${JSON.stringify(ref)} is not a string; give ${DEVICE_REF_RULE}`, { details: { device: ref } });
  const shown = ref.length > 200 ? `${JSON.stringify(ref.slice(0, 200))}...` : JSON.stringify(ref);
  if (ref.length > DEVICE_REF_MAX_LENGTH) {
    throw new NubisError('POOL_DEVICE_INVALID', `Device ${shown} is longer than ${DEVICE_REF_MAX_LENGTH} characters`, {
      details: { device: ref.slice(0, 200), length: ref.length },
    });
  }
  if (!DEVICE_REF.test(ref)) throw new NubisError('POOL_DEVICE_INVALID', `Device ${shown} is not ${DEVICE_REF_RULE}`, { details: { device: ref } });
  const port = /^nbd:\/\/(?:\[[^\]]*\]|[^/:]*):([0-9]+)/.exec(ref)?.[1];
  if (port !== undefined && (Number(port) < 1 || Number(port) > 65535)) {
    throw new NubisError('POOL_DEVICE_INVALID', `Device ${shown} names port ${port}; a TCP port is 1 to 65535`, { details: { device: ref } });
  }
  return ref;
}
