import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { afterEach, beforeEach, describe, it } from 'node:test';
import type { QemuProcessEvents, QemuRunState } from '../compute/qemu/qemu-process.ts';
import type { QmpClient } from '../compute/qmp/qmp-client.ts';
import type { VmSpec } from '../compute/vm-spec.ts';
import type { QemuDriver } from './vm-qemu.ts';
import { VmSupervisor } from './vm-supervisor.ts';

/** A QEMU process that answers at once, or hangs on the calls a test holds, and records every call. */
class FakeQemu {
  readonly pid = 4242;
  /** Answers every command (the balloon's at launch) with nothing. */
  readonly qmp = { execute: async () => ({}) } as unknown as QmpClient;
  state: QemuRunState;
  stopRequested = false;
  /** What `query-migrate` reports. */
  migration = 'none';
  readonly calls: string[] = [];
  readonly exited: Promise<QemuRunState>;
  #end!: (state: QemuRunState) => void;
  readonly #holds = new Map<string, Promise<void>>();

  readonly #events: QemuProcessEvents;

  constructor(state: QemuRunState, events: QemuProcessEvents = {}) {
    this.state = state;
    this.#events = events;
    this.exited = new Promise((resolve) => (this.#end = resolve));
  }

  /** Makes calls of `name` hang until the returned function is called. */
  hold(name: string): () => void {
    let release!: () => void;
    this.#holds.set(name, new Promise((resolve) => (release = resolve)));
    return () => {
      this.#holds.delete(name);
      release();
    };
  }

  #setState(state: QemuRunState): void {
    this.state = state;
    this.#events.onState?.(state, 'fake');
  }

  async #call(name: string): Promise<void> {
    this.calls.push(name);
    await this.#holds.get(name);
  }

  async stop(): Promise<'graceful'> {
    this.stopRequested = true;
    await this.#call('stop');
    this.#setState('stopped');
    this.#end('stopped');
    return 'graceful';
  }
  detach(): void {
    this.#end(this.state);
  }
  async pause(): Promise<void> {
    await this.#call('pause');
    this.#setState('paused');
  }
  async resume(): Promise<void> {
    await this.#call('resume');
    this.#setState('running');
  }
  async queryRunState(): Promise<QemuRunState> {
    await this.#call('queryRunState');
    return this.state;
  }
  async migrationStatus(): Promise<Record<string, unknown>> {
    await this.#call('migrationStatus');
    return { status: this.migration };
  }
  async diskMirrors(): Promise<Array<{ disk: string; lengthBytes: number; copiedBytes: number; ready: boolean; status: string }>> {
    await this.#call('diskMirrors');
    return [];
  }
  async startMigration(): Promise<void> {
    await this.#call('startMigration');
    this.migration = 'active';
  }
  reset = () => this.#call('reset');
  attachDisk = () => this.#call('attachDisk');
  detachDisk = () => this.#call('detachDisk');
  setDiskLimits = () => this.#call('setDiskLimits');
  setMigrationCapabilities = () => this.#call('setMigrationCapabilities');
  acceptIncomingMigration = () => this.#call('acceptIncomingMigration');
  loadMigrationTls = () => this.#call('loadMigrationTls');
  setMigrationParameters = () => this.#call('setMigrationParameters');
  sampleDirtyRate = async () => {
    await this.#call('sampleDirtyRate');
    return 1;
  };
  blockStats = async () => ({ readBytes: 0, writtenBytes: 0 });
  pauseMigration = () => this.#call('pauseMigration');
  recoverIncomingMigration = () => this.#call('recoverIncomingMigration');
  resumeMigration = () => this.#call('resumeMigration');
  continueMigration = () => this.#call('continueMigration');
  startPostcopy = () => this.#call('startPostcopy');
  cancelMigration = () => this.#call('cancelMigration');
  exportDisksForMirror = () => this.#call('exportDisksForMirror');
  stopDiskExports = () => this.#call('stopDiskExports');
  startDiskMirrors = () => this.#call('startDiskMirrors');
  endDiskMirrors = () => this.#call('endDiskMirrors');
  announceSelf = () => this.#call('announceSelf');
  setVncPassword = () => this.#call('setVncPassword');
  expireVncPassword = () => this.#call('expireVncPassword');
}

const spec: VmSpec = {
  id: 'vm-test-1',
  name: 'web1',
  cpus: 1,
  memoryMb: 64,
  // The agent opens the boot files before QEMU starts (launch-platform.ts): they must exist.
  boot: { kind: 'kernel', kernelPath: '/dev/null', initrdPath: '/dev/null', cmdline: '' },
  disks: [],
  nics: [],
};

/** True when `promise` has settled within 50 ms. */
async function settlesSoon(promise: Promise<unknown>): Promise<boolean> {
  return Promise.race([
    promise.then(
      () => true,
      () => true,
    ),
    delay(50).then(() => false),
  ]);
}

describe('VmSupervisor and ManagedVm queue rules (fake QEMU)', () => {
  let vmsDir: string;
  let launched: FakeQemu[];
  let attachable: FakeQemu | undefined;
  let supervisor: VmSupervisor;

  beforeEach(async () => {
    vmsDir = await mkdtemp(join(tmpdir(), 'nubis-managed-vm-'));
    launched = [];
    attachable = undefined;
    const qemu: QemuDriver = {
      launch: async (_spec, _dir, options) => {
        const fake = new FakeQemu(options.incoming ? 'incoming' : 'running', options.events);
        launched.push(fake);
        return fake;
      },
      attach: async () => attachable,
    };
    supervisor = new VmSupervisor({ vmsDir, accelerator: 'tcg', qemu });
  });

  afterEach(async () => {
    supervisor.detachAll();
    await delay(50); // state saves made without waiting end first
    await rm(vmsDir, { recursive: true, force: true });
  });

  it('runs lifecycle actions one after another in the order asked', async () => {
    await supervisor.create(spec);
    const qemu = launched[0];
    const release = qemu.hold('pause');
    const paused = supervisor.pause(spec.id);
    const resumed = supervisor.resume(spec.id);
    assert.equal(await settlesSoon(resumed), false, 'resume waits behind the pause');
    release();
    assert.equal((await paused).state, 'paused');
    assert.equal((await resumed).state, 'running');
  });

  it('refuses a lifecycle action with VM_BUSY while an outgoing stream runs, and lets it through once QEMU reports it completed', async () => {
    await supervisor.create(spec);
    const qemu = launched[0];
    await supervisor.migrateOut(spec.id, 'tcp:10.0.0.2:4444', { capabilities: {}, downtimeLimitMs: 300 });
    await assert.rejects(supervisor.stop(spec.id), { code: 'VM_BUSY' });
    await assert.rejects(supervisor.delete(spec.id), { code: 'VM_BUSY' }, 'a source in migration is never deleted');
    qemu.migration = 'completed';
    await supervisor.delete(spec.id);
    assert.equal(existsSync(join(vmsDir, spec.id)), false);
  });

  it('refuses to start a migration while a lifecycle action runs', async () => {
    await supervisor.create(spec);
    const release = launched[0].hold('pause');
    const paused = supervisor.pause(spec.id);
    await assert.rejects(supervisor.migrateOut(spec.id, 'tcp:10.0.0.2:4444', { capabilities: {}, downtimeLimitMs: 300 }), { code: 'VM_BUSY' });
    release();
    await paused;
  });

  it('runs migration-control calls one at a time, and the polled reads without waiting', async () => {
    await supervisor.create(spec);
    const qemu = launched[0];
    await supervisor.migrateOut(spec.id, 'tcp:10.0.0.2:4444', { capabilities: {}, downtimeLimitMs: 300 });
    const release = qemu.hold('setMigrationParameters');
    const widened = supervisor.setMigrationParameters(spec.id, { downtimeLimitMs: 500 });
    const switched = supervisor.startPostcopy(spec.id);
    assert.equal(await settlesSoon(switched), false, 'post-copy waits for the parameters call');
    assert.equal(qemu.calls.includes('startPostcopy'), false);
    assert.deepEqual(await supervisor.diskMirrors(spec.id), []);
    assert.deepEqual(await supervisor.migrationStatus(spec.id), { status: 'active' });
    assert.deepEqual(supervisor.pauseTimes(spec.id), {});
    release();
    await widened;
    await switched;
  });

  it('lets post-copy recovery through while an activation hangs on in-band QMP, and refuses other actions during the incoming migration', async () => {
    await supervisor.prepareIncoming(spec, 'tcp:0.0.0.0:4444', { 'postcopy-ram': true }, {});
    const qemu = launched[0];
    await assert.rejects(supervisor.reboot(spec.id), { code: 'VM_BUSY' });
    // The destination's main loop waits for a missing page: in-band QMP gets no answer.
    const release = qemu.hold('migrationStatus');
    const activated = supervisor.activateIncoming(spec.id);
    assert.equal(await settlesSoon(activated), false);
    assert.equal(await settlesSoon(supervisor.pauseMigration(spec.id)), true, 'pause is not held behind the activation');
    assert.equal(await settlesSoon(supervisor.recoverIncoming(spec.id, 'tcp:0.0.0.0:4444')), true, 'recover is not held behind the activation');
    assert.deepEqual(supervisor.pauseTimes(spec.id), {});
    qemu.state = 'running';
    qemu.migration = 'completed';
    release();
    assert.equal((await activated).state, 'running');
    await supervisor.stop(spec.id); // an ordinary VM now
  });

  it('lets the delete of a destination through during its migration (the rollback)', async () => {
    await supervisor.prepareIncoming(spec, 'tcp:0.0.0.0:4444', {}, {});
    await supervisor.delete(spec.id);
    assert.deepEqual(supervisor.list(), []);
    assert.equal(launched[0].stopRequested, true);
  });

  it('fails calls that waited behind a delete with VM_NOT_FOUND', async () => {
    await supervisor.create(spec);
    const release = launched[0].hold('stop');
    const deleted = supervisor.delete(spec.id);
    const started = supervisor.start(spec.id);
    release();
    await deleted;
    await assert.rejects(started, { code: 'VM_NOT_FOUND' });
  });

  describe('adoption after an agent restart', () => {
    const incomingRecord = async (): Promise<void> => {
      await mkdir(join(vmsDir, spec.id), { recursive: true });
      const record = { spec, desired: 'running', status: { id: spec.id, name: spec.name, state: 'incoming' }, mirrorCopies: [] };
      await writeFile(join(vmsDir, spec.id, 'vm.json'), JSON.stringify(record));
    };

    it('reaps an incoming VM whose QEMU runs but reports its migration failed', async () => {
      await incomingRecord();
      attachable = new FakeQemu('incoming');
      attachable.migration = 'failed';
      await supervisor.adoptAll();
      assert.deepEqual(supervisor.list(), []);
      assert.equal(attachable.stopRequested, true);
      assert.equal(existsSync(join(vmsDir, spec.id)), false);
    });

    it('keeps an incoming VM whose QEMU still listens, and keeps refusing other actions on it', async () => {
      await incomingRecord();
      attachable = new FakeQemu('incoming');
      attachable.migration = 'setup';
      await supervisor.adoptAll();
      assert.equal(supervisor.status(spec.id).state, 'incoming');
      await assert.rejects(supervisor.stop(spec.id), { code: 'VM_BUSY' });
    });

    it('leaves an incoming VM alone when its QEMU runs but does not answer', async () => {
      await incomingRecord();
      const qemu: QemuDriver = {
        launch: async () => {
          throw new Error('not used');
        },
        attach: async () => {
          throw new Error('QMP_TIMEOUT');
        },
      };
      supervisor = new VmSupervisor({ vmsDir, accelerator: 'tcg', qemu });
      await supervisor.adoptAll();
      assert.equal(supervisor.status(spec.id).state, 'incoming');
      assert.equal(existsSync(join(vmsDir, spec.id, 'vm.json')), true);
    });
  });
});
