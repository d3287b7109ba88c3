/**
 * The forms in which a secret string would show if it leaked into JSON text made of base64: its
 * UTF-8 text, its JSON-escaped text, and its base64 and base64url encodings at each of the three
 * byte alignments (only the characters that the secret's own bytes decide). A form shorter than
 * `minChars` is left out: in random base64 such a form turns up by chance (a 4-character one about
 * once per 16 MiB, often enough to make a test flaky); those secrets are checked as whole JSON
 * strings instead ('"rf"'), which random base64 never contains since it holds no quote.
 */
import assert from 'node:assert/strict';

export function plaintextForms(secret: string, minChars = 5): string[] {
  const bytes = Buffer.from(secret, 'utf8');
  const forms = new Set([secret, JSON.stringify(secret).slice(1, -1)]);
  for (const skip of [0, 1, 2]) {
    const padded = Buffer.concat([Buffer.alloc(skip), bytes]);
    // With `skip` unknown bytes before, the first 0, 2 or 3 characters also depend on them; a
    // last partial group depends on the bytes after.
    const encoded = padded.toString('base64').replace(/=+$/, '');
    const known = encoded.slice([0, 2, 3][skip], padded.length % 3 === 0 ? undefined : -1);
    forms.add(known);
    forms.add(known.replaceAll('+', '-').replaceAll('/', '_'));
  }
  return [...forms].filter((form) => form.length >= minChars);
}

/** Asserts that `text` shows none of `secrets` in plain form (see {@link plaintextForms}). */
export function assertNoPlaintext(text: string, secrets: Iterable<string>, what: string): void {
  for (const secret of secrets) {
    assert.ok(!text.includes(JSON.stringify(secret)), `${what} holds ${JSON.stringify(secret)} as a JSON string`);
    for (const form of plaintextForms(secret)) assert.ok(!text.includes(form), `${what} holds ${JSON.stringify(secret)} as ${JSON.stringify(form)}`);
  }
}
