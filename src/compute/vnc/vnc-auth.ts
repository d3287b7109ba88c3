/**
 * VNC Authentication (RFC 6143 7.2.2): the answer to a 16-byte challenge is the challenge
 * encrypted with DES, keyed by the password (its first 8 characters, zero-padded), with the bits
 * of each key byte reversed (a quirk every RFB implementation keeps). Protocol code: it imports
 * nothing from the application.
 */
import { createCipheriv, randomInt } from 'node:crypto';

const PASSWORD_ALPHABET = 'ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789';

/** The answer to `challenge` for `password`. */
export function vncAuthResponse(challenge: Buffer, password: string): Buffer {
  const key = Buffer.alloc(8);
  Buffer.from(password, 'latin1').copy(key, 0, 0, 8);
  for (let i = 0; i < 8; i += 1) {
    let reversed = 0;
    for (let bit = 0; bit < 8; bit += 1) if (key[i] & (1 << bit)) reversed |= 1 << (7 - bit);
    key[i] = reversed;
  }
  // OpenSSL 3 keeps single DES in its legacy provider only; triple DES with three equal keys is
  // the same cipher (encrypt, decrypt, encrypt with one key).
  const cipher = createCipheriv('des-ede3-ecb', Buffer.concat([key, key, key]), null);
  cipher.setAutoPadding(false);
  return Buffer.concat([cipher.update(challenge), cipher.final()]);
}

/** An 8-character VNC password of letters and digits, without look-alikes (it may be typed into a viewer). */
export function newVncPassword(): string {
  return Array.from({ length: 8 }, () => PASSWORD_ALPHABET[randomInt(PASSWORD_ALPHABET.length)]).join('');
}
