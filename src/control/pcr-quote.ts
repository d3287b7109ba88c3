/**
 * Verifies a TPM 2.0 quote of PCRs 0-7 (SHA-256 bank) as the tiny guest's `nubis-tool tpm-quote`
 * prints it: the signed TPMS_ATTEST (TCG "TPM 2.0 Library, Part 2: Structures", 10.12), its
 * ECDSA P-256 signature by the attestation key, the nonce it carries, and the PCR values whose
 * digest it signs. Pure: no I/O, only node:crypto.
 */
import { createHash, createPublicKey, verify } from 'node:crypto';
import { NubisError } from '../core/errors.ts';

/** What `nubis-tool tpm-quote NONCE` prints (hex strings). */
export interface PcrQuote {
  nonce: string;
  ak: { x: string; y: string };
  quoted: string;
  signature: { r: string; s: string };
  pcrs: string[];
}

/** TPM_GENERATED_VALUE and TPM_ST_ATTEST_QUOTE (Part 2, 6.2 and 6.9). */
const TPM_GENERATED = 0xff544347;
const TPM_ST_ATTEST_QUOTE = 0x8018;
const TPM_ALG_SHA256 = 0x000b;
/** PCRs 0-7 selected: one byte of a three-byte selection. */
const PCRS_0_TO_7 = '03ff0000';

function refuse(reason: string): never {
  throw new NubisError('QUOTE_INVALID', `The TPM quote does not verify: ${reason}`);
}

/** The PCR selection and PCR digest of a TPMS_ATTEST quoting over `nonce`; refuses anything else. */
function quoteInfo(attest: Buffer, nonce: string): { selection: string; pcrDigest: string } {
  let at = 0;
  const take = (length: number): Buffer => {
    if (at + length > attest.length) refuse('its structure is cut short');
    at += length;
    return attest.subarray(at - length, at);
  };
  const sized = () => take(take(2).readUInt16BE(0));
  if (take(4).readUInt32BE(0) !== TPM_GENERATED) refuse('it was not made by a TPM (no TPM_GENERATED_VALUE)');
  if (take(2).readUInt16BE(0) !== TPM_ST_ATTEST_QUOTE) refuse('it is not a quote');
  sized(); // qualifiedSigner
  if (sized().toString('hex') !== nonce.toLowerCase()) refuse('it carries another nonce than the one asked');
  take(17 + 8); // clockInfo, firmwareVersion
  if (take(4).readUInt32BE(0) !== 1 || take(2).readUInt16BE(0) !== TPM_ALG_SHA256) refuse('it does not select the SHA-256 bank alone');
  const selectBytes = take(1);
  const selection = Buffer.concat([selectBytes, take(selectBytes[0])]).toString('hex');
  return { selection, pcrDigest: sized().toString('hex') };
}

/**
 * The PCR values of `quote` once everything checks: the TPMS_ATTEST is a quote over `nonce`
 * selecting PCRs 0-7 of the SHA-256 bank, its PCR digest is the SHA-256 of the values given, and
 * the attestation key `quote.ak` signed it. Throws `QUOTE_INVALID` naming the first check that fails.
 */
export function verifyPcrQuote(quote: PcrQuote): string[] {
  const attest = Buffer.from(quote.quoted, 'hex');
  const { selection, pcrDigest } = quoteInfo(attest, quote.nonce);
  if (selection !== PCRS_0_TO_7) refuse(`it selects PCRs ${selection}, not 0-7`);
  const values = quote.pcrs.map((pcr) => Buffer.from(pcr, 'hex'));
  if (values.length !== 8 || values.some((value) => value.length !== 32)) refuse('it needs the eight SHA-256 values of PCRs 0-7');
  if (createHash('sha256').update(Buffer.concat(values)).digest('hex') !== pcrDigest) refuse('the PCR values given are not the ones quoted');
  const jwk = { kty: 'EC', crv: 'P-256', x: Buffer.from(quote.ak.x, 'hex').toString('base64url'), y: Buffer.from(quote.ak.y, 'hex').toString('base64url') };
  let key: ReturnType<typeof createPublicKey>;
  try {
    key = createPublicKey({ key: jwk, format: 'jwk' });
  } catch {
    refuse('its attestation key is not a P-256 point');
  }
  // TPM2_Quote signs the digest of the TPMS_ATTEST with ECDSA; r and s as fixed 32-byte halves (IEEE P1363).
  const signature = Buffer.concat([Buffer.from(quote.signature.r, 'hex'), Buffer.from(quote.signature.s, 'hex')]);
  if (!verify('sha256', attest, { key, dsaEncoding: 'ieee-p1363' }, signature)) refuse('its signature does not verify with the attestation key');
  return quote.pcrs.map((pcr) => pcr.toLowerCase());
}
