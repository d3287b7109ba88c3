/** Running a program as a VM's user, as tests of what one VM's processes may reach do. */
import { spawn } from 'node:child_process';

/** Runs `command` as `uid` (its gid the same number, as VMs run); its exit code and output. */
export function runAs(uid: number, command: string, args: string[]): Promise<{ code: number | null; output: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { uid, gid: uid, cwd: '/', env: { PATH: process.env.PATH ?? '/usr/bin:/bin' } });
    let output = '';
    child.stdout.on('data', (chunk: Buffer) => (output += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (output += chunk.toString()));
    child.on('error', reject);
    child.on('exit', (code) => resolve({ code, output }));
  });
}
