/** Wire types of vTPM, UEFI and measured launch (control/trusted-launch.ts). */
import { Type } from '@sinclair/typebox';

/** A VM's platform as create sets it and a VM shows it. */
export const VmPlatformFields = {
  tpm: Type.Optional(Type.Boolean({ description: 'A TPM 2.0 (swtpm on its host); its state lives with the VM and moves with it in live migration' })),
  firmware: Type.Optional(
    Type.Union([Type.Literal('bios'), Type.Literal('uefi')], {
      description: 'bios (default): direct kernel boot or SeaBIOS; uefi: OVMF with a variable store of its own',
    }),
  ),
};

const Digest = Type.String({ pattern: '^[0-9a-f]{64}$', maxLength: 64, description: 'SHA-256, hex' });

/** A VM's attestation: its last launch's measurements, each beside its expected value. */
export const VmAttestation = Type.Object(
  {
    vm: Type.String({ maxLength: 63 }),
    measuredAt: Type.Optional(Type.String({ format: 'date-time', maxLength: 32 })),
    requireTrustedLaunch: Type.Boolean({ description: "Its project's VMs start only from matching measurements" }),
    verdict: Type.Union([Type.Literal('match'), Type.Literal('mismatch'), Type.Literal('unmeasured')], {
      description: 'match: no measured component differs from its expected value; mismatch: one does; unmeasured: no launch was measured',
    }),
    components: Type.Array(
      Type.Object({
        component: Type.String({ maxLength: 128, description: 'qemu-binary, command-line, kernel, initrd, firmware or disk-base:<file>' }),
        path: Type.String({ maxLength: 4096, description: 'What QEMU really holds open (the canonical command line for command-line)' }),
        measured: Digest,
        expected: Type.Optional(Digest),
        scope: Type.String({ maxLength: 80, description: 'Where the expected value was recorded: image:<id>, host-software or vm:<id>' }),
        matches: Type.Optional(Type.Boolean({ description: 'Absent while nothing is expected yet' })),
      }),
      { maxItems: 64 },
    ),
  },
  { $id: 'VmAttestation' },
);

/** `PUT /v1/projects/:project/trusted-launch`. */
export const TrustedLaunchSetting = Type.Object(
  { required: Type.Boolean({ description: "The project's VMs start only from launch measurements that match the expected ones" }) },
  { additionalProperties: false, $id: 'TrustedLaunchSetting' },
);

const Hex = (bytes: number, description: string) => Type.String({ pattern: `^[0-9a-f]{${2 * bytes}}$`, maxLength: 2 * bytes, description });

/** A TPM quote of PCRs 0-7 as `nubis-tool tpm-quote NONCE` prints it in the guest. */
export const PcrQuoteRequest = Type.Object(
  {
    nonce: Type.String({ pattern: '^([0-9a-f]{2}){8,32}$', maxLength: 64, description: 'The nonce given to tpm-quote (8-32 bytes, hex)' }),
    ak: Type.Object({ x: Hex(32, 'Attestation key, P-256 x'), y: Hex(32, 'Attestation key, P-256 y') }, { additionalProperties: false }),
    quoted: Type.String({ pattern: '^([0-9a-f]{2})+$', maxLength: 1024, description: 'The signed TPMS_ATTEST, hex' }),
    signature: Type.Object({ r: Hex(32, 'ECDSA r'), s: Hex(32, 'ECDSA s') }, { additionalProperties: false }),
    pcrs: Type.Array(Hex(32, 'A PCR value, SHA-256 bank'), { minItems: 8, maxItems: 8, description: 'PCRs 0-7' }),
    ok: Type.Optional(Type.Boolean({ description: "nubis-tool's own success flag, ignored" })),
  },
  { additionalProperties: false, $id: 'PcrQuoteRequest' },
);
