/**
 * What a host needs to run one VM: the wire type between control plane and host agent, and the
 * input of every hypervisor driver. Sizes carry their unit in the name.
 */

/** The fixed vCPU model every host presents, so that a VM can later move to any host. */
export const NUBIS_CPU_MODEL = 'qemu64';
/** A versioned machine type: the device model must be identical on both ends of a migration. */
export const NUBIS_MACHINE_TYPE = 'pc-q35-7.2';

export type Accelerator = 'kvm' | 'tcg';

/** How the guest boots: a kernel with initrd (like the built-in `tiny` image) or a disk image. */
export type BootSource = { kind: 'kernel'; kernelPath: string; initrdPath: string; cmdline: string } | { kind: 'disk'; path: string; format: 'qcow2' | 'raw' };

/** A VM disk: a local image file, or a volume that a storage node exports over NBD. */
export type DiskSpec =
  | {
      id: string;
      kind: 'file';
      path: string;
      format: 'qcow2' | 'raw';
      readOnly?: boolean /** POOL/VOLUME when the file is a volume of a host's dir pool. */;
      localVolume?: string;
    }
  | { id: string; kind: 'nbd'; socketPath: string; exportName: string; readOnly?: boolean };

/** A host port forwarded to a guest port over user-mode networking. */
export interface PortForward {
  protocol: 'tcp' | 'udp';
  hostAddress: string;
  hostPort: number;
  guestPort: number;
}

export interface NicSpec {
  id: string;
  mac: string;
  /** `user`: QEMU's user-mode network (no root needed); `tap`: a tap device plugged by the host. */
  mode: 'user' | 'tap';
  tapName?: string;
  forwards?: PortForward[];
  /** For `tap` NICs: the virtual network the host plugs the tap into. */
  network?: { id: string; vni: number; mtu: number };
  /** For `tap` NICs: the port's firewall (anti-spoofing for `ip`, and ingress from its security groups). */
  firewall?: NicFirewallSpec;
}

/** A port's firewall; the host enforces it before the VM starts and whenever it changes. */
export interface NicFirewallSpec {
  ip: string;
  ingressRules: Array<{ protocol: 'tcp' | 'udp' | 'icmp' | 'any'; portMin?: number; portMax?: number; sourceCidr: string }>;
  allowIngressFrom: string[];
  /** Allowed new connections from the VM; undefined: egress open. */
  egressRules?: Array<{ protocol: 'tcp' | 'udp' | 'icmp' | 'any'; portMin?: number; portMax?: number; destinationCidr: string }>;
}

export interface VmSpec {
  id: string;
  name: string;
  cpus: number;
  memoryMb: number;
  boot: BootSource;
  disks: DiskSpec[];
  nics: NicSpec[];
}
