import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { parseDebugfsListing } from './ext-lister.ts';

/** Output of `debugfs -f` running `ls -p <2>` then `ls -p <12>`, as latin1 text (one character per byte). */
const output = [
  'debugfs: ls -p <2>\n',
  '/2/040755/0/0/.//\n',
  '/2/040755/0/0/..//\n',
  // A name may hold newlines, and even text that looks like debugfs's own echo.
  '/12/040755/0/0/new\ndebugfs: ls -p <99>\nline//\n',
  '/13/100644/1000/1000/\xff\xfe raw/42/\n',
  '/0/000000/0/0//0/\n',
  '\n',
  'debugfs: ls -p <999>\n',
  'debugfs: ls -p <12>\n',
  '/12/040755/0/0/.//\n',
  '/14/120777/0/0/-rf/7/\n',
  '\n',
].join('');

describe('the debugfs ls -p parser', () => {
  it('reads each directory by the echo of its command, names byte for byte', () => {
    const listings = parseDebugfsListing(output);
    assert.deepEqual([...listings.keys()], [2, 999, 12]);
    const root = listings.get(2)!;
    assert.deepEqual(
      root.map((entry) => [entry.inode, entry.mode, entry.size]),
      [
        [2, 0o40755, undefined],
        [2, 0o40755, undefined],
        [12, 0o40755, undefined],
        [13, 0o100644, 42],
        [0, 0, 0],
      ],
    );
    assert.equal(root[2].name.toString('utf8'), 'new\ndebugfs: ls -p <99>\nline');
    assert.deepEqual(root[3].name, Buffer.from([0xff, 0xfe, 0x20, 0x72, 0x61, 0x77]));
    // A directory debugfs could not list has its echo and no records.
    assert.deepEqual(listings.get(999), []);
    assert.deepEqual(
      listings.get(12)!.map((entry) => entry.name.toString()),
      ['.', '-rf'],
    );
  });

  it('refuses output it does not know rather than guess', () => {
    assert.throws(() => parseDebugfsListing(`${output}ls: Filesystem not open\n/1/2/`), /Unexpected text|ends inside a record/);
    assert.throws(() => parseDebugfsListing('debugfs: ls -p <2>\n/x/040755/0/0/.//\n'), /Unexpected debugfs record/);
    assert.throws(() => parseDebugfsListing('/2/040755/0/0/.//\n'), /before any command/);
  });

  it('keeps the whole records of output that was cut', () => {
    const cut = output.slice(0, output.indexOf('/14/') + 8);
    const listings = parseDebugfsListing(cut, true);
    assert.deepEqual(
      listings.get(12)!.map((entry) => entry.name.toString()),
      ['.'],
    );
    assert.equal(listings.get(2)!.length, 5);
  });
});
