import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { coerceText, coerceTextValues } from './query-coercion.ts';

describe('query and path coercion', () => {
  const integer = { type: 'integer' };
  it('turns finite decimals into numbers and true/false into booleans', () => {
    assert.equal(coerceText('42', integer), 42);
    assert.equal(coerceText('-7', integer), -7);
    assert.equal(coerceText('2.5', { type: 'number' }), 2.5);
    assert.equal(coerceText('true', { type: 'boolean' }), true);
    assert.equal(coerceText('false', { anyOf: [{ type: 'boolean' }] }), false);
  });
  it('leaves everything else as text, so that validation refuses it', () => {
    for (const text of ['Infinity', '-Infinity', 'NaN', '1e400', '1e3', '0x10', '-0', ' 1', '1 ', '', '01', '99999999999999999999']) {
      assert.equal(coerceText(text, integer), text, text);
    }
    assert.equal(coerceText('1', { type: 'boolean' }), '1');
    assert.equal(coerceText('5', { type: 'string' }), '5');
    assert.equal(coerceText('5', undefined), '5');
  });
  it('coerces the values of an object by its properties', () => {
    const query: Record<string, unknown> = { limit: '5', status: 'running', lines: 'Infinity' };
    coerceTextValues(query, { properties: { limit: integer, status: { type: 'string' }, lines: integer } });
    assert.deepEqual(query, { limit: 5, status: 'running', lines: 'Infinity' });
  });
});
