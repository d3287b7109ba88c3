/**
 * Writes the API's OpenAPI document to docs/openapi.json, generated from the route schemas.
 * `npm run openapi` after changing a route; a test fails while the checked-in file is stale.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildApp } from '../src/api/app.ts';
import { createServices } from '../src/app/control-plane.ts';
import { repoRoot } from '../src/core/paths.ts';
import { openDatabase } from '../src/state/database.ts';

/** The OpenAPI document as the running API serves it. */
export async function generateOpenApi(): Promise<string> {
  const dir = mkdtempSync(join(tmpdir(), 'nubis-openapi-'));
  try {
    const db = await openDatabase(join(dir, 'nubis.db'));
    const app = await buildApp(createServices({ db, dataDir: dir, joinToken: 'unused' }));
    await app.ready();
    const document = `${JSON.stringify(app.swagger(), null, 2)}\n`;
    await app.close();
    await db.destroy();
    return document;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

export const openApiPath = join(repoRoot, 'docs', 'openapi.json');

if (import.meta.url === `file://${process.argv[1]}`) {
  writeFileSync(openApiPath, await generateOpenApi());
  console.log(`Wrote ${openApiPath}`);
}
