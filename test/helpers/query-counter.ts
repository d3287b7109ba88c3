/**
 * Counts the SQL statements services send, for tests that assert how many queries an action
 * costs (a list of N VMs a constant number, a heartbeat no write): a Kysely plugin that sees
 * every query built through the database it is added to (`db.withPlugin(counter)`), with its
 * kind and its first table.
 */
import type { KyselyPlugin, OperationNode, PluginTransformQueryArgs, PluginTransformResultArgs, QueryResult, RootOperationNode, UnknownRow } from 'kysely';

/** One statement as counted: `select`, `insert`, `update`, `delete` or `raw`, its table, and whether it filters or groups. */
export interface CountedQuery {
  kind: 'select' | 'insert' | 'update' | 'delete' | 'raw' | 'other';
  table: string | undefined;
  /** A WHERE clause (or a join's ON) narrows it. */
  filtered: boolean;
  grouped: boolean;
}

const KINDS: Record<string, CountedQuery['kind']> = {
  SelectQueryNode: 'select',
  InsertQueryNode: 'insert',
  UpdateQueryNode: 'update',
  DeleteQueryNode: 'delete',
  RawNode: 'raw',
};

/** The name of the first table a node names, depth first. */
function firstTable(node: unknown): string | undefined {
  if (!node || typeof node !== 'object') return undefined;
  const record = node as { kind?: string; table?: { identifier?: { name?: string } } };
  if (record.kind === 'TableNode') return record.table?.identifier?.name;
  for (const value of Object.values(node)) {
    const found = Array.isArray(value) ? value.map(firstTable).find(Boolean) : firstTable(value);
    if (found) return found;
  }
  return undefined;
}

export class QueryCounter implements KyselyPlugin {
  readonly queries: CountedQuery[] = [];

  transformQuery(args: PluginTransformQueryArgs): RootOperationNode {
    const node = args.node as OperationNode & { where?: unknown; groupBy?: unknown; from?: unknown; into?: unknown; table?: unknown };
    const target = node.kind === 'SelectQueryNode' || node.kind === 'DeleteQueryNode' ? node.from : node.kind === 'InsertQueryNode' ? node.into : node.table;
    this.queries.push({
      kind: KINDS[node.kind] ?? 'other',
      table: firstTable(target),
      filtered: node.where !== undefined,
      grouped: node.groupBy !== undefined,
    });
    return args.node;
  }

  async transformResult(args: PluginTransformResultArgs): Promise<QueryResult<UnknownRow>> {
    return args.result;
  }

  reset(): void {
    this.queries.length = 0;
  }

  /** The statements counted since the last reset that match `filter`. */
  count(filter: Partial<CountedQuery> = {}): number {
    return this.queries.filter((query) => Object.entries(filter).every(([key, value]) => query[key as keyof CountedQuery] === value)).length;
  }

  /** Statements that change something (inserts, updates, deletes) since the last reset. */
  writes(): CountedQuery[] {
    return this.queries.filter((query) => query.kind === 'insert' || query.kind === 'update' || query.kind === 'delete');
  }
}
