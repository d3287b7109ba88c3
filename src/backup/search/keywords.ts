/**
 * The words a file is found by in a backup search. For a path, its keywords are:
 * - the whole base name, lowercased ('Quarterly_Report-2026.pdf' -> 'quarterly_report-2026.pdf'),
 *   so a file can be found by its exact name;
 * - the base name's tokens: the runs of letters, combining marks and digits between any other
 *   characters ('quarterly', 'report', '2026', 'pdf'), each of at least 2 characters (a single
 *   letter matches too much to be a useful search), without repeats.
 * Folder names are keywords of the folder's own entry, not of every file below it: a search for
 * 'etc' finds '/etc', not each of its files.
 *
 * Every word, indexed or searched, goes through {@link normalizeKeyword}: lowercase (locale
 * independent) then Unicode NFC, so 'Café' typed on one system finds 'café' stored by another
 * in decomposed form.
 */

/** Tokens are split at anything but letters, marks and digits, in any script. */
const SEPARATOR = /[^\p{L}\p{M}\p{N}]+/u;
const MIN_TOKEN_CHARACTERS = 2;

/** The form a word is indexed and searched under. */
export function normalizeKeyword(word: string): string {
  return word.toLowerCase().normalize('NFC');
}

/** The keywords of the file at `path` ('/a/b.txt' or 'p1:/a/b.txt'): its base name and its tokens. */
export function fileKeywords(path: string): string[] {
  const name = normalizeKeyword(path.slice(path.lastIndexOf('/') + 1));
  if (name === '') return [];
  // Counted in code points, so a letter outside the BMP is one character.
  const tokens = name.split(SEPARATOR).filter((token) => [...token].length >= MIN_TOKEN_CHARACTERS);
  return [...new Set([name, ...tokens])];
}
