import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { platformArgs } from './platform-args.ts';

describe('platformArgs', () => {
  it('adds nothing for a VM that asks for no TPM, no UEFI and no paused start', () => {
    assert.deepEqual(platformArgs({ name: 'web1' }, undefined), []);
    assert.deepEqual(platformArgs({ name: 'web1', firmware: 'bios' }, {}), []);
  });

  it('connects a TPM 2.0 CRB device to the VM swtpm socket, commas escaped', () => {
    const args = platformArgs({ name: 'web1', tpm: true }, { tpmSocket: '/vms/a,b/swtpm.sock' });
    assert.deepEqual(args, [
      '-chardev',
      'socket,id=chrtpm,path=/vms/a,,b/swtpm.sock',
      '-tpmdev',
      'emulator,id=tpm0,chardev=chrtpm',
      '-device',
      'tpm-crb,tpmdev=tpm0',
    ]);
  });

  it('puts OVMF code (read-only) and the VM own variable store in the two pflash drives', () => {
    const args = platformArgs({ name: 'web1', firmware: 'uefi' }, { uefi: { codePath: '/usr/share/OVMF/OVMF_CODE_4M.fd', varsPath: '/vms/1/OVMF_VARS.fd' } });
    assert.ok(args.includes('driver=file,node-name=fw-code-file,filename=/usr/share/OVMF/OVMF_CODE_4M.fd,read-only=on'));
    assert.ok(args.includes('driver=file,node-name=fw-vars-file,filename=/vms/1/OVMF_VARS.fd'));
    assert.equal(args[args.indexOf('-machine') + 1], 'pflash0=fw-code,pflash1=fw-vars');
  });

  it('starts paused for a launch checked before it runs', () => {
    assert.deepEqual(platformArgs({ name: 'web1' }, { startPaused: true }), ['-S']);
  });

  it('refuses a TPM or UEFI VM whose files were not prepared, and a path with a control character', () => {
    assert.throws(() => platformArgs({ name: 'web1', tpm: true }, {}), /VM web1 asks for a TPM but no swtpm socket was prepared/);
    assert.throws(() => platformArgs({ name: 'web1', firmware: 'uefi' }, {}), /VM web1 boots UEFI but no firmware was prepared/);
    assert.throws(() => platformArgs({ name: 'web1', tpm: true }, { tpmSocket: '/vms/1/\nswtpm.sock' }), { code: 'QEMU_INVALID_OPTION' });
  });
});
