import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { ERROR_STATUS, httpStatusOf, toWireError } from './error-codes.ts';
import { NubisError } from './errors.ts';

const srcDir = join(import.meta.dirname, '..');

/** The text of every non-test source file under src/, but this contract itself. */
function sources(dir = srcDir): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) return sources(path);
    if (!entry.name.endsWith('.ts') || entry.name.endsWith('.test.ts') || path.endsWith(join('core', 'error-codes.ts'))) return [];
    return [readFileSync(path, 'utf8')];
  });
}

describe('the one error contract', () => {
  const text = sources().join('\n');

  it('lists every code an error is thrown with', () => {
    const thrown = new Set([...text.matchAll(/Error\(\s*'([A-Z][A-Z0-9_]+)'/g)].map((match) => match[1]));
    const unlisted = [...thrown].filter((code) => !(code in ERROR_STATUS));
    assert.deepEqual(unlisted, [], 'codes thrown but not in ERROR_STATUS (they would reach clients as 500)');
  });

  it('throws every code it lists somewhere', () => {
    const never = Object.keys(ERROR_STATUS).filter((code) => !text.includes(`'${code}'`));
    assert.deepEqual(never, [], 'codes listed but never used');
  });

  it('never answers 5xx for a code the client causes', () => {
    const clientCaused =
      /(_NOT_FOUND|_TAKEN|_EXISTS|_IN_USE|_INVALID|^VALIDATION_FAILED|^UNKNOWN_FIELD|^AUTH_[A-Z_]+|_BUSY|_DENIED|_REFUSED|_UNSUPPORTED|^NO_HOSTS?(_FITS)?|_HAS_DATA|_DUPLICATE|_NOT_EMPTY|_READ_ONLY|_SAME_HOST)$/;
    const wrong = Object.entries(ERROR_STATUS).filter(
      // An identity provider that cannot be reached (AUTH_OIDC_UNAVAILABLE) is not the client's doing.
      ([code, status]) => (clientCaused.test(code) || code.startsWith('NET_INVALID')) && !code.endsWith('_UNAVAILABLE') && status >= 500,
    );
    assert.deepEqual(wrong, []);
    // The ones an attacker found answered 500.
    for (const code of ['POOL_KIND_UNSUPPORTED', 'VOLUME_SHRINK_REFUSED', 'NO_HOSTS', 'POOL_DEVICE_UNREADABLE', 'NET_PROBE_TIMEOUT'])
      assert.ok(httpStatusOf(code) < 500, code);
  });

  it('keeps the code of our own and of the protocol modules, and hides anything else behind INTERNAL_ERROR', () => {
    assert.deepEqual(toWireError(new NubisError('VM_BUSY', 'Busy', { details: { vm: 'a' } })), {
      status: 409,
      body: { code: 'VM_BUSY', message: 'Busy', details: { vm: 'a' } },
    });
    const qmp = Object.assign(new Error('QEMU did not answer'), { code: 'QMP_TIMEOUT' });
    assert.deepEqual(toWireError(qmp), { status: 504, body: { code: 'QMP_TIMEOUT', message: 'QEMU did not answer' } });
    const system = Object.assign(new Error('ENOENT: no such file'), { code: 'ENOENT' });
    assert.deepEqual(toWireError(system), { status: 500, body: { code: 'INTERNAL_ERROR', message: 'Internal error: ENOENT: no such file' } });
    assert.equal(toWireError('a string').body.code, 'INTERNAL_ERROR');
    // An undo that failed while a change was taken back is in the answer, not dropped.
    const undone = Object.assign(new NubisError('NET_PORT_FORWARD_TAKEN', 'Taken'), { undoFailures: ['forget forward 80/tcp: disk full'] });
    assert.deepEqual(toWireError(undone).body.details, { undoFailures: ['forget forward 80/tcp: disk full'] });
  });
});
