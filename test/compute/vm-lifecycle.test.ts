/**
 * The foundation end to end, with real processes: `nubis up`, a tiny VM booted through the API
 * and driven through the CLI, the guest answering HTTP, agent restart and QEMU crash, bad input,
 * the console, and `nubis down` leaving no QEMU behind.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { request as httpRequest } from 'node:http';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import WebSocket from 'ws';
import type { Operation, Vm } from '../../src/wire/schemas.ts';
import type { UsageSeries } from '../../src/wire/event-schemas.ts';
import { processAlive } from '../../src/core/process-alive.ts';
import { NubisInstance, freePort, httpGet } from '../helpers/nubis-instance.ts';

describe('VM lifecycle through the API and the CLI', () => {
  const nubis = new NubisInstance('lifecycle');
  let httpPort = 0;
  let guestUrl = '';

  before(async () => {
    await nubis.up();
    httpPort = await freePort();
    guestUrl = `http://127.0.0.1:${httpPort}/`;
  });
  after(() => nubis.destroy());

  async function vm(name: string): Promise<Vm> {
    return nubis.cliJson<Vm>(['vm', 'show', name]);
  }

  it('shows the local host with its probed accelerator', async () => {
    const hosts = await nubis.cliJson<Array<{ name: string; status: string; accelerator: string; acceleratorReason: string }>>(['host', 'list']);
    assert.equal(hosts.length, 1);
    assert.equal(hosts[0].name, 'host-1');
    assert.equal(hosts[0].status, 'online');
    assert.match(hosts[0].accelerator, /^(kvm|tcg)$/);
    assert.ok(hosts[0].acceleratorReason.length > 0);
  });

  it('creates a VM through the API that boots and answers HTTP', async () => {
    const created = await nubis.api<{ operation: Operation }>('POST', '/v1/vms', {
      name: 'web1',
      image: 'tiny',
      cpus: 1,
      memoryMb: 256,
      publish: [{ hostPort: httpPort, guestPort: 80 }],
    });
    assert.equal(created.status, 202);
    const operation = await nubis.waitOperation(created.body.operation.id);
    assert.equal(operation.status, 'succeeded', operation.error?.message);
    // The event stream replays the whole operation for a late client: its stages in order.
    const stream = await (await fetch(`${nubis.url}/v1/operations/${operation.id}/events`, { headers: { authorization: `Bearer ${nubis.token}` } })).text();
    const stages = [...stream.matchAll(/"stage":"([a-z-]+)"/g)].map((m) => m[1]);
    assert.deepEqual(
      stages.filter((stage, i) => stage !== stages[i - 1]),
      ['placed', 'started', 'booting', 'ready', 'done'],
    );
    assert.equal(await httpGet(guestUrl), 'web1 requests=1');
    assert.equal(await httpGet(guestUrl), 'web1 requests=2');
    const listed = await nubis.cliJson<Vm[]>(['vm', 'list']);
    assert.equal(listed.length, 1);
    assert.equal(listed[0].state, 'running');
    assert.equal(listed[0].host, 'host-1');
    assert.equal(listed[0].ready, true);
    assert.equal(listed[0].cpus, 1);
    assert.equal(listed[0].memoryMb, 256);
    assert.ok(listed[0].pid && processAlive(listed[0].pid));
    const log = await nubis.cliJson<{ lines: string[] }>(['vm', 'log', 'web1']);
    assert.ok(
      log.lines.some((line) => line.includes('NUBIS-READY name=web1')),
      'the console log holds the readiness line',
    );
  });

  it("graphs the running VM's CPU and memory from what its host agent samples", async () => {
    // The agent samples every 10 s and a rate needs two samples: give it about 25 s.
    let usage: UsageSeries | undefined;
    for (const deadline = Date.now() + 40_000; Date.now() < deadline; await new Promise((resolve) => setTimeout(resolve, 5000))) {
      usage = await nubis.cliJson<UsageSeries>(['vm', 'usage', 'web1']).catch(() => undefined);
      if (usage?.average.cpu.some((value) => value !== null && value > 0)) break;
    }
    assert.ok(usage, 'the VM has a usage graph');
    const cpu = usage.average.cpu.filter((value): value is number => value !== null);
    assert.ok(cpu.some((value) => value > 0) && cpu.every((value) => value <= 1), `CPU above zero, at most its vCPUs: ${cpu}`);
    const memory = usage.average.memoryBytes.filter((value): value is number => value !== null);
    // QEMU's resident memory: the guest RAM it touched plus QEMU itself (a tiny guest touches little).
    assert.ok(memory.length > 0 && memory.every((bytes) => bytes > 0 && bytes <= 256 * 2 ** 20 + 128 * 2 ** 20), `memory within the VM's size: ${memory}`);
    const host = await nubis.cliJson<UsageSeries>(['host', 'usage', 'host-1']);
    assert.ok(host.average.memoryBytes.some((bytes) => bytes !== null && bytes > 0 && bytes <= (host.memoryTotalBytes ?? 0)));
  });

  it('refuses bad input with a 4xx, a stable code and a sentence, and creates nothing', async () => {
    const cases: Array<[unknown, number, string]> = [
      [{ name: 'bad1', image: 'tiny', memoryMb: -5 }, 400, 'VALIDATION_FAILED'],
      [{ name: 'bad2', image: 'tiny', cpus: 100000 }, 400, 'VALIDATION_FAILED'],
      [{ name: 'Bad Name', image: 'tiny' }, 400, 'VALIDATION_FAILED'],
      [{ name: 'bad3', image: 'no-such-image' }, 404, 'IMAGE_NOT_FOUND'],
      [{ name: 'web1', image: 'tiny' }, 409, 'VM_NAME_TAKEN'],
      [{ name: 'bad4', image: 'tiny', memoryMb: 1048576 }, 422, 'NO_HOST_FITS'],
      [{ name: 'bad5', image: 'tiny', colour: 'blue' }, 400, 'UNKNOWN_FIELD'],
      [{ name: 'bad6', image: 'tiny', host: 'no-such-host' }, 404, 'HOST_NOT_FOUND'],
      [{ name: 'bad7', image: 'tiny', publish: [{ hostPort: httpPort, guestPort: 80 }] }, 409, 'PORT_IN_USE'],
      // Values that would reach QEMU's option strings, and types the schema must not coerce.
      [
        { name: 'bad9', image: 'tiny', publish: [{ hostAddress: '127.0.0.1:18081-:80,tftp=/etc,hostfwd=tcp:127.0.0.1', hostPort: 18082, guestPort: 80 }] },
        400,
        'VALIDATION_FAILED',
      ],
      [{ name: 'bad10', image: 'tiny', publish: [{ hostAddress: '127.0.0.1', hostPort: 18083, guestPort: 80, extra: ',tftp=/' }] }, 400, 'UNKNOWN_FIELD'],
      [{ name: 'bad11', image: 'tiny', disks: ['p1,tftp=/etc/v1'] }, 400, 'VALIDATION_FAILED'],
      [{ name: 'bad12', image: 'tiny', cpus: '-Infinity' }, 400, 'VALIDATION_FAILED'],
      [{ name: 'bad13', image: 'tiny', cpus: '2' }, 400, 'VALIDATION_FAILED'],
      [{ name: 'bad14', image: 'tiny', allowPostcopy: null }, 400, 'VALIDATION_FAILED'],
      [{ name: 1234, image: 'tiny' }, 400, 'VALIDATION_FAILED'],
    ];
    for (const [body, status, code] of cases) {
      const response = await nubis.api<{ code: string; message: string }>('POST', '/v1/vms', body);
      assert.equal(response.status, status, `${JSON.stringify(body)}: ${JSON.stringify(response.body)}`);
      assert.equal(response.body.code, code);
      assert.match(response.body.message, /^[A-Z]/);
    }
    assert.equal((await nubis.api('GET', '/v1/vms', undefined, null)).status, 401);
    const wrong = await nubis.api<{ code: string }>('GET', '/v1/vms', undefined, 'nubis_admin_wrong');
    assert.equal(wrong.status, 401);
    assert.equal(wrong.body.code, 'AUTH_INVALID_TOKEN');
    assert.equal((await nubis.cliJson<Vm[]>(['vm', 'list'])).length, 1, 'no VM was created by bad requests');
    // Nothing of the refused values reached a QEMU command line.
    for (const pid of execFileSync('pidof', ['qemu-system-x86_64'], { encoding: 'utf8' }).trim().split(/\s+/)) {
      const cmdline = execFileSync('cat', [`/proc/${pid}/cmdline`], { encoding: 'utf8' }).replaceAll('\0', ' ');
      assert.doesNotMatch(cmdline, /tftp=|18082|18083/, `QEMU ${pid}: ${cmdline}`);
    }
    for (const [query, code] of [
      ['lines=Infinity', 'VALIDATION_FAILED'],
      ['lines=1e400', 'VALIDATION_FAILED'],
      ['lines=20000', 'VALIDATION_FAILED'],
    ] as const) {
      const log = await nubis.api<{ code: string }>('GET', `/v1/vms/web1/log?${query}`);
      assert.deepEqual([log.status, log.body.code], [400, code], query);
    }
    const limit = await nubis.api<{ code: string }>('GET', '/v1/operations?limit=Infinity');
    assert.deepEqual([limit.status, limit.body.code], [400, 'VALIDATION_FAILED']);
    const cli = await nubis.cli(['vm', 'create', 'bad8', '--image', 'tiny', '--memory', 'lots']);
    assert.notEqual(cli.code, 0);
    assert.match(cli.stderr, /--memory must be a whole number, not lots/);
  });

  it('keeps its files and secrets to itself', async () => {
    const modeOf = (path: string): number => statSync(path).mode & 0o777;
    assert.equal(modeOf(nubis.dataDir), 0o711, 'the data folder: others pass through to what VMs need, never list it');
    for (const file of ['nubis.db', 'admin-token', 'join-token', 'control-key']) assert.equal(modeOf(join(nubis.dataDir, file)), 0o600, file);
    const vmId = (await vm('web1')).id;
    assert.equal(modeOf(join(nubis.dataDir, 'hosts', 'host-1', 'vms', vmId, 'run', 'serial.log')), 0o600, 'the serial log');
    // No credential is in the database as it is: the agent's token only as a hash.
    const agentToken = (JSON.parse(readFileSync(join(nubis.dataDir, 'hosts', 'host-1', 'agent.json'), 'utf8')) as { agentToken: string }).agentToken;
    assert.ok(!readFileSync(join(nubis.dataDir, 'nubis.db')).includes(agentToken), 'the agent token is not stored as it is');
    // The agent takes its token only in the header, never in a query string.
    const socketPath = join(nubis.dataDir, 'hosts', 'host-1', 'agent.sock');
    const status = await new Promise<number>((resolve, reject) => {
      const request = httpRequest({ socketPath, path: `/agent/vms?token=${encodeURIComponent(agentToken)}`, method: 'GET' }, (response) => {
        response.resume();
        resolve(response.statusCode ?? 0);
      });
      request.on('error', reject);
      request.end();
    });
    assert.equal(status, 401);
  });

  it('stops, starts, pauses, resumes and reboots through the CLI', async () => {
    let result = await nubis.cli(['vm', 'stop', 'web1']);
    assert.equal(result.code, 0, result.stderr);
    assert.equal((await vm('web1')).state, 'stopped');
    assert.equal(await httpGet(guestUrl, 2_000), undefined, 'a stopped VM does not answer');
    result = await nubis.cli(['vm', 'start', 'web1']);
    assert.equal(result.code, 0, result.stderr);
    assert.equal(await httpGet(guestUrl), 'web1 requests=1', 'a fresh boot counts from 1');
    await nubis.cliJson(['vm', 'pause', 'web1']);
    assert.equal((await vm('web1')).state, 'paused');
    assert.equal(await httpGet(guestUrl, 2_000), undefined, 'a paused guest does not answer');
    await nubis.cliJson(['vm', 'resume', 'web1']);
    assert.equal((await vm('web1')).state, 'running');
    assert.ok((await httpGet(guestUrl))?.startsWith('web1 requests='));
    const before = await vm('web1');
    await nubis.cliJson(['vm', 'reboot', 'web1']);
    const rebooted = await vm('web1');
    assert.equal(rebooted.state, 'running');
    assert.equal(rebooted.ready, true);
    assert.notEqual(rebooted.pid, before.pid, 'a reboot starts a fresh QEMU');
    assert.equal(await httpGet(guestUrl), 'web1 requests=1');
  });

  it('attaches to the serial console and runs a command in the guest', async () => {
    const socket = new WebSocket(`${nubis.url.replace('http', 'ws')}/v1/vms/web1/console`, { headers: { authorization: `Bearer ${nubis.token}` } });
    let output = '';
    socket.on('message', (data: Buffer) => (output += data.toString()));
    await new Promise((resolve, reject) => {
      socket.once('open', resolve);
      socket.once('error', reject);
    });
    const marker = `console-${process.pid}`;
    socket.send(`echo ${marker}-$((6*7))\n`);
    const deadline = Date.now() + 30_000;
    while (!output.includes(`${marker}-42`) && Date.now() < deadline) await new Promise((resolve) => socket.once('message', resolve));
    socket.close();
    assert.ok(output.includes(`${marker}-42`), `the guest shell evaluated the command; got: ${output.slice(-300)}`);
    // The CLI detaches on Ctrl-] (0x1d).
    const cli = await nubis.cli(['vm', 'console', 'web1'], { input: `echo cli-${marker}\n\x1d` });
    assert.equal(cli.code, 0, cli.stderr);
    assert.match(cli.stderr, /Connected to the console of web1; detach with Ctrl-\]/);
    assert.match(cli.stderr, /Detached/);
  });

  it('opens a console only with vm.console, and closes it the moment the role or the session ends', async () => {
    for (const [user, role] of [
      ['viewer', 'console'],
      ['peeker', 'reader'],
    ]) {
      assert.equal((await nubis.api('POST', '/v1/users', { name: user, password: `${user}-password-1` })).status, 201);
      assert.equal((await nubis.api('POST', '/v1/access/grants', { user, role, project: 'default' })).status, 204);
    }
    const session = async (user: string) =>
      (await nubis.api<{ secret: string }>('POST', '/v1/auth/login', { user, password: `${user}-password-1` }, null)).body.secret;
    const open = (token: string) => new WebSocket(`${nubis.url.replace('http', 'ws')}/v1/vms/web1/console`, { headers: { authorization: `Bearer ${token}` } });
    const refused = open(await session('peeker'));
    const status = await new Promise<number>((resolve) => refused.once('unexpected-response', (_request, response) => resolve(response.statusCode ?? 0)));
    assert.equal(status, 403, 'a reader cannot open a console');
    /** Opens a console as viewer, runs `end` with the session's token, and resolves with how the console closed. */
    const closedWhen = async (end: (token: string) => Promise<{ status: number }>) => {
      const token = await session('viewer');
      const socket = open(token);
      await new Promise((resolve, reject) => {
        socket.once('open', resolve);
        socket.once('error', reject);
      });
      const closed = new Promise<[number, string]>((resolve) => socket.once('close', (code, reason) => resolve([code, reason.toString()])));
      assert.equal((await end(token)).status, 204);
      return closed;
    };
    const [afterLogout, logoutReason] = await closedWhen((token) => nubis.api('POST', '/v1/auth/logout', undefined, token));
    assert.equal(afterLogout, 4401);
    assert.match(logoutReason, /revoked/);
    const [afterRevoke, revokeReason] = await closedWhen(() => nubis.api('DELETE', '/v1/access/grants?user=viewer&role=console&project=default'));
    assert.equal(afterRevoke, 4401);
    assert.match(revokeReason, /viewer lacks permission vm\.console on project default/);
  });

  it('keeps the VM running across an agent restart and shows the truth afterwards', async () => {
    const before = await vm('web1');
    process.kill(nubis.pidOf('agent-host-1'), 'SIGKILL');
    assert.ok((await httpGet(guestUrl))?.startsWith('web1 requests='), 'the guest serves while its agent is down');
    await nubis.up();
    const after = await vm('web1');
    assert.equal(after.state, 'running');
    assert.equal(after.pid, before.pid, 'the same QEMU was re-adopted');
    // The control plane too: VMs and agents run on, and the restarted one shows the truth.
    process.kill(nubis.pidOf('control-plane'), 'SIGKILL');
    assert.ok((await httpGet(guestUrl))?.startsWith('web1 requests='), 'the guest serves while the control plane is down');
    await nubis.up();
    const afterControlPlane = await vm('web1');
    assert.equal(afterControlPlane.state, 'running');
    assert.equal(afterControlPlane.pid, before.pid);
    const stopped = await nubis.cli(['vm', 'stop', 'web1', '--json']);
    assert.equal(stopped.code, 0, `the re-adopted VM can be driven: ${stopped.stderr}`);
    await nubis.cliJson(['vm', 'start', 'web1']);
  });

  it('shows a VM whose QEMU died as crashed, with the end of its console log', async () => {
    const running = await vm('web1');
    process.kill(running.pid!, 'SIGKILL');
    const deadline = Date.now() + 20_000;
    let crashed = await vm('web1');
    while (crashed.state !== 'crashed' && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 200));
      crashed = await vm('web1');
    }
    assert.equal(crashed.state, 'crashed');
    assert.match(crashed.lastError ?? '', /QEMU exited without a shutdown/);
    assert.ok(crashed.crashLogTail?.some((line) => line.includes('NUBIS-READY')));
    await nubis.cliJson(['vm', 'start', 'web1']);
    assert.equal(await httpGet(guestUrl), 'web1 requests=1');
  });

  it('imports a qcow2 image (checked with qemu-img) and boots VMs from copy-on-write overlays of it', async () => {
    const source = join(nubis.dataDir, 'blank.qcow2');
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', source, '64M']);
    const imported = await nubis.cliJson<{ name: string; kind: string; format: string }>(['image', 'import', 'blank', source]);
    assert.deepEqual([imported.name, imported.kind, imported.format], ['blank', 'disk', 'qcow2']);
    const missing = await nubis.cli(['image', 'import', 'ghost', join(nubis.dataDir, 'nope.qcow2')]);
    assert.notEqual(missing.code, 0);
    assert.match(missing.stderr, /No file .*nope\.qcow2/);
    const layered = join(nubis.dataDir, 'layered.qcow2');
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-F', 'qcow2', '-b', source, layered]);
    const backing = await nubis.cli(['image', 'import', 'layered', layered]);
    assert.match(backing.stderr, /layered\.qcow2 is a qcow2 image that has a backing file; flatten it first/);
    const images = await nubis.cliJson<Array<{ name: string }>>(['image', 'list']);
    assert.deepEqual(images.map((i) => i.name).sort(), ['blank', 'tiny']);
    // Not an OS that announces readiness: the VM is created once QEMU runs.
    const blank = await nubis.cliJson<Vm>(['vm', 'create', 'blank1', '--image', 'blank', '--memory', '64']);
    assert.equal(blank.state, 'running');
    const overlayInfo = JSON.parse(
      execFileSync('qemu-img', ['info', '--force-share', '--output=json', join(nubis.dataDir, 'hosts', 'host-1', 'vms', blank.id, 'root.qcow2')], {
        encoding: 'utf8',
      }),
    );
    assert.match(overlayInfo['backing-filename'], /images\/blank\/disk\.qcow2$/);
    await nubis.cliJson(['vm', 'delete', 'blank1']);
  });

  it('deletes a VM and leaves no QEMU behind on down', async () => {
    const second = await nubis.cliJson<Vm>(['vm', 'create', 'web2', '--image', 'tiny', '--memory', '128']);
    assert.equal(second.state, 'running');
    const first = await vm('web1');
    await nubis.cliJson(['vm', 'delete', 'web2']);
    assert.equal(processAlive(second.pid!), false, 'deleting stops its QEMU');
    assert.deepEqual(
      (await nubis.cliJson<Vm[]>(['vm', 'list'])).map((v) => v.name),
      ['web1'],
    );
    const down = await nubis.cli(['down']);
    assert.equal(down.code, 0, down.stderr);
    assert.equal(processAlive(first.pid!), false, 'down stops the VMs');
    assert.equal(existsSync(`${nubis.dataDir}/run/control-plane.pid`), false);
  });
});
