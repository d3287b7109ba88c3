/**
 * The `nubis` command. Every command has --json; long actions follow their operation's event
 * stream with a progress bar; a failure exits non-zero with a one-line reason. Each noun's
 * commands live in their own file under commands/, registered here in the order help lists them.
 */
import { Command } from 'commander';
import { NubisError, messageOf } from '../core/errors.ts';
import { defaultDataDir } from '../core/paths.ts';
import { registerAccessCommands } from './commands/access.ts';
import { registerAuditCommands } from './commands/audit.ts';
import { registerClusterCommands } from './commands/cluster.ts';
import { registerBackupCommands } from './commands/backup.ts';
import { registerDaemonCommands } from './commands/daemon.ts';
import { registerDesktopCommands } from './commands/desktop.ts';
import { registerEventCommands } from './commands/events.ts';
import { registerHostCommands } from './commands/host.ts';
import { registerImageCommands } from './commands/image.ts';
import { registerMetricsCommands } from './commands/metrics.ts';
import { registerNetworkCommands } from './commands/network.ts';
import { registerOperationCommands } from './commands/operation.ts';
import { registerPoolCommands } from './commands/pool.ts';
import { registerProjectCommands } from './commands/project.ts';
import { registerPlacementCommands } from './commands/placement.ts';
import { registerHaCommands } from './commands/ha.ts';
import { registerSecgroupCommands } from './commands/secgroup.ts';
import { registerUpDownCommands } from './commands/up-down.ts';
import { registerVmCommands } from './commands/vm.ts';
import { registerVolumeCommands } from './commands/volume.ts';
import { registerKeyCommands } from './commands/key.ts';

const program = new Command('nubis')
  .description('Nubis: real virtual machines on a pool of hosts')
  .option('--json', 'print machine-readable JSON')
  .option('--data <dir>', 'data folder of the local control plane (env NUBIS_DATA)', defaultDataDir())
  .option('--url <url>', 'API URL (env NUBIS_URL; default: from the data folder)')
  .option('--token <token>', 'API token (env NUBIS_TOKEN; default: the admin token in the data folder)')
  .option('--ca <file>', "CA certificate the API's HTTPS certificate must chain to (env NUBIS_CA; default: the Nubis CA of the data folder)")
  .configureHelp({ showGlobalOptions: true })
  .showHelpAfterError();

registerUpDownCommands(program);
registerHostCommands(program);
registerClusterCommands(program);
registerVmCommands(program);
registerImageCommands(program);
registerNetworkCommands(program);
registerSecgroupCommands(program);
registerPoolCommands(program);
registerVolumeCommands(program);
registerKeyCommands(program);
registerBackupCommands(program);
registerDesktopCommands(program);
registerOperationCommands(program);
registerEventCommands(program);
registerMetricsCommands(program);
registerProjectCommands(program);
registerPlacementCommands(program);
registerHaCommands(program);
registerAccessCommands(program);
registerAuditCommands(program);
registerDaemonCommands(program);

try {
  await program.parseAsync(process.argv);
} catch (error) {
  const code = error instanceof NubisError ? error.code : 'ERROR';
  if (program.opts().json) console.error(JSON.stringify({ code, message: messageOf(error) }));
  else console.error(`Error: ${messageOf(error)}`);
  process.exitCode = 1;
}
