#!/usr/bin/env node
// Fails when a function in src/ runs over about 80 lines or a file over about 600 (a little
// slack for the formatter), unless the reason is
// written down: a `Size:` line in the file's opening comment (for the file) or in the function's
// doc comment (for the function). `npm test` runs it, so the code stays a pleasure to enter.
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';

const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const MAX_FUNCTION_LINES = 85;
const MAX_FILE_LINES = 625;

function sourceFiles(dir) {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) return sourceFiles(path);
    return entry.name.endsWith('.ts') && !entry.name.endsWith('.test.ts') ? [path] : [];
  });
}

/** The comments just before `node` (its doc comment), as text. */
function leadingComments(text, node) {
  return (ts.getLeadingCommentRanges(text, node.getFullStart()) ?? []).map((range) => text.slice(range.pos, range.end)).join('\n');
}

const problems = [];
for (const file of sourceFiles(join(repoRoot, 'src'))) {
  const text = readFileSync(file, 'utf8');
  const name = relative(repoRoot, file);
  const lines = text.split('\n').length;
  const header = text.slice(0, text.indexOf('\nimport ') === -1 ? 2000 : text.indexOf('\nimport '));
  if (lines > MAX_FILE_LINES && !/^\s*(\/\/|\*)\s*Size:/m.test(header))
    problems.push(`${name}: ${lines} lines (over ${MAX_FILE_LINES}, no Size: reason at its top)`);
  const source = ts.createSourceFile(file, text, ts.ScriptTarget.ES2022, true);
  const visit = (node) => {
    const isFunction =
      ts.isFunctionDeclaration(node) ||
      ts.isMethodDeclaration(node) ||
      ts.isArrowFunction(node) ||
      ts.isFunctionExpression(node) ||
      ts.isConstructorDeclaration(node);
    if (isFunction && node.body) {
      const first = source.getLineAndCharacterOfPosition(node.getStart()).line;
      const last = source.getLineAndCharacterOfPosition(node.getEnd()).line;
      // An arrow function's doc comment sits on the statement that holds it.
      const documented = leadingComments(text, node) + leadingComments(text, node.parent?.parent ?? node) + leadingComments(text, node.parent ?? node);
      if (last - first > MAX_FUNCTION_LINES && !/Size:/.test(documented)) {
        problems.push(
          `${name}:${first + 1}: ${node.name?.getText?.() ?? 'a function'} has ${last - first} lines (over ${MAX_FUNCTION_LINES}, no Size: reason in its doc comment)`,
        );
      }
    }
    ts.forEachChild(node, visit);
  };
  visit(source);
}
for (const problem of problems) console.log(problem);
if (problems.length > 0) process.exit(1);
console.log(`no function over ${MAX_FUNCTION_LINES} lines and no file over ${MAX_FILE_LINES} without a reason`);
