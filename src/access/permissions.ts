/**
 * Every permission Nubis checks, named after the resource and the action, and the built-in roles
 * as sets of them. A permission is either of a project (granted by a role held on that project,
 * or on the whole platform) or of the platform (hosts, pools, images to import, users: granted
 * only by a role held on the platform). docs/ACCESS.md explains the model.
 */

/** Where a permission applies. */
export type PermissionScope = 'project' | 'platform';

/** Permission name -> [scope, what it allows]. */
export const PERMISSIONS = {
  // Projects and their members.
  'project.read': ['project', 'See the project, its quota and use'],
  'project.members': ['project', 'Grant and revoke roles on the project (manage its members)'],
  'project.create': ['platform', 'Create projects'],
  'project.quota': ['platform', "Set a project's quotas"],
  'project.residency': ['platform', "Set the labels a project's hosts and pools must carry (data residency)"],
  // VMs.
  'vm.read': ['project', 'List and show VMs and their migration history'],
  'vm.log': ['project', "Read a VM's serial log"],
  'vm.create': ['project', 'Create VMs'],
  'vm.delete': ['project', 'Delete VMs'],
  'vm.update': ['project', "Change a VM's policies"],
  'vm.power': ['project', 'Start, stop, reboot, pause and resume VMs'],
  'vm.console': ['project', "Open a VM's console"],
  'vm.disks': ['project', 'Attach and detach volumes'],
  'vm.migrate': ['project', 'Live-migrate VMs between hosts'],
  // Networks and security groups.
  'network.read': ['project', 'List and show networks and port forwards'],
  'network.create': ['project', 'Create networks'],
  'network.delete': ['project', 'Delete networks'],
  'network.forward': ['project', 'Add and remove port forwards'],
  'secgroup.read': ['project', 'List and show security groups'],
  'secgroup.create': ['project', 'Create security groups'],
  'secgroup.delete': ['project', 'Delete security groups'],
  'secgroup.rules': ['project', 'Add and remove security group rules'],
  // Volumes (project resources in platform pools).
  'vm.snapshot': ['project', 'Take, roll back and delete VM snapshots, and make templates of VMs'],
  'backup.read': ['project', 'List and show backups'],
  'backup.create': ['project', 'Back VMs up, and verify backups'],
  'backup.delete': ['project', 'Delete backups'],
  'backup.restore': ['project', 'Restore backups as new VMs'],
  'backup.collect': ['platform', "Collect the backup store's garbage and check its bytes"],
  'volume.read': ['project', 'List and show volumes'],
  'volume.create': ['project', 'Create and clone volumes'],
  'volume.delete': ['project', 'Delete volumes'],
  'volume.snapshot': ['project', 'Snapshot volumes'],
  'volume.resize': ['project', 'Resize volumes'],
  // Operations and the audit log.
  'placement.read': ['project', 'List and show placement groups'],
  'placement.manage': ['project', 'Create and delete placement groups'],
  'operation.read': ['project', 'See operations and follow their events'],
  'operation.cancel': ['project', 'Cancel operations'],
  'audit.read': ['project', 'Read the audit log of the project'],
  // Desktop pools (using one needs no permission, only access to that pool: nubis desktop pool grant).
  'desktop.read': ['project', 'List and show desktop pools, their desktops and who holds them'],
  'desktop.manage': ['project', 'Create and delete desktop pools and grant or revoke access to them'],
  // The platform: everything physical and every account.
  'platform.status': ['platform', "Read the platform's status"],
  'host.read': ['platform', 'List and show hosts'],
  'host.update': ['platform', "Set hosts' labels and overcommit ratios"],
  'host.evacuate': ['platform', 'Evacuate hosts (maintenance) and restore them'],
  'cluster.read': ['platform', "See the cluster's balancing settings, imbalance and last run"],
  'cluster.manage': ['platform', 'Balance the cluster and set its policies'],
  'image.import': ['platform', 'Import images'],
  'pool.read': ['platform', 'List and show storage pools'],
  'pool.manage': ['platform', 'Create, delete, scrub and repair storage pools'],
  'key.manage': ['platform', 'See and rotate the key-encryption key of encrypted volumes'],
  'network.probe': ['platform', 'Run a command in a namespace attached to a network (as root on a host)'],
  'user.read': ['platform', 'List users'],
  'user.manage': ['platform', 'Create and delete users and set their passwords'],
  'role.manage': ['platform', 'Create and delete custom roles'],
  'token.manage': ['platform', "List and revoke other users' tokens"],
  'audit.verify': ['platform', 'Verify, prove and export the whole audit log'],
  'metrics.read': ['platform', 'Scrape the Prometheus metrics of the whole platform (GET /metrics)'],
} as const satisfies Record<string, readonly [PermissionScope, string]>;

export type Permission = keyof typeof PERMISSIONS;

/** The wildcard a role holds for every permission (the platform admin). */
export const ALL_PERMISSIONS = '*';

export function isPermission(name: string): name is Permission {
  return Object.hasOwn(PERMISSIONS, name);
}

export function scopeOf(permission: Permission): PermissionScope {
  return PERMISSIONS[permission][0];
}

const projectPermissions = (Object.keys(PERMISSIONS) as Permission[]).filter((p) => scopeOf(p) === 'project');
const readPermissions: Permission[] = [
  'project.read',
  'vm.read',
  'vm.log',
  'network.read',
  'secgroup.read',
  'volume.read',
  'placement.read',
  'operation.read',
  'desktop.read',
  'backup.read',
];
const usePermissions: Permission[] = [
  ...readPermissions,
  'vm.create',
  'vm.delete',
  'vm.update',
  'vm.power',
  'vm.console',
  'vm.disks',
  'vm.snapshot',
  'backup.create',
  'backup.delete',
  'backup.restore',
  'network.create',
  'network.delete',
  'network.forward',
  'secgroup.create',
  'secgroup.delete',
  'secgroup.rules',
  'volume.create',
  'volume.delete',
  'volume.snapshot',
  'volume.resize',
  'placement.manage',
  'operation.cancel',
];

/** A built-in role: its name, where it may be held, and its permissions. */
export interface BuiltinRole {
  name: string;
  description: string;
  /** `platform`: held on the whole platform only; `project`: held on a project (or on the platform, then on every project). */
  heldOn: PermissionScope;
  permissions: readonly (Permission | typeof ALL_PERMISSIONS)[];
}

/** The built-in roles, written to the database at every start (so a release can change them). */
export const BUILTIN_ROLES: readonly BuiltinRole[] = [
  { name: 'admin', description: 'Platform administrator: every permission on everything', heldOn: 'platform', permissions: [ALL_PERMISSIONS] },
  { name: 'owner', description: 'Everything in the project, including its members and its audit log', heldOn: 'project', permissions: projectPermissions },
  {
    name: 'operator',
    description: 'Every VM, network and volume action in the project (migration included), no member management',
    heldOn: 'project',
    permissions: [...usePermissions, 'vm.migrate', 'desktop.manage'],
  },
  { name: 'member', description: 'Create and use VMs, networks and volumes in the project', heldOn: 'project', permissions: usePermissions },
  { name: 'reader', description: 'Read everything in the project, open nothing', heldOn: 'project', permissions: readPermissions },
  { name: 'console', description: "Open the consoles of the project's VMs (and see them listed)", heldOn: 'project', permissions: ['vm.read', 'vm.console'] },
  {
    name: 'metrics',
    description: "Read the platform's Prometheus metrics and nothing else: a scraper's token",
    heldOn: 'platform',
    permissions: ['metrics.read'],
  },
];
