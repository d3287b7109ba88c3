/** What a host agent reports about one VM: the actual state, as opposed to the desired one. */
export type VmRunState = 'starting' | 'running' | 'paused' | 'stopping' | 'stopped' | 'crashed' | 'migrating' | 'incoming';

export interface VmStatus {
  id: string;
  name: string;
  state: VmRunState;
  pid?: number;
  /** When QEMU last started (ISO time). */
  startedAt?: string;
  /** When the guest printed its readiness line in the current boot. */
  readyAt?: string;
  /** IPv4 addresses the guest reported in its readiness line. */
  guestIps?: string[];
  /** Why the VM stopped or crashed, with the end of its console log for a crash. */
  lastError?: string;
  crashLogTail?: string[];
}
