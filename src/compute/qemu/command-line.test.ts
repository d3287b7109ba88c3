import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { VmSpec } from '../vm-spec.ts';
import { buildQemuArgs } from './command-line.ts';

const paths = {
  qmpSocket: '/run/vm/qmp.sock',
  consoleSocket: '/run/vm/console.sock',
  vncSocket: '/run/vm/vnc.sock',
  serialLog: '/run/vm/serial.log',
  pidFile: '/run/vm/qemu.pid',
};

const spec: VmSpec = {
  id: 'vm-1',
  name: 'web1',
  cpus: 2,
  memoryMb: 256,
  boot: { kind: 'kernel', kernelPath: '/img/vmlinuz', initrdPath: '/img/initrd', cmdline: 'console=ttyS0 nubis.name=web1' },
  disks: [
    { id: 'disk0', kind: 'file', path: '/data/a,b.qcow2', format: 'qcow2' },
    { id: 'disk1', kind: 'nbd', socketPath: '/run/nbd.sock', exportName: 'pool1/vol1' },
  ],
  nics: [{ id: 'net0', mac: '52:54:00:12:34:56', mode: 'user', forwards: [{ protocol: 'tcp', hostAddress: '127.0.0.1', hostPort: 8080, guestPort: 80 }] }],
};

/** A storage-node volume reached over TCP (a host that does not share the node's filesystem). */
const tcpDisk: VmSpec['disks'][number] = {
  id: 'disk1',
  kind: 'nbd',
  socketPath: '/run/nbd.sock',
  exportName: 'pool1/vol1',
  tcp: { host: '172.31.0.1', port: 10809 },
};

/** The value that follows `flag` each time it appears. */
function valuesOf(args: string[], flag: string): string[] {
  return args.flatMap((arg, index) => (arg === flag ? [args[index + 1]] : []));
}

describe('buildQemuArgs', () => {
  it('fixes machine type and CPU model so the device model is the same on every host', () => {
    const args = buildQemuArgs(spec, paths, { accelerator: 'tcg' });
    assert.deepEqual(valuesOf(args, '-machine'), ['pc-q35-7.2,accel=tcg']);
    assert.deepEqual(valuesOf(args, '-cpu'), ['qemu64']);
    // A spec without a maximum or layout (as every VM before them had), or with the default one,
    // keeps the short form QEMU reads as one socket of its vCPUs: its measured command line stays.
    assert.deepEqual(valuesOf(args, '-smp'), ['2']);
    const explicit = buildQemuArgs({ ...spec, maxCpus: 2, cpuTopology: { sockets: 1, cores: 2, threads: 1 } }, paths, { accelerator: 'tcg' });
    assert.deepEqual(valuesOf(explicit, '-smp'), ['2']);
    assert.deepEqual(valuesOf(args, '-m'), ['256M']);
  });

  it('starts the vCPUs present of a maximum laid out in sockets, cores and threads', () => {
    const args = buildQemuArgs({ ...spec, cpus: 3, maxCpus: 8, cpuTopology: { sockets: 2, cores: 2, threads: 2 } }, paths, { accelerator: 'tcg' });
    assert.deepEqual(valuesOf(args, '-smp'), ['cpus=3,maxcpus=8,sockets=2,cores=2,threads=2']);
  });

  it('refuses, where the command is built, a vCPU layout QEMU would refuse or read otherwise', () => {
    const bad: Array<Partial<VmSpec>> = [
      { cpus: 5, maxCpus: 4 },
      { cpus: 1, maxCpus: 4, cpuTopology: { sockets: 2, cores: 2, threads: 2 } },
      { cpus: 65 },
      { cpus: 0 },
      { cpus: 1.5 },
      { cpus: 1, maxCpus: 4, cpuTopology: { sockets: 4, cores: 1, threads: '1,maxcpus=9' as unknown as number } },
    ];
    for (const vcpus of bad) assert.throws(() => buildQemuArgs({ ...spec, ...vcpus }, paths, { accelerator: 'tcg' }), { code: 'VM_CPUS_INVALID' });
  });

  it('sandboxes QEMU and exposes QMP, a logged serial console and VNC on unix sockets', () => {
    const args = buildQemuArgs(spec, paths, { accelerator: 'kvm' });
    assert.match(valuesOf(args, '-sandbox')[0], /^on,.*spawn=deny/);
    assert.deepEqual(valuesOf(args, '-qmp'), ['unix:/run/vm/qmp.sock,server=on,wait=off']);
    assert.match(valuesOf(args, '-chardev')[0], /path=\/run\/vm\/console\.sock,.*logfile=\/run\/vm\/serial\.log/);
    assert.deepEqual(valuesOf(args, '-vnc'), ['unix:/run/vm/vnc.sock,password=on']);
    assert.deepEqual(valuesOf(args, '-pidfile'), ['/run/vm/qemu.pid']);
  });

  it('adds virtio disks and NICs, escaping commas in paths', () => {
    const args = buildQemuArgs(spec, paths, { accelerator: 'tcg' });
    assert.deepEqual(valuesOf(args, '-blockdev'), [
      'driver=qcow2,node-name=disk0,read-only=off,file.driver=file,file.filename=/data/a,,b.qcow2',
      'driver=raw,node-name=disk1,read-only=off,file.driver=nbd,file.server.type=unix,file.server.path=/run/nbd.sock,file.export=pool1/vol1',
    ]);
    assert.ok(valuesOf(args, '-device').includes('virtio-blk-pci,drive=disk0,id=disk0-disk'));
    assert.deepEqual(valuesOf(args, '-netdev'), ['user,id=net0,hostfwd=tcp:127.0.0.1:8080-:80']);
    assert.ok(valuesOf(args, '-device').includes('virtio-net-pci,netdev=net0,mac=52:54:00:12:34:56,id=net0-dev'));
    assert.deepEqual(valuesOf(args, '-append'), ['console=ttyS0 nubis.name=web1']);
  });

  it('gives every VM a balloon with free page reporting, the guest RAM being its maximum', () => {
    const args = buildQemuArgs({ ...spec, memoryTargetMb: 128 }, paths, { accelerator: 'tcg' });
    assert.deepEqual(valuesOf(args, '-m'), ['256M'], 'the balloon, not -m, holds the current memory');
    assert.ok(valuesOf(args, '-device').includes('virtio-balloon-pci,id=balloon0,free-page-reporting=on'));
  });

  it('reaches a storage node over TCP with TLS and the credentials folder it is given, and only so', () => {
    const withTcp = { ...spec, disks: [tcpDisk] };
    const args = buildQemuArgs(withTcp, { ...paths, storageTlsDir: '/run/vm/storage-tls' }, { accelerator: 'tcg' });
    assert.deepEqual(valuesOf(args, '-object'), ['tls-creds-x509,id=storage-tls,endpoint=client,verify-peer=on,dir=/run/vm/storage-tls']);
    assert.deepEqual(valuesOf(args, '-blockdev'), [
      'driver=raw,node-name=disk1,read-only=off,file.driver=nbd,file.server.type=inet,file.server.host=172.31.0.1,file.server.port=10809,file.tls-creds=storage-tls,file.export=pool1/vol1',
    ]);
    assert.deepEqual(valuesOf(buildQemuArgs(spec, paths, { accelerator: 'tcg' }), '-object'), [], 'no TCP disk: no credentials');
    assert.throws(
      () => buildQemuArgs(withTcp, paths, { accelerator: 'tcg' }),
      (error: Error & { code?: string }) => error.code === 'QEMU_INVALID_OPTION' && /no storage credentials/.test(error.message),
    );
  });

  it('waits for an incoming migration when asked', () => {
    const args = buildQemuArgs(spec, paths, { accelerator: 'tcg', incoming: 'tcp:0.0.0.0:4444' });
    assert.deepEqual(valuesOf(args, '-incoming'), ['tcp:0.0.0.0:4444']);
  });

  it('refuses a tap NIC without a device name', () => {
    assert.throws(
      () => buildQemuArgs({ ...spec, nics: [{ id: 'net0', mac: '52:54:00:00:00:01', mode: 'tap' }] }, paths, { accelerator: 'tcg' }),
      /no tap device/,
    );
  });

  it('names a tap by its device, or by the descriptor the launcher opened it on', () => {
    const tapSpec: VmSpec = {
      ...spec,
      nics: [{ id: 'net0', mac: '52:54:00:00:00:01', mode: 'tap', tapName: 'ntap-ab12', network: { id: 'net-1', vni: 7, mtu: 1450 } }],
    };
    assert.ok(
      valuesOf(buildQemuArgs(tapSpec, paths, { accelerator: 'tcg' }), '-device').includes(
        'virtio-net-pci,netdev=net0,mac=52:54:00:00:00:01,id=net0-dev,host_mtu=1450',
      ),
    );
    assert.deepEqual(valuesOf(buildQemuArgs(tapSpec, paths, { accelerator: 'tcg' }), '-netdev'), ['tap,id=net0,ifname=ntap-ab12,script=no,downscript=no']);
    const handed = buildQemuArgs(tapSpec, paths, { accelerator: 'tcg', platform: { tapFds: { net0: 5 } } });
    assert.deepEqual(valuesOf(handed, '-netdev'), ['tap,id=net0,fd=5']);
    for (const fd of [0, 2, 256, 1.5])
      assert.throws(() => buildQemuArgs(tapSpec, paths, { accelerator: 'tcg', platform: { tapFds: { net0: fd } } }), /not a descriptor/);
  });

  it('refuses, field by field, a value that would add options to the QEMU command line', () => {
    const userNic = spec.nics[0];
    const forward = userNic.forwards![0];
    const attempts: Array<[string, VmSpec]> = [
      [
        'published host address',
        { ...spec, nics: [{ ...userNic, forwards: [{ ...forward, hostAddress: '127.0.0.1:18081-:80,tftp=/etc,hostfwd=tcp:127.0.0.1' }] }] },
      ],
      ['published host port', { ...spec, nics: [{ ...userNic, forwards: [{ ...forward, hostPort: 70000 }] }] }],
      ['published guest port', { ...spec, nics: [{ ...userNic, forwards: [{ ...forward, guestPort: Number.POSITIVE_INFINITY }] }] }],
      ['published protocol', { ...spec, nics: [{ ...userNic, forwards: [{ ...forward, protocol: 'tcp,tftp=/' as 'tcp' }] }] }],
      ['NIC id', { ...spec, nics: [{ ...userNic, id: 'net0,tftp=/etc' }] }],
      ['MAC address', { ...spec, nics: [{ ...userNic, mac: '52:54:00:12:34:56,romfile=/etc/shadow' }] }],
      ['tap name', { ...spec, nics: [{ id: 'net1', mac: '52:54:00:12:34:57', mode: 'tap', tapName: 'tap0,script=/bin/sh' }] }],
      ['disk id', { ...spec, disks: [{ id: 'disk0,file.filename=/etc/shadow', kind: 'file', path: '/data/a.qcow2', format: 'qcow2' }] }],
      ['disk path', { ...spec, disks: [{ id: 'disk0', kind: 'file', path: '/data/a.qcow2\n-append', format: 'qcow2' }] }],
      ['NBD export', { ...spec, disks: [{ id: 'disk1', kind: 'nbd', socketPath: '/run/nbd.sock', exportName: 'p1/v\u0000' }] }],
      ['storage node address', { ...spec, disks: [{ ...tcpDisk, tcp: { host: '10.0.0.1,file.server.type=unix', port: 10809 } }] }],
      ['storage node port', { ...spec, disks: [{ ...tcpDisk, tcp: { host: '10.0.0.1', port: 70000 } }] }],
      ['kernel command line', { ...spec, boot: { ...spec.boot, cmdline: 'console=ttyS0\nroot=/dev/sda' } as VmSpec['boot'] }],
    ];
    for (const [what, hostile] of attempts) {
      assert.throws(
        () => buildQemuArgs(hostile, { ...paths, storageTlsDir: '/run/vm/storage-tls' }, { accelerator: 'tcg' }),
        (error: Error & { code?: string }) => error.code === 'QEMU_INVALID_OPTION' && error.message.includes(what),
        what,
      );
    }
    // A comma in a path is escaped, not refused: QEMU reads ",," as a comma.
    assert.ok(buildQemuArgs(spec, paths, { accelerator: 'tcg' }).some((arg) => arg.includes('file.filename=/data/a,,b.qcow2')));
  });
});
