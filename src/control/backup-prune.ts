/**
 * Which backups of one VM a retention policy lets go, the way Proxmox Backup Server's prune
 * decides (proxmox-backup `pbs-datastore/src/prune.rs`, documented under "Prune" in the PBS
 * manual): backups newest first, each rule in turn (last, hourly, daily, weekly, monthly,
 * yearly) keeps the newest backup of each of its N most recent periods that have a backup and
 * that no earlier rule already kept a backup of; whatever no rule keeps goes. Periods are those
 * that have backups, not the last N calendar periods: when backups failed for three days,
 * keep-daily 7 still keeps seven daily backups, reaching further back, rather than four.
 *
 * Periods are in UTC (PBS uses the server's local time; the control plane and its clients may
 * sit in different zones, and one zone for all keeps the answer the same everywhere). Weeks are
 * ISO 8601 weeks (Monday first, the week-year of their Thursday), as PBS's `%G/%V`.
 *
 * The newest of equal times is the one with the greater id, the order `nubis backup list` shows.
 * With no rule at all, every backup is kept (PBS's keep-all).
 */

/** A backup as pruning sees it: its id and when it was taken (ISO 8601). */
export interface PrunableBackup {
  id: string;
  createdAt: string;
}

/** How many of each to keep; a rule that is absent (or 0) keeps nothing by itself. */
export interface RetentionRules {
  keepLast?: number;
  keepHourly?: number;
  keepDaily?: number;
  keepWeekly?: number;
  keepMonthly?: number;
  keepYearly?: number;
}

/** The rules in the order PBS applies them, each with the period a backup falls in. */
const RULES: ReadonlyArray<{ rule: keyof RetentionRules; period: (at: Date, id: string) => string }> = [
  // Every backup is a period of its own: the N newest.
  { rule: 'keepLast', period: (_at, id) => id },
  { rule: 'keepHourly', period: (at) => at.toISOString().slice(0, 13) },
  { rule: 'keepDaily', period: (at) => at.toISOString().slice(0, 10) },
  { rule: 'keepWeekly', period: isoWeekOf },
  { rule: 'keepMonthly', period: (at) => at.toISOString().slice(0, 7) },
  { rule: 'keepYearly', period: (at) => at.toISOString().slice(0, 4) },
];

/** Whether `rules` keep anything less than everything. */
export function prunes(rules: RetentionRules): boolean {
  return RULES.some(({ rule }) => (rules[rule] ?? 0) > 0);
}

/**
 * The backups that `rules` do not keep, in the order given. `nowMs` guards against a clock that
 * went back: a backup dated after it (or with no readable date) cannot be placed in a period
 * among the others, so it is kept and counts for no rule; nothing is ever deleted on a guess.
 */
export function backupsToPrune<T extends PrunableBackup>(backups: readonly T[], rules: RetentionRules, nowMs: number): T[] {
  if (!prunes(rules)) return [];
  const dated = backups
    .map((backup) => ({ backup, at: Date.parse(backup.createdAt) }))
    .filter(({ at }) => Number.isFinite(at) && at <= nowMs)
    .sort((a, b) => b.at - a.at || (a.backup.id < b.backup.id ? 1 : a.backup.id > b.backup.id ? -1 : 0));
  const marks = new Map<string, 'keep' | 'remove'>();
  for (const { rule, period } of RULES) {
    const keep = rules[rule] ?? 0;
    if (keep <= 0) continue;
    // Periods an earlier rule already holds a backup of: this rule does not spend a place on them.
    const held = new Set(dated.filter(({ backup }) => marks.get(backup.id) === 'keep').map(({ backup, at }) => period(new Date(at), backup.id)));
    const chosen = new Set<string>();
    for (const { backup, at } of dated) {
      if (marks.has(backup.id)) continue;
      const of = period(new Date(at), backup.id);
      if (held.has(of)) continue;
      if (chosen.has(of)) {
        // An older backup of a period this rule kept a newer one of.
        marks.set(backup.id, 'remove');
        continue;
      }
      if (chosen.size >= keep) break;
      chosen.add(of);
      marks.set(backup.id, 'keep');
    }
  }
  const placed = new Set(dated.map(({ backup }) => backup.id));
  return backups.filter((backup) => placed.has(backup.id) && marks.get(backup.id) !== 'keep');
}

/** The ISO 8601 week of a UTC time, as `2026-W01` (the week-year of its Thursday). */
function isoWeekOf(at: Date): string {
  const day = Date.UTC(at.getUTCFullYear(), at.getUTCMonth(), at.getUTCDate());
  const mondayFirst = (at.getUTCDay() + 6) % 7;
  const thursday = new Date(day + (3 - mondayFirst) * 86_400_000);
  const year = thursday.getUTCFullYear();
  const week = Math.floor((thursday.getTime() - Date.UTC(year, 0, 1)) / (7 * 86_400_000)) + 1;
  return `${year}-W${String(week).padStart(2, '0')}`;
}
