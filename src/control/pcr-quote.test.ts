import assert from 'node:assert/strict';
import { createHash, generateKeyPairSync, sign } from 'node:crypto';
import { describe, it } from 'node:test';
import { type PcrQuote, verifyPcrQuote } from './pcr-quote.ts';

/** A quote as a TPM makes one (TPMS_ATTEST of type quote), signed by a software P-256 key. */
function makeQuote(nonce: string, pcrs: string[]): PcrQuote {
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const u16 = (value: number) => Buffer.from([value >> 8, value & 0xff]);
  const sized = (bytes: Buffer) => Buffer.concat([u16(bytes.length), bytes]);
  const pcrDigest = createHash('sha256')
    .update(Buffer.concat(pcrs.map((p) => Buffer.from(p, 'hex'))))
    .digest();
  const attest = Buffer.concat([
    Buffer.from('ff544347', 'hex'), // TPM_GENERATED_VALUE
    u16(0x8018), // TPM_ST_ATTEST_QUOTE
    sized(Buffer.alloc(34, 1)), // qualifiedSigner
    sized(Buffer.from(nonce, 'hex')),
    Buffer.alloc(17 + 8), // clockInfo, firmwareVersion
    Buffer.from('00000001000b03ff0000', 'hex'), // one selection: sha256, PCRs 0-7
    sized(pcrDigest),
  ]);
  const signature = sign('sha256', attest, { key: privateKey, dsaEncoding: 'ieee-p1363' });
  const jwk = publicKey.export({ format: 'jwk' }) as { x: string; y: string };
  return {
    nonce,
    ak: { x: Buffer.from(jwk.x, 'base64url').toString('hex'), y: Buffer.from(jwk.y, 'base64url').toString('hex') },
    quoted: attest.toString('hex'),
    signature: { r: signature.subarray(0, 32).toString('hex'), s: signature.subarray(32).toString('hex') },
    pcrs,
  };
}

const pcrs = Array.from({ length: 8 }, (_, i) => String(i).repeat(64));
const nonce = '0011223344556677';

describe('verifyPcrQuote', () => {
  it('returns the PCR values of a quote that verifies', () => {
    assert.deepEqual(verifyPcrQuote(makeQuote(nonce, pcrs)), pcrs);
  });

  it('refuses a changed PCR value, another nonce, a forged signature and a cut structure, naming why', () => {
    const quote = makeQuote(nonce, pcrs);
    assert.throws(() => verifyPcrQuote({ ...quote, pcrs: pcrs.map((p, i) => (i === 3 ? 'f'.repeat(64) : p)) }), /the PCR values given are not the ones quoted/);
    assert.throws(() => verifyPcrQuote({ ...quote, nonce: '7766554433221100' }), /it carries another nonce than the one asked/);
    assert.throws(() => verifyPcrQuote({ ...quote, signature: { ...quote.signature, r: '1'.repeat(64) } }), /its signature does not verify/);
    assert.throws(() => verifyPcrQuote({ ...quote, quoted: quote.quoted.slice(0, 40) }), /its structure is cut short/);
    assert.throws(() => verifyPcrQuote({ ...quote, ak: { x: '0'.repeat(64), y: '0'.repeat(64) } }), { code: 'QUOTE_INVALID' });
  });
});
