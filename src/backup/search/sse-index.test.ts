import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { describe, it } from 'node:test';
import { assertNoPlaintext } from '../../../test/helpers/plaintext-forms.ts';
import { isNubisError } from '../../core/errors.ts';
import { fileKeywords } from './keywords.ts';
import { EncryptedIndex, INDEX_FORMAT, buildIndex, openResults, searchIndex, searchToken } from './sse-index.ts';

const paths = [
  'disk-a:/home/ann/Quarterly_Report-2026.pdf',
  'disk-a:/home/ann/quarterly notes.txt',
  'disk-a:/etc/hostname',
  'disk-b:p1:/Ünïcödé ✓/Café Menu.PDF',
  'disk-b:p2:/-rf --no-preserve-root',
  'disk-b:p2:/bad\udcff\udcfename.bin',
  'disk-b:p2:/bad\udcfe\udcffname.bin',
];
const documents = paths.map((id) => ({ id, keywords: fileKeywords(id) }));

/** What a search must find: word -> ids, straight from the documents. */
function plaintextReference(): Map<string, string[]> {
  const reference = new Map<string, string[]>();
  for (const { id, keywords } of documents) for (const keyword of keywords) reference.set(keyword, [...(reference.get(keyword) ?? []), id]);
  return reference;
}

function search(key: Buffer, index: EncryptedIndex, word: string): string[] {
  return openResults(key, word, searchIndex(index, searchToken(key, word).k1));
}

describe('the Pi_bas index', () => {
  const key = randomBytes(32);
  const index = buildIndex(key, documents);

  it('has one entry per (keyword, document) pair, and finds every document of every keyword', () => {
    const reference = plaintextReference();
    assert.equal(index.size, [...reference.values()].flat().length);
    for (const [word, ids] of reference) assert.deepEqual(search(key, index, word), ids, word);
    assert.deepEqual(search(key, index, 'QUARTERLY'), ['disk-a:/home/ann/Quarterly_Report-2026.pdf', 'disk-a:/home/ann/quarterly notes.txt']);
    // The same word in decomposed Unicode (as macOS writes names) finds the composed one.
    assert.deepEqual(search(key, index, 'cafe\u0301'), ['disk-b:p1:/Ünïcödé ✓/Café Menu.PDF']);
    for (const absent of ['report-2026', 'annual', 'e', '', 'ann', 'home']) assert.deepEqual(search(key, index, absent), [], absent);
  });

  it('keeps names that are not UTF-8 apart, byte for byte', () => {
    assert.deepEqual(search(key, index, 'bad\udcff\udcfename.bin'), ['disk-b:p2:/bad\udcff\udcfename.bin']);
    assert.deepEqual(search(key, index, 'bad\udcfe\udcffname.bin'), ['disk-b:p2:/bad\udcfe\udcffname.bin']);
  });

  it('serializes to JSON that reads back to the same searches', () => {
    const json = JSON.parse(JSON.stringify(index));
    assert.equal(json.format, INDEX_FORMAT);
    const labels = json.entries.map(([label]: [string]) => label);
    assert.deepEqual(labels, [...labels].sort(), 'entries are sorted by label');
    const copy = EncryptedIndex.fromJSON(json);
    assert.deepEqual(search(key, copy, 'pdf'), search(key, index, 'pdf'));
  });

  it('shows no keyword and no name in the serialized index or in a server token', () => {
    const text = JSON.stringify(index);
    const secrets = [...plaintextReference().keys(), ...paths, ...paths.map((path) => path.slice(path.lastIndexOf('/') + 1))];
    assertNoPlaintext(text, secrets, 'the index');
    // Nothing but the format name and base64 of the right sizes: 16-byte labels, 12 + 32n + 16-byte values.
    const json = JSON.parse(text);
    assert.deepEqual(Object.keys(json), ['format', 'entries']);
    for (const [label, value] of json.entries) {
      assert.equal(Buffer.from(label, 'base64url').length, 16);
      assert.equal((Buffer.from(value, 'base64').length - 28) % 32, 0);
    }
    for (const word of plaintextReference().keys()) {
      const { k1 } = searchToken(key, word);
      assert.match(k1, /^[A-Za-z0-9_-]{43}$/);
      assertNoPlaintext(k1, [word], `the token of ${JSON.stringify(word)}`);
    }
  });

  it('pads ids, so a value tells their length only to within 32 bytes', () => {
    const sizes = (id: string) => buildIndex(key, [{ id, keywords: ['w'] }]).toJSON().entries[0][1].length;
    assert.equal(sizes('a'), sizes('a'.repeat(27)));
    assert.notEqual(sizes('a'.repeat(27)), sizes('a'.repeat(29)));
  });

  it('finds nothing with another key, and refuses to open results with one', () => {
    const otherKey = randomBytes(32);
    for (const word of plaintextReference().keys()) assert.deepEqual(searchIndex(index, searchToken(otherKey, word).k1), [], word);
    const values = searchIndex(index, searchToken(key, 'pdf').k1);
    assert.equal(values.length, 2);
    const unreadable = (error: unknown) => isNubisError(error, 'BACKUP_RESULTS_UNREADABLE') && /does not open with this key/.test(error.message);
    assert.throws(() => openResults(otherKey, 'pdf', values), unreadable);
    // Right key, wrong word: that word's K2 does not open them either.
    assert.throws(() => openResults(key, 'txt', values), unreadable);
    // A value changed on the server fails its GCM tag rather than opening to another id.
    const changed = Buffer.from(values[0], 'base64');
    changed[20] ^= 1;
    assert.throws(() => openResults(key, 'pdf', [changed.toString('base64')]), unreadable);
  });

  it('rejects a key, a token or a serialized index of the wrong shape', () => {
    assert.throws(
      () => buildIndex(randomBytes(16), documents),
      (error) => isNubisError(error, 'BACKUP_SEARCH_KEY_INVALID'),
    );
    assert.throws(
      () => searchIndex(index, 'pdf'),
      (error) => isNubisError(error, 'BACKUP_SEARCH_TOKEN_INVALID'),
    );
    const good = index.toJSON();
    for (const bad of [
      null,
      { format: 'other', entries: [] },
      { format: INDEX_FORMAT },
      { format: INDEX_FORMAT, entries: [['short', good.entries[0][1]]] },
      { format: INDEX_FORMAT, entries: [good.entries[0], good.entries[0]] },
      { format: INDEX_FORMAT, entries: [[good.entries[0][0], 'bm90IGEgdmFsdWU=']] },
    ])
      assert.throws(
        () => EncryptedIndex.fromJSON(bad),
        (error) => isNubisError(error, 'BACKUP_INDEX_INVALID'),
        JSON.stringify(bad),
      );
  });
});
