/**
 * File names as JavaScript strings without losing a byte. A Linux file name is any bytes but '/'
 * and NUL, so it need not be UTF-8; decoding it with replacement characters would merge names
 * that differ only in their invalid bytes, and a restore could not find the file again. The
 * convention is Python's "surrogateescape" (PEP 383): the name is read as UTF-8, and each byte
 * that is not part of a valid sequence becomes the lone surrogate U+DC80 + (byte - 0x80). Valid
 * UTF-8 never encodes a lone surrogate, so the mapping is undone exactly by {@link fileNameBytes}.
 * JSON.stringify writes lone surrogates as `\udcxx` escapes, so such names stay JSON-safe.
 */

const strictUtf8 = new TextDecoder('utf-8', { fatal: true });

/** The string for the bytes of a file name: its UTF-8 text, invalid bytes kept as U+DC80-U+DCFF. */
export function decodeFileName(bytes: Uint8Array): string {
  try {
    return strictUtf8.decode(bytes);
  } catch {
    return decodeByteByByte(bytes);
  }
}

/** The bytes of a name that {@link decodeFileName} produced (for any other string: its UTF-8). */
export function fileNameBytes(name: string): Buffer {
  const parts: Buffer[] = [];
  let textStart = 0;
  for (let i = 0; i < name.length; i++) {
    const unit = name.charCodeAt(i);
    // A lone U+DC80-U+DCFF only: a low surrogate after a high one is half of a real character.
    const isEscape = unit >= 0xdc80 && unit <= 0xdcff && !(i > 0 && isHighSurrogate(name.charCodeAt(i - 1)));
    if (!isEscape) continue;
    parts.push(Buffer.from(name.slice(textStart, i), 'utf8'), Buffer.of(unit - 0xdc00));
    textStart = i + 1;
  }
  if (textStart === 0) return Buffer.from(name, 'utf8');
  parts.push(Buffer.from(name.slice(textStart), 'utf8'));
  return Buffer.concat(parts);
}

function isHighSurrogate(unit: number): boolean {
  return unit >= 0xd800 && unit <= 0xdbff;
}

/** The slow path for names that are not valid UTF-8: each sequence that decodes on its own is kept. */
function decodeByteByByte(bytes: Uint8Array): string {
  let text = '';
  let i = 0;
  while (i < bytes.length) {
    const length = sequenceLength(bytes[i]);
    if (length > 0 && i + length <= bytes.length) {
      try {
        // The strict decoder rejects overlong forms, surrogates and code points past U+10FFFF.
        text += strictUtf8.decode(bytes.subarray(i, i + length));
        i += length;
        continue;
      } catch {
        // Not a valid sequence: escape its first byte and look again from the next one.
      }
    }
    text += String.fromCharCode(0xdc00 + bytes[i]);
    i += 1;
  }
  return text;
}

/** How many bytes the UTF-8 sequence led by `lead` has, or 0 when `lead` cannot start one. */
function sequenceLength(lead: number): number {
  if (lead < 0x80) return 1;
  if (lead >= 0xc2 && lead <= 0xdf) return 2;
  if (lead >= 0xe0 && lead <= 0xef) return 3;
  if (lead >= 0xf0 && lead <= 0xf4) return 4;
  return 0;
}
