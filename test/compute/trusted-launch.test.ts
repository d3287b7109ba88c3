/**
 * vTPM, UEFI and measured launch on a real VM: a VM boots with UEFI (OVMF) and a TPM 2.0 (swtpm)
 * that its guest extends and reads; every launch is measured from the QEMU process and `vm attest`
 * shows each measurement beside its expected value; a project that requires trusted launch gets
 * no VM from an image whose initrd changed (its QEMU stopped, the error naming the initrd).
 */
import assert from 'node:assert/strict';
import { appendFileSync, copyFileSync, existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { readTinyImage } from '../../src/images/build-tiny.ts';
import { cacheDir } from '../../src/core/paths.ts';
import type { Vm } from '../../src/wire/schemas.ts';
import type { VmAttestation } from '../../src/wire/trusted-launch-schemas.ts';
import type { Static } from '@sinclair/typebox';
import { NubisInstance, runOnConsole } from '../helpers/nubis-instance.ts';

type Attestation = Static<typeof VmAttestation>;
const PCR = 16; // the debug PCR: free for tests
const DIGEST = 'a1'.repeat(32);

describe('vTPM, UEFI and measured launch', () => {
  const nubis = new NubisInstance('trusted-launch');

  before(async () => {
    await nubis.up();
    // A copy of the tiny image under a name of its own, so its initrd can be changed later.
    const tiny = readTinyImage(cacheDir());
    assert.ok(tiny, 'the tiny image is built');
    const staging = join(nubis.dataDir, 'staging');
    mkdirSync(staging, { recursive: true });
    copyFileSync(tiny.kernelPath, join(staging, 'vmlinuz'));
    copyFileSync(tiny.initrdPath, join(staging, 'initrd.img'));
    const imported = await nubis.cli(['image', 'import', 'tl', '--kernel', join(staging, 'vmlinuz'), '--initrd', join(staging, 'initrd.img')]);
    assert.equal(imported.code, 0, imported.stderr);
    assert.equal((await nubis.cli(['project', 'create', 'secure'])).code, 0);
    const set = await nubis.cli(['project', 'set', 'secure', '--require-trusted-launch']);
    assert.equal(set.code, 0, set.stderr);
    assert.match(set.stdout, /secure requires trusted launch of its VMs/);
    assert.match((await nubis.cli(['project', 'show', 'secure'])).stdout, /^secure \(prj-[^)]+\), created .*, requires trusted launch$/m);
  });
  after(() => nubis.destroy());

  it('boots a VM with UEFI (OVMF) and a TPM 2.0 whose PCR its guest extends and reads', async () => {
    const created = await nubis.cli(['vm', 'create', 'uefi', '--image', 'tiny', '--memory', '256', '--tpm', '--firmware', 'uefi']);
    assert.equal(created.code, 0, created.stderr);
    assert.match(created.stdout, /Platform:\s+UEFI \(OVMF\), TPM 2.0/);
    const vm = await nubis.cliJson<Vm>(['vm', 'show', 'uefi']);
    assert.equal(vm.state, 'running');
    assert.ok(vm.readyAt, 'the guest printed its readiness line');
    // OVMF measured itself into the TPM: PCR 0 (the firmware's code) is no longer all zeros.
    const firmwarePcr = await runOnConsole(nubis, 'uefi', 'nubis-tool tpm-read 0');
    assert.match(firmwarePcr, /"pcr":0,"bank":"sha256","value":"[0-9a-f]{64}"/);
    assert.doesNotMatch(firmwarePcr, /"value":"0{64}"/);
    const extended = await runOnConsole(nubis, 'uefi', `nubis-tool tpm-extend ${PCR} ${DIGEST}`);
    const value = /"value":"([0-9a-f]{64})"/.exec(extended)?.[1];
    assert.ok(value && value !== '0'.repeat(64), `the PCR changed: ${extended}`);
    const read = await runOnConsole(nubis, 'uefi', `nubis-tool tpm-read ${PCR}`);
    assert.match(read, new RegExp(`"pcr":${PCR},"bank":"sha256","value":"${value}"`));
    const attestation = await nubis.cliJson<Attestation>(['vm', 'attest', 'uefi']);
    const firmware = attestation.components.find((c) => c.component === 'firmware');
    assert.equal(firmware?.path, '/usr/share/OVMF/OVMF_CODE_4M.fd', 'the firmware QEMU holds open is measured');
  });

  /** A quote of PCRs 0-7 over `nonce` from the guest, as nubis-tool printed it, in a file. */
  async function quoteFile(nonce: string, change?: (quote: Record<string, unknown>) => void): Promise<string> {
    const printed = await runOnConsole(nubis, 'uefi', `nubis-tool tpm-quote ${nonce}`);
    const json = /\{"ok":true,"nonce"[^\r\n]*\}/.exec(printed)?.[0];
    assert.ok(json, `tpm-quote printed a quote: ${printed}`);
    const quote = JSON.parse(json) as Record<string, unknown>;
    change?.(quote);
    const file = join(nubis.dataDir, `quote-${nonce}.json`);
    writeFileSync(file, JSON.stringify(quote));
    return file;
  }

  it("verifies the guest's TPM quote of its PCRs and checks them against the values first quoted", async () => {
    const first = await nubis.cliJson<Attestation>(['vm', 'attest', 'uefi', '--quote', await quoteFile('00112233445566778899aabbccddeeff')]);
    assert.equal(first.verdict, 'match');
    assert.deepEqual(
      first.components.map((c) => c.component),
      ['pcr:0:uefi', 'pcr:1', 'pcr:2', 'pcr:3', 'pcr:4', 'pcr:5', 'pcr:6', 'pcr:7'],
    );
    assert.notEqual(first.components[0].measured, '0'.repeat(64), 'OVMF measured its own code into PCR 0');
    const again = await nubis.cli(['vm', 'attest', 'uefi', '--quote', await quoteFile('ffeeddccbbaa99887766554433221100')]);
    assert.equal(again.code, 0, again.stderr);
    assert.match(again.stdout, /uefi: match/);
    assert.match(again.stdout, /pcr:0:uefi\s+[0-9a-f]{16}\.\.\.\s+[0-9a-f]{16}\.\.\.\s+yes/);
    // A PCR value changed after the TPM signed: refused, naming why.
    const forged = await nubis.cli([
      'vm',
      'attest',
      'uefi',
      '--quote',
      await quoteFile('0102030405060708', (quote) => ((quote.pcrs as string[])[4] = 'ab'.repeat(32))),
    ]);
    assert.notEqual(forged.code, 0);
    assert.match(forged.stderr, /The TPM quote does not verify: the PCR values given are not the ones quoted/);
    const replayed = await nubis.cli(['vm', 'attest', 'uefi', '--quote', await quoteFile('0102030405060708', (quote) => (quote.nonce = '0807060504030201'))]);
    assert.match(replayed.stderr, /it carries another nonce than the one asked/);
  });

  it('measures a launch and attests it against the values its first launch recorded', async () => {
    const created = await nubis.cli(['vm', 'create', 'first', '--image', 'tl', '--memory', '128', '--project', 'secure']);
    assert.equal(created.code, 0, created.stderr);
    const attestation = await nubis.cliJson<Attestation>(['vm', 'attest', 'first', '--project', 'secure']);
    assert.equal(attestation.verdict, 'match');
    assert.equal(attestation.requireTrustedLaunch, true);
    const names = attestation.components.map((c) => c.component);
    for (const component of ['qemu-binary', 'command-line', 'kernel', 'initrd']) assert.ok(names.includes(component), `${component} measured: ${names}`);
    const initrd = attestation.components.find((c) => c.component === 'initrd')!;
    assert.equal(initrd.path, join(nubis.dataDir, 'images', 'tl', 'initrd.img'), 'measured from the file QEMU holds open');
    assert.equal(initrd.expected, initrd.measured);
    assert.equal(attestation.components.find((c) => c.component === 'qemu-binary')?.path, '/usr/bin/qemu-system-x86_64');
    const shown = await nubis.cli(['vm', 'attest', 'first', '--project', 'secure']);
    assert.equal(shown.code, 0, shown.stderr);
    assert.match(shown.stdout, /first: match, launch measured .* \(trusted launch required by its project\)/);
    assert.match(shown.stdout, /initrd\s+[0-9a-f]{16}\.\.\.\s+[0-9a-f]{16}\.\.\.\s+yes/);
    const api = await nubis.api<Attestation>('GET', '/v1/vms/first/attestation?project=secure');
    assert.equal(api.status, 200);
    assert.deepEqual(api.body.components, attestation.components);
  });

  it('refuses a VM whose initrd changed in a trusted-launch project, and starts nothing', async () => {
    appendFileSync(join(nubis.dataDir, 'images', 'tl', 'initrd.img'), Buffer.alloc(512, 7));
    const refused = await nubis.cli(['vm', 'create', 'second', '--image', 'tl', '--memory', '128', '--project', 'secure']);
    assert.notEqual(refused.code, 0);
    assert.match(refused.stderr, /TRUSTED_LAUNCH_MISMATCH|was not started: its launch does not match/);
    assert.match(refused.stderr, /initrd \(.*images\/tl\/initrd\.img\): measured [0-9a-f]{16}\.\.\., expected [0-9a-f]{16}\.\.\./);
    const shown = await nubis.cli(['vm', 'show', 'second', '--project', 'secure']);
    assert.notEqual(shown.code, 0, 'the refused VM does not exist');
    // The VM that started from the image as imported does not start again from the changed one.
    assert.equal((await nubis.cli(['vm', 'stop', 'first', '--force', '--project', 'secure'])).code, 0);
    const restart = await nubis.cli(['vm', 'start', 'first', '--project', 'secure']);
    assert.notEqual(restart.code, 0);
    assert.match(restart.stderr, /VM first was not started: .*initrd/);
    const first = await nubis.cliJson<Vm>(['vm', 'show', 'first', '--project', 'secure']);
    assert.equal(first.state, 'stopped');
    assert.equal(first.pid, undefined, 'no QEMU runs for it');
    // Outside the trusted-launch project the same image starts, and its attestation says what differs.
    const created = await nubis.cli(['vm', 'create', 'other', '--image', 'tl', '--memory', '128', '--no-wait']);
    assert.equal(created.code, 0, created.stderr);
    const attestation = await nubis.cliJson<Attestation>(['vm', 'attest', 'other']);
    assert.equal(attestation.verdict, 'mismatch');
    assert.equal(attestation.components.find((c) => c.component === 'initrd')?.matches, false);
    assert.equal(attestation.requireTrustedLaunch, false);
  });

  it('refuses bad input with a clear error', async () => {
    const firmware = await nubis.cli(['vm', 'create', 'bad', '--image', 'tiny', '--firmware', 'efi']);
    assert.notEqual(firmware.code, 0);
    assert.match(firmware.stderr, /--firmware takes bios or uefi, not efi/);
    const api = await nubis.api<{ code: string; message: string }>('POST', '/v1/vms', { name: 'bad', image: 'tiny', cpus: 1, memoryMb: 128, firmware: 'efi' });
    assert.equal(api.status, 400);
    const nothing = await nubis.cli(['project', 'set', 'secure']);
    assert.notEqual(nothing.code, 0);
    assert.match(nothing.stderr, /Give a requirement, e.g. --require region=eu or --require-trusted-launch/);
    const missing = await nubis.cli(['vm', 'attest', 'nosuch']);
    assert.notEqual(missing.code, 0);
    assert.match(missing.stderr, /nosuch/);
    assert.equal(existsSync(join(nubis.dataDir, 'images', 'tl', 'initrd.img')), true);
  });
});
