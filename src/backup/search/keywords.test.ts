import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { fileKeywords } from './keywords.ts';

describe('file keywords', () => {
  it('are the lowercased base name and its tokens of two characters or more', () => {
    assert.deepEqual(fileKeywords('/home/ann/Quarterly_Report-2026.pdf'), ['quarterly_report-2026.pdf', 'quarterly', 'report', '2026', 'pdf']);
    assert.deepEqual(fileKeywords('p1:/x/a b-c.tar.gz'), ['a b-c.tar.gz', 'tar', 'gz']);
    assert.deepEqual(fileKeywords('/Ünïcödé ✓/Café Menu.PDF'), ['café menu.pdf', 'café', 'menu', 'pdf']);
    assert.deepEqual(fileKeywords('/etc'), ['etc']);
    assert.deepEqual(fileKeywords('/'), []);
  });

  it('are in NFC, so composed and decomposed names give the same words', () => {
    assert.deepEqual(fileKeywords('/Cafe\u0301.txt'), fileKeywords('/Caf\u00e9.txt'));
  });
});
