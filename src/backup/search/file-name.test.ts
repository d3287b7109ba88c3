import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { decodeFileName, fileNameBytes } from './file-name.ts';

describe('file names', () => {
  it('decode UTF-8 as text and keep every other byte, so the bytes come back exactly', () => {
    for (const bytes of [
      Buffer.from('plain ascii'),
      Buffer.from('Ünïcödé ✓ 🙂'),
      Buffer.from([0x62, 0x61, 0x64, 0xff, 0xfe]),
      // Overlong '/', a lone surrogate's UTF-8, a sequence cut short, a code point past U+10FFFF.
      Buffer.from([0xc0, 0xaf, 0xed, 0xa0, 0x80, 0xe2, 0x82, 0x41, 0xf4, 0x90, 0x80, 0x80]),
    ]) {
      const name = decodeFileName(bytes);
      assert.deepEqual(fileNameBytes(name), bytes, name);
    }
    assert.equal(decodeFileName(Buffer.from([0x61, 0xff])), 'a\udcff');
  });
});
