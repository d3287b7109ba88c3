/**
 * A NIC's bandwidth limits, applied to its tap on the host (in the host's namespace):
 *
 * - **in** (traffic to the guest) is shaped: the tap's root qdisc becomes a token bucket filter
 *   (`tc qdisc replace dev TAP root tbf`), which queues what exceeds the rate, so TCP towards the
 *   guest slows down smoothly instead of losing packets.
 * - **out** (traffic from the guest) is policed: what the guest sends arrives on the tap's
 *   ingress, where this kernel offers no policing action (`act_police` and the `matchall`
 *   classifier are not built, HOST-FACTS), so an nftables bridge rule drops what exceeds the rate
 *   (`limit rate over`), in a table of the tap's own that goes with the tap.
 *
 * Rates are in Mbit/s, as network people give them (1 Mbit = 10^6 bits).
 */
import { createHash } from 'node:crypto';
import { NubisError } from '../core/errors.ts';
import { type CommandOptions, runCommand } from './ip-command.ts';
import { assertInterfaceName } from './names.ts';
import type { CallOptions } from './underlay.ts';

/** The limits of one NIC; what is left out is not limited. */
export interface NicBandwidth {
  /** Towards the guest, Mbit/s. */
  inMbit?: number;
  /** From the guest, Mbit/s. */
  outMbit?: number;
}

/** The highest rate accepted, in Mbit/s (100 Gbit/s). */
export const MAX_NIC_MBIT = 100_000;

/** Refuses a rate that is no whole number of Mbit/s within range, naming the NIC. */
export function checkNicBandwidth(bandwidth: NicBandwidth, nic: string): void {
  for (const [key, value] of Object.entries(bandwidth)) {
    if (key !== 'inMbit' && key !== 'outMbit')
      throw new NubisError('VALIDATION_FAILED', `Bandwidth of NIC ${nic}: no limit named ${key}; give inMbit or outMbit`);
    if (!Number.isInteger(value) || value < 1 || value > MAX_NIC_MBIT)
      throw new NubisError('VALIDATION_FAILED', `Bandwidth of NIC ${nic}: ${key} must be a whole number of Mbit/s from 1 to ${MAX_NIC_MBIT}, not ${value}`);
  }
}

/** The nftables table of one tap's outgoing limit (bridge family). */
export function outLimitTable(tapName: string): string {
  return `nubis_nic_${createHash('sha256').update(tapName).digest('hex').slice(0, 12)}`;
}

/**
 * The `tc` arguments that shape traffic towards the guest to `mbit`: a token bucket whose burst
 * holds at least 10 ms at the rate (and never less than 32 KiB, a few full frames), with 50 ms
 * of queue before packets are dropped.
 */
export function inShapingArgs(tapName: string, mbit: number): string[] {
  const burstBytes = Math.max(32 * 1024, Math.round((mbit * 1e6) / 8 / 100));
  return ['qdisc', 'replace', 'dev', tapName, 'root', 'tbf', 'rate', `${mbit}mbit`, 'burst', String(burstBytes), 'latency', '50ms'];
}

/**
 * The nft script that polices what the guest sends to `mbit`, in bytes a second (nft's `kbytes`
 * are 1024 bytes, so bytes it is). nftables' byte limit is a bucket that holds one second at the
 * rate (net/netfilter/nft_limit.c: tokens_max = unit x (rate + burst) / rate), so a guest that
 * was quiet may send one second's worth at once; no extra burst is added to that.
 */
export function outPolicingScript(tapName: string, mbit: number): string {
  const table = `bridge ${outLimitTable(tapName)}`;
  const bytesPerSecond = Math.round((mbit * 1e6) / 8);
  return [
    `add table ${table}`,
    `add chain ${table} from_guest { type filter hook prerouting priority -150; policy accept; }`,
    `flush chain ${table} from_guest`,
    `add rule ${table} from_guest iifname ${JSON.stringify(tapName)} limit rate over ${bytesPerSecond} bytes/second drop`,
    '',
  ].join('\n');
}

/** Sets the limits of the NIC on tap `tapName` (none: both lifted). Idempotent. */
export async function applyNicBandwidth(options: { hostNs: string; tapName: string; bandwidth: NicBandwidth | undefined } & CallOptions): Promise<void> {
  assertInterfaceName(options.tapName);
  const bandwidth = options.bandwidth ?? {};
  checkNicBandwidth(bandwidth, options.tapName);
  const inHost: CommandOptions = { netns: options.hostNs, signal: options.signal, timeoutMs: options.timeoutMs };
  if (bandwidth.inMbit !== undefined) await runCommand('tc', inShapingArgs(options.tapName, bandwidth.inMbit), inHost);
  else await runCommand('tc', ['qdisc', 'del', 'dev', options.tapName, 'root'], { ...inHost, allowFailure: true });
  if (bandwidth.outMbit !== undefined) await runCommand('nft', ['-f', '-'], { ...inHost, input: outPolicingScript(options.tapName, bandwidth.outMbit) });
  else await removeOutLimit(options.tapName, inHost);
}

/** Removes what limits a tap that goes away (its qdisc goes with the tap; the nft table does not). */
export async function removeNicBandwidth(options: { hostNs: string; tapName: string } & CallOptions): Promise<void> {
  assertInterfaceName(options.tapName);
  await removeOutLimit(options.tapName, { netns: options.hostNs, signal: options.signal, timeoutMs: options.timeoutMs });
}

async function removeOutLimit(tapName: string, inHost: CommandOptions): Promise<void> {
  await runCommand('nft', ['delete', 'table', 'bridge', outLimitTable(tapName)], { ...inHost, allowFailure: true });
}
