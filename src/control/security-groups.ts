/**
 * Security groups: named sets of allow rules for traffic towards a VM. A VM in one or more groups
 * gets new ingress only from members of its groups and from what a rule allows; egress is free.
 * A VM in no group has open ingress. Every NIC on a virtual network is anti-spoofed either way.
 * The control plane computes each port's firewall from the groups and pushes it to the host,
 * again whenever a rule or a membership changes.
 */
import { sql } from 'kysely';
import { NubisError } from '../core/errors.ts';
import { projectIdByName, type VisibleProjects } from './projects.ts';
import { auditedTransaction } from '../audit/audit-context.ts';
import { newId } from '../core/ids.ts';
import type { Db } from '../state/database.ts';
import type { SecgroupRulesTable, SecgroupsTable } from '../state/schema.ts';
import type { HostRegistry } from './hosts.ts';
import { parseCidr } from './ipam.ts';

/** The firewall of one NIC, as the host agent applies it (src/network/firewall.ts). */
export interface NicFirewall {
  nicId: string;
  mac: string;
  ip: string;
  ingressRules: Array<{ protocol: 'tcp' | 'udp' | 'icmp' | 'any'; portMin?: number; portMax?: number; sourceCidr: string }>;
  allowIngressFrom: string[];
  /** Undefined: egress open (a VM in no group). */
  egressRules?: Array<{ protocol: 'tcp' | 'udp' | 'icmp' | 'any'; portMin?: number; portMax?: number; destinationCidr: string }>;
}

export interface SecgroupRuleView {
  id: string;
  direction: 'ingress' | 'egress';
  protocol: string;
  portMin?: number;
  portMax?: number;
  cidr?: string;
  remoteGroup?: string;
}

export interface SecgroupView {
  id: string;
  name: string;
  project: string;
  description: string;
  rules: SecgroupRuleView[];
  members: string[];
  createdAt: string;
}

export interface RuleRequest {
  direction?: 'ingress' | 'egress';
  protocol: 'tcp' | 'udp' | 'icmp' | 'any';
  portMin?: number;
  portMax?: number;
  cidr?: string;
  remoteGroup?: string;
}

/** Open ingress for a VM in no group. */
const OPEN_INGRESS: NicFirewall['ingressRules'] = [{ protocol: 'any', sourceCidr: '0.0.0.0/0' }];

export class SecurityGroupService {
  readonly #db: Db;
  readonly #hosts: HostRegistry;

  constructor(deps: { db: Db; hosts: HostRegistry }) {
    this.#db = deps.db;
    this.#hosts = deps.hosts;
  }

  async #projectId(name = 'default'): Promise<string> {
    return projectIdByName(this.#db, name);
  }

  async row(ref: string, project?: string): Promise<SecgroupsTable> {
    const projectId = await this.#projectId(project);
    const row = await this.#db
      .selectFrom('secgroups')
      .selectAll()
      // By name or id, but only within the project: a reference never reaches another project's resource.
      .where('project_id', '=', projectId)
      .where((eb) => eb.or([eb('name', '=', ref), eb('id', '=', ref)]))
      .executeTakeFirst();
    if (!row) throw new NubisError('SECGROUP_NOT_FOUND', `No security group ${ref} in project ${project ?? 'default'}; see nubis secgroup list`);
    return row;
  }

  async create(request: { name: string; description?: string; project?: string }): Promise<SecgroupView> {
    const projectId = await this.#projectId(request.project);
    if (await this.#db.selectFrom('secgroups').select('id').where('project_id', '=', projectId).where('name', '=', request.name).executeTakeFirst()) {
      throw new NubisError('SECGROUP_NAME_TAKEN', `A security group named ${request.name} exists in this project; choose another name`);
    }
    const row: SecgroupsTable = {
      id: newId('sg'),
      project_id: projectId,
      name: request.name,
      description: request.description ?? '',
      created_at: new Date().toISOString(),
    };
    // The group and its default rule in one transaction: never a group without it.
    await auditedTransaction(this.#db, async (trx) => {
      await trx.insertInto('secgroups').values(row).execute();
      // As in OpenStack, a new group allows all egress; delete this rule to restrict it.
      await trx
        .insertInto('secgroup_rules')
        .values({
          id: newId('rule'),
          group_id: row.id,
          direction: 'egress',
          protocol: 'any',
          port_min: null,
          port_max: null,
          cidr: '0.0.0.0/0',
          remote_group_id: null,
          created_at: row.created_at,
        })
        .execute();
    });
    return this.#view(row);
  }

  async #view(row: SecgroupsTable): Promise<SecgroupView> {
    const [project, rules, members] = await Promise.all([
      this.#db.selectFrom('projects').select('name').where('id', '=', row.project_id).executeTakeFirst(),
      this.#db
        .selectFrom('secgroup_rules')
        .leftJoin('secgroups as remote', 'remote.id', 'secgroup_rules.remote_group_id')
        .selectAll('secgroup_rules')
        .select('remote.name as remote_name')
        .where('group_id', '=', row.id)
        .orderBy('secgroup_rules.created_at')
        .execute(),
      this.#db
        .selectFrom('vm_secgroups')
        .innerJoin('vms', 'vms.id', 'vm_secgroups.vm_id')
        .select('vms.name')
        .where('vm_secgroups.group_id', '=', row.id)
        .orderBy('vms.name')
        .execute(),
    ]);
    return {
      id: row.id,
      name: row.name,
      project: project?.name ?? row.project_id,
      description: row.description,
      rules: rules.map((rule) => ({
        id: rule.id,
        direction: rule.direction,
        protocol: rule.protocol,
        ...(rule.port_min !== null ? { portMin: rule.port_min } : {}),
        ...(rule.port_max !== null ? { portMax: rule.port_max } : {}),
        ...(rule.cidr ? { cidr: rule.cidr } : {}),
        ...(rule.remote_name ? { remoteGroup: rule.remote_name } : {}),
      })),
      members: members.map((m) => m.name),
      createdAt: row.created_at,
    };
  }

  /** The groups of `project`, or (without one) of the projects in `visible`. */
  async list(project?: string, visible: VisibleProjects = 'all'): Promise<SecgroupView[]> {
    let query = this.#db.selectFrom('secgroups').selectAll().orderBy('name');
    if (project) query = query.where('project_id', '=', await this.#projectId(project));
    else if (visible !== 'all') query = visible.length > 0 ? query.where('project_id', 'in', visible) : query.where(sql<boolean>`0`);
    return Promise.all((await query.execute()).map((row) => this.#view(row)));
  }

  async get(ref: string, project?: string): Promise<SecgroupView> {
    return this.#view(await this.row(ref, project));
  }

  async delete(ref: string, project?: string): Promise<void> {
    const row = await this.row(ref, project);
    const view = await this.#view(row);
    if (view.members.length > 0)
      throw new NubisError('SECGROUP_IN_USE', `Security group ${row.name} is used by VM(s) ${view.members.join(', ')}; delete those VMs first`);
    const referrers = await this.#db
      .selectFrom('secgroup_rules')
      .innerJoin('secgroups', 'secgroups.id', 'secgroup_rules.group_id')
      .select('secgroups.name')
      .where('remote_group_id', '=', row.id)
      .execute();
    if (referrers.length > 0)
      throw new NubisError(
        'SECGROUP_IN_USE',
        `Rules of group(s) ${[...new Set(referrers.map((r) => r.name))].join(', ')} name ${row.name}; delete those rules first`,
      );
    await auditedTransaction(this.#db, async (trx) => {
      await trx.deleteFrom('secgroup_rules').where('group_id', '=', row.id).execute();
      await trx.deleteFrom('secgroups').where('id', '=', row.id).execute();
    });
  }

  /** Checks and adds an allow rule, then updates the firewall of every affected port. */
  async addRule(ref: string, request: RuleRequest, project?: string): Promise<SecgroupRuleView> {
    const group = await this.row(ref, project);
    const ported = request.protocol === 'tcp' || request.protocol === 'udp';
    if (!ported && (request.portMin !== undefined || request.portMax !== undefined)) {
      throw new NubisError('SECGROUP_INVALID_RULE', `Ports apply to tcp and udp only, not ${request.protocol}; leave the port out`);
    }
    const portMin = request.portMin;
    const portMax = request.portMax ?? request.portMin;
    for (const port of [portMin, portMax]) {
      if (port !== undefined && !(Number.isInteger(port) && port >= 1 && port <= 65535)) {
        throw new NubisError('SECGROUP_INVALID_RULE', `Port ${port} is outside 1-65535`);
      }
    }
    if (portMin !== undefined && portMax !== undefined && portMin > portMax) {
      throw new NubisError('SECGROUP_INVALID_RULE', `Port range ${portMin}-${portMax} runs backwards; write the lower port first`);
    }
    if (request.cidr && request.remoteGroup) throw new NubisError('SECGROUP_INVALID_RULE', 'Give a source CIDR or a remote group, not both');
    const cidr = request.remoteGroup ? null : parseCidr(request.cidr ?? '0.0.0.0/0');
    const remote = request.remoteGroup ? await this.row(request.remoteGroup, project) : undefined;
    const rule: SecgroupRulesTable = {
      id: newId('rule'),
      group_id: group.id,
      direction: request.direction ?? 'ingress',
      protocol: request.protocol,
      port_min: portMin ?? null,
      port_max: portMax ?? null,
      cidr,
      remote_group_id: remote?.id ?? null,
      created_at: new Date().toISOString(),
    };
    await this.#db.insertInto('secgroup_rules').values(rule).execute();
    await this.refreshProject(group.project_id);
    return (await this.#view(group)).rules.find((r) => r.id === rule.id)!;
  }

  async deleteRule(ref: string, ruleId: string, project?: string): Promise<void> {
    const group = await this.row(ref, project);
    const deleted = await this.#db.deleteFrom('secgroup_rules').where('id', '=', ruleId).where('group_id', '=', group.id).executeTakeFirst();
    if (Number(deleted.numDeletedRows) === 0)
      throw new NubisError('SECGROUP_RULE_NOT_FOUND', `Group ${group.name} has no rule ${ruleId}; see nubis secgroup show ${group.name}`);
    await this.refreshProject(group.project_id);
  }

  /** Records a new VM's groups (checked to be of its project). */
  async assign(vmId: string, projectId: string, groups: string[]): Promise<void> {
    for (const name of groups) {
      const group = await this.#db.selectFrom('secgroups').select('id').where('project_id', '=', projectId).where('name', '=', name).executeTakeFirst();
      if (!group) throw new NubisError('SECGROUP_NOT_FOUND', `No security group ${name} in the VM's project; create it with nubis secgroup create ${name}`);
      await this.#db
        .insertInto('vm_secgroups')
        .values({ vm_id: vmId, group_id: group.id })
        .onConflict((oc) => oc.doNothing())
        .execute();
    }
  }

  /** Takes a VM out of its groups (`db`: the caller's transaction, if any). */
  async unassign(vmId: string, db: Db = this.#db): Promise<void> {
    await db.deleteFrom('vm_secgroups').where('vm_id', '=', vmId).execute();
  }

  /** The firewall of each network NIC of a VM, from its groups and their members now. */
  async firewallOf(vmId: string): Promise<NicFirewall[]> {
    const nics = await this.#db.selectFrom('nics').selectAll().where('vm_id', '=', vmId).orderBy('device_index').execute();
    const groupIds = (await this.#db.selectFrom('vm_secgroups').select('group_id').where('vm_id', '=', vmId).execute()).map((g) => g.group_id);
    let ingressRules = OPEN_INGRESS;
    let egressRules: NicFirewall['egressRules'];
    let allowIngressFrom: string[] = [];
    if (groupIds.length > 0) {
      allowIngressFrom = await this.#memberIps(groupIds, vmId);
      const rules = await this.#db.selectFrom('secgroup_rules').selectAll().where('group_id', 'in', groupIds).execute();
      ingressRules = [];
      egressRules = [];
      for (const rule of rules) {
        // A remote group stands for its members' addresses: the sources (ingress) or destinations (egress).
        const peers = rule.remote_group_id ? (await this.#memberIps([rule.remote_group_id], vmId)).map((ip) => `${ip}/32`) : [rule.cidr ?? '0.0.0.0/0'];
        const ports = { ...(rule.port_min !== null ? { portMin: rule.port_min } : {}), ...(rule.port_max !== null ? { portMax: rule.port_max } : {}) };
        for (const peer of peers) {
          if (rule.direction === 'egress') egressRules.push({ protocol: rule.protocol, ...ports, destinationCidr: peer });
          else ingressRules.push({ protocol: rule.protocol, ...ports, sourceCidr: peer });
        }
      }
    }
    return nics.map((nic) => ({
      nicId: `net${nic.device_index}`,
      mac: nic.mac,
      ip: nic.ip,
      ingressRules,
      allowIngressFrom,
      ...(egressRules ? { egressRules } : {}),
    }));
  }

  /** Addresses of the NICs of every VM in `groupIds`, but `exceptVmId`'s. */
  async #memberIps(groupIds: string[], exceptVmId: string): Promise<string[]> {
    const rows = await this.#db
      .selectFrom('vm_secgroups')
      .innerJoin('nics', 'nics.vm_id', 'vm_secgroups.vm_id')
      .select('nics.ip')
      .where('vm_secgroups.group_id', 'in', groupIds)
      .where('vm_secgroups.vm_id', '!=', exceptVmId)
      .execute();
    return [...new Set(rows.map((r) => r.ip))].sort();
  }

  /**
   * Pushes the current firewall of every VM with network NICs in the project to its host.
   * Called after any change of rules or memberships; a VM being created gets its firewall in its
   * spec instead, so it is never unprotected.
   */
  async refreshProject(projectId: string): Promise<void> {
    const vms = await this.#db
      .selectFrom('vms')
      .select(['vms.id', 'vms.host_id'])
      .where('vms.project_id', '=', projectId)
      .where('vms.actual_state', '!=', 'pending')
      .where('vms.id', 'in', (eb) => eb.selectFrom('nics').select('nics.vm_id'))
      .execute();
    for (const vm of vms) {
      const host = await this.#hosts.row(vm.host_id);
      await this.#hosts.agent(host).setFirewall(vm.id, await this.firewallOf(vm.id));
    }
  }
}
