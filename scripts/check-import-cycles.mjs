#!/usr/bin/env node
// Fails when src/ has an import circle: between folders (a layer importing one above it, however
// long the loop) or between files. `npm test` runs it, so circles cannot come back unnoticed.
// Type-only imports count too: they still tie the folders' designs together.
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';

const srcDir = resolve(dirname(fileURLToPath(import.meta.url)), '..', 'src');

function sourceFiles(dir) {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) return sourceFiles(path);
    return /\.(ts|mts|mjs|js)$/.test(entry.name) && !/\.test\./.test(entry.name) ? [path] : [];
  });
}

/** file -> the files of src/ it imports (static `import`/`export ... from` with a relative path). */
function importGraph() {
  const graph = new Map();
  for (const file of sourceFiles(srcDir)) {
    const targets = new Set();
    for (const match of readFileSync(file, 'utf8').matchAll(/^\s*(?:import|export)\s[^'"]*?from\s+['"](\.[^'"]+)['"]/gm)) {
      const target = resolve(dirname(file), match[1]);
      if (target.startsWith(srcDir + sep)) targets.add(target);
    }
    graph.set(file, targets);
  }
  return graph;
}

/** Strongly connected components with more than one node (Tarjan): each is a circle. */
function circles(graph) {
  let index = 0;
  const stack = [];
  const state = new Map();
  const found = [];
  const visit = (node) => {
    state.set(node, { index, low: index, onStack: true });
    index++;
    stack.push(node);
    for (const next of graph.get(node) ?? []) {
      if (!state.has(next)) {
        visit(next);
        state.get(node).low = Math.min(state.get(node).low, state.get(next).low);
      } else if (state.get(next).onStack) {
        state.get(node).low = Math.min(state.get(node).low, state.get(next).index);
      }
    }
    if (state.get(node).low === state.get(node).index) {
      const component = [];
      let member;
      do {
        member = stack.pop();
        state.get(member).onStack = false;
        component.push(member);
      } while (member !== node);
      if (component.length > 1) found.push(component.sort());
    }
  };
  for (const node of graph.keys()) if (!state.has(node)) visit(node);
  return found;
}

const files = importGraph();
const folderOf = (file) => relative(srcDir, file).split(sep)[0];
const folders = new Map();
for (const [file, targets] of files) {
  const from = folderOf(file);
  if (!folders.has(from)) folders.set(from, new Set());
  for (const target of targets) if (folderOf(target) !== from) folders.get(from).add(folderOf(target));
}
const folderCircles = circles(folders);
const fileCircles = circles(files).map((component) => component.map((file) => relative(srcDir, file)));
for (const circle of folderCircles) console.log(`folder circle: ${circle.join(' <-> ')}`);
for (const circle of fileCircles) console.log(`file circle: ${circle.join(' <-> ')}`);
if (folderCircles.length + fileCircles.length > 0) process.exit(1);
console.log(`no import circles in src/ (${files.size} files, ${folders.size} folders)`);
