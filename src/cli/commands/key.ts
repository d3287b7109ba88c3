/** `nubis key`: the key-encryption key of encrypted volumes (platform admins). */
import type { Static } from '@sinclair/typebox';
import type { Command } from 'commander';
import type { KeyStatus } from '../../wire/key-schemas.ts';
import type { Accepted } from '../../wire/schemas.ts';
import { client, globals, runOperation } from '../common.ts';
import { printJson } from '../output.ts';

/** Registers `key` and its subcommands on the program. */
export function registerKeyCommands(program: Command): void {
  const key = program.command('key').description('The key-encryption key (KEK) that wraps the data key of every encrypted volume');
  key
    .command('show')
    .description('Show the current KEK, older ones still kept, and how many volumes are encrypted')
    .action(async (_options: unknown, command: Command) => {
      const status = await client(command).request<KeyStatus>('GET', '/v1/keys');
      if (globals(command).json) return printJson(status);
      console.log(`provider: ${status.provider} (${status.location})`);
      console.log(
        `current KEK: ${status.currentKekId ?? 'none yet (made with the first encrypted volume)'}${status.currentKekCreatedAt ? `, made ${status.currentKekCreatedAt}` : ''}`,
      );
      console.log(`encrypted volumes: ${status.encryptedVolumes}, wrapped by ${status.kekIdsInUse.join(', ') || 'no KEK'}`);
      if (status.retiredKekIds.length > 0) console.log(`older KEKs still kept: ${status.retiredKekIds.join(', ')} (nubis key rotate destroys them)`);
    });
  key
    .command('rotate')
    .description('Make a new KEK, rewrap every volume key with it (no data re-encrypted), then destroy the old KEK')
    .action(async (_options: unknown, command: Command) => {
      const { operation } = await client(command).request<Static<typeof Accepted>>('POST', '/v1/keys/rotate', {});
      const final = await runOperation(command, 'Rotating the key-encryption key', operation);
      if (globals(command).json) return printJson(final.result);
      const result = final.result as { kekId: string; rewrappedKeys: number; destroyedKekIds: string[] };
      console.log(
        `KEK ${result.kekId}: ${result.rewrappedKeys} volume keys rewrapped; ${result.destroyedKekIds.length > 0 ? `destroyed ${result.destroyedKekIds.join(', ')}` : 'no older KEK to destroy'}`,
      );
    });
}
