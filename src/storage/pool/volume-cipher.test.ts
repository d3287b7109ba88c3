// The XTS layer of encrypted volumes: the published XTS-AES-256 vector, every sector against
// node:crypto directly, a tweak per sector, never-written sectors, bad keys and ranges.
import assert from 'node:assert/strict';
import { createCipheriv, randomBytes } from 'node:crypto';
import { describe, it } from 'node:test';
import { isNubisError } from '../../core/errors.ts';
import { CRYPT_SECTOR_BYTES, sectorTweak, VolumeCipher } from './volume-cipher.ts';

const S = CRYPT_SECTOR_BYTES;

/** IEEE 1619-2007 annex B, XTS-AES-256 vector 10: data unit 0xff, 512 bytes 00..ff twice. */
const VECTOR_10 = {
  key: '2718281828459045235360287471352662497757247093699959574966967627' + '3141592653589793238462643383279502884197169399375105820974944592',
  sector: 0xff,
  ciphertext:
    '1c3b3a102f770386e4836c99e370cf9bea00803f5e482357a4ae12d414a3e63b5d31e276f8fe4a8d66b317f9ac683f44680a86ac35adfc3345befecb4bb188fd' +
    '5776926c49a3095eb108fd1098baec70aaa66999a72a82f27d848b21d4a741b0c5cd4d5fff9dac89aeba122961d03a757123e9870f8acf1000020887891429ca' +
    '2a3e7a7d7df7b10355165c8b9a6d0a7de8b062c4500dc4cd120c0f7418dae3d0b5781c34803fa75421c790dfe1de1834f280d7667b327f6c8cd7557e12ac3a0f' +
    '93ec05c52e0493ef31a12d3d9260f79a289d6a379bc70c50841473d1a8cc81ec583e9645e07b8d9670655ba5bbcfecc6dc3966380ad8fecb17b6ba02469a020a' +
    '84e18e8f84252070c13e9f1f289be54fbc481457778f616015e1327a02b140f1505eb309326d68378f8374595c849d84f4c333ec4423885143cb47bd71c5edae' +
    '9be69a2ffeceb1bec9de244fbe15992b11b77c040f12bd8f6a975a44a0f90c29a9abc3d4d893927284c58754cce294529f8614dcd2aba991925fedc4ae74ffac' +
    '6e333b93eb4aff0479da9a410e4450e0dd7ae4c6e2910900575da401fc07059f645e8b7e9bfdef33943054ff84011493c27b3429eaedb4ed5376441a77ed4385' +
    '1ad77f16f541dfd269d50d6a5f14fb0aab1cbb4c1550be97f7ab4066193c4caa773dad38014bd2092fa755c824bb5e54c4f36ffda9fcea70b9c6e693e148c151',
};

function nodeXts(key: Buffer, sector: number, plain: Buffer): Buffer {
  const cipher = createCipheriv('aes-256-xts', key, sectorTweak(sector));
  return Buffer.concat([cipher.update(plain), cipher.final()]);
}

function distinctKey(): Buffer {
  const key = randomBytes(64);
  key[0] = key[32]! ^ 1;
  return key;
}

describe('VolumeCipher', () => {
  it('encodes the tweak as the published vector expects (sector number, 128-bit little endian)', () => {
    const plain = Buffer.alloc(512);
    for (let i = 0; i < 512; i++) plain[i] = i & 0xff;
    assert.equal(nodeXts(Buffer.from(VECTOR_10.key, 'hex'), VECTOR_10.sector, plain).toString('hex'), VECTOR_10.ciphertext);
    assert.equal(sectorTweak(0x1_0000_0002).toString('hex'), '02000000010000000000000000000000', 'sectors past 2^32 keep their high bits');
  });

  it('encrypts every sector exactly as node:crypto aes-256-xts does with that sector as the tweak', () => {
    const key = distinctKey();
    const cipher = new VolumeCipher(key);
    const plain = randomBytes(5 * S);
    const position = 7 * S;
    const sealed = cipher.encrypt(plain, position);
    for (let i = 0; i < 5; i++) {
      const expected = nodeXts(key, 7 + i, plain.subarray(i * S, (i + 1) * S));
      assert.ok(sealed.subarray(i * S, (i + 1) * S).equals(expected), `sector ${7 + i}`);
    }
    const back = Buffer.from(sealed);
    cipher.decryptInPlace(back, position);
    assert.ok(back.equals(plain), 'decrypts back');
  });

  it('encrypts equal plaintext at different offsets differently, and only with the right offset back', () => {
    const cipher = VolumeCipher.generate();
    const plain = Buffer.alloc(S, 'same block ');
    const a = cipher.encrypt(plain, 0);
    const b = cipher.encrypt(plain, S);
    assert.ok(!a.equals(b), 'the tweak differs per sector');
    assert.ok(cipher.encrypt(plain, 0).equals(a), 'deterministic for one sector');
    const moved = Buffer.from(a);
    cipher.decryptInPlace(moved, S);
    assert.ok(!moved.equals(plain), 'a sector copied to another offset does not decrypt to its plaintext');
    assert.ok(!VolumeCipher.generate().encrypt(plain, 0).equals(a), 'another key, another ciphertext');
  });

  it('reads stored zeroes as zeroes, and never stores plaintext zeroes as zeroes', () => {
    const cipher = VolumeCipher.generate();
    const zero = Buffer.alloc(2 * S);
    const sealed = cipher.encrypt(zero, 0);
    assert.ok(
      sealed.subarray(0, S).some((b) => b !== 0),
      'zero plaintext is encrypted like any other',
    );
    const stored = Buffer.concat([Buffer.alloc(S), sealed.subarray(S)]);
    cipher.decryptInPlace(stored, 0);
    assert.ok(stored.equals(zero), 'a never-written sector and an encrypted zero sector both read as zeroes');
  });

  it('refuses bad keys and ranges that are not whole sectors', () => {
    const code = (fn: () => unknown, expected: string): void =>
      assert.throws(fn, (error: unknown) => isNubisError(error, expected) && /[A-Z]/.test((error as Error).message[0]!));
    code(() => new VolumeCipher(randomBytes(32)), 'VOLUME_KEY_MALFORMED');
    const half = randomBytes(32);
    code(() => new VolumeCipher(Buffer.concat([half, half])), 'VOLUME_KEY_MALFORMED');
    const cipher = VolumeCipher.generate();
    code(() => cipher.encrypt(Buffer.alloc(S), 512), 'VOLUME_IO_RANGE');
    code(() => cipher.encrypt(Buffer.alloc(S - 16), 0), 'VOLUME_IO_RANGE');
    code(() => cipher.decryptInPlace(Buffer.alloc(S + 1), 0), 'VOLUME_IO_RANGE');
  });

  it('keeps a copy of the key and is useless once destroyed', () => {
    const key = distinctKey();
    const cipher = new VolumeCipher(key);
    const sealed = cipher.encrypt(Buffer.alloc(S, 7), 0);
    key.fill(1);
    assert.ok(cipher.encrypt(Buffer.alloc(S, 7), 0).equals(sealed), "the caller's buffer is not the key");
    cipher.destroy();
    assert.ok(cipher.exportKey().every((b) => b === 0));
    assert.throws(() => cipher.encrypt(Buffer.alloc(S, 7), 0));
  });
});
