/**
 * A VM's TPM 2.0 moves with it: a value its guest extends into a PCR on one host is still there
 * after a live migration to another (QEMU carries the swtpm's state in the migration stream), and
 * the source's swtpm ends with its QEMU.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { after, before, describe, it } from 'node:test';
import type { Vm } from '../../src/wire/schemas.ts';
import { NubisInstance, runOnConsole } from '../helpers/nubis-instance.ts';

const PCR = 16; // the debug PCR: free for tests
const DIGEST = '5e'.repeat(32);

/** The pids of the swtpm processes whose command line names `text`. */
function swtpmsNaming(text: string): number[] {
  let pids: string;
  try {
    pids = execFileSync('pidof', ['swtpm'], { encoding: 'utf8' }).trim();
  } catch {
    return []; // pidof exits 1 when none runs
  }
  return pids
    .split(/\s+/)
    .map(Number)
    .filter((pid) => {
      try {
        return execFileSync('cat', [`/proc/${pid}/cmdline`], { encoding: 'utf8' }).includes(text);
      } catch {
        return false;
      }
    });
}

describe('vTPM in live migration', { skip: process.getuid?.() !== 0 ? 'needs root for network namespaces' : false }, () => {
  const nubis = new NubisInstance('vtpm-migration');
  let vm: Vm;

  before(async () => {
    await nubis.up(['--hosts', '2']);
    await nubis.cliJson(['network', 'create', 'tnet', '--subnet', '10.91.0.0/24']);
    vm = await nubis.cliJson<Vm>(['vm', 'create', 'tpm1', '--image', 'tiny', '--memory', '128', '--tpm', '--network', 'tnet', '--host', 'host-1']);
  });
  after(() => nubis.destroy());

  it('keeps a PCR value the guest extended before the migration', async () => {
    assert.equal(vm.tpm, true);
    assert.equal(swtpmsNaming(vm.id).length, 1, 'one swtpm runs for the VM');
    const extended = await runOnConsole(nubis, 'tpm1', `nubis-tool tpm-extend ${PCR} ${DIGEST}`);
    const before = /"value":"([0-9a-f]{64})"/.exec(extended)?.[1];
    assert.ok(before && before !== '0'.repeat(64), `the PCR changed: ${extended}`);
    const moved = await nubis.cliJson<{ to: string }>(['vm', 'migrate', 'tpm1', '--to', 'host-2', '--strategy', 'precopy']);
    assert.equal(moved.to, 'host-2');
    const shown = await nubis.cliJson<Vm>(['vm', 'show', 'tpm1']);
    assert.deepEqual([shown.host, shown.state], ['host-2', 'running']);
    const after = await runOnConsole(nubis, 'tpm1', `nubis-tool tpm-read ${PCR}`);
    assert.match(after, new RegExp(`"value":"${before}"`), 'the TPM state came along');
    // The source's swtpm ended with the source's QEMU: one swtpm for the VM, on its new host.
    for (let waited = 0; swtpmsNaming(vm.id).length > 1 && waited < 5_000; waited += 100) await new Promise((r) => setTimeout(r, 100));
    assert.equal(swtpmsNaming(vm.id).length, 1);
  });

  it('keeps the TPM running while its host agent restarts', async () => {
    const before = await runOnConsole(nubis, 'tpm1', `nubis-tool tpm-read ${PCR}`);
    const value = /"value":"([0-9a-f]{64})"/.exec(before)?.[1];
    assert.ok(value, before);
    const down = await nubis.cli(['down', '--keep-vms']);
    assert.equal(down.code, 0, down.stderr);
    assert.equal(swtpmsNaming(vm.id).length, 1, 'the swtpm runs on with its QEMU');
    await nubis.up(['--hosts', '2']);
    const after = await runOnConsole(nubis, 'tpm1', `nubis-tool tpm-read ${PCR}`);
    assert.match(after, new RegExp(`"value":"${value}"`));
  });

  it('ends the swtpm when the VM is deleted', async () => {
    const deleted = await nubis.cli(['vm', 'delete', 'tpm1']);
    assert.equal(deleted.code, 0, deleted.stderr);
    for (let waited = 0; swtpmsNaming(vm.id).length > 0 && waited < 5_000; waited += 100) await new Promise((r) => setTimeout(r, 100));
    assert.deepEqual(swtpmsNaming(vm.id), []);
  });
});
