/**
 * The cluster's counter of VM uids (compute/vm-user.ts): each new VM gets the next one, never
 * reused, so a uid names one VM for as long as the cluster lives. The control plane is the only
 * writer of VM records, so the counter is kept in memory, read once from the highest uid
 * recorded; the unique index on `vms.unix_uid` catches any mistake in that.
 */
import { NubisError } from '../core/errors.ts';
import { VM_UID_FIRST, VM_UID_LAST } from '../compute/vm-user.ts';
import type { Db } from '../state/database.ts';

export class VmUidCounter {
  readonly #db: Db;
  #last: Promise<number> | undefined;

  constructor(db: Db) {
    this.#db = db;
  }

  /** The uid of the next new VM. */
  async next(): Promise<number> {
    this.#last ??= this.#db
      .selectFrom('vms')
      .select((eb) => eb.fn.max('unix_uid').as('last'))
      .executeTakeFirst()
      .then((row) => Number(row?.last ?? VM_UID_FIRST - 1));
    const previous = this.#last;
    const uid = (this.#last = previous.then((last) => last + 1));
    const taken = await uid;
    if (taken > VM_UID_LAST)
      throw new NubisError('QUOTA_EXCEEDED', `This cluster has created ${VM_UID_LAST - VM_UID_FIRST + 1} VMs, all the uids VMs run as; no more can be created`);
    return taken;
  }
}
