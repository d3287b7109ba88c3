/**
 * A FIFO of received socket chunks that hands out exact byte counts without concatenating every
 * chunk: the parser of a stream protocol takes headers and payloads from it as they complete.
 */
export class ByteQueue {
  readonly #chunks: Buffer[] = [];
  /** Bytes of `#chunks[0]` already consumed. */
  #headOffset = 0;
  #length = 0;

  /** Bytes available. */
  get length(): number {
    return this.#length;
  }

  push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.#chunks.push(chunk);
    this.#length += chunk.length;
  }

  /**
   * Removes `n` bytes (n <= length) and returns them; a view into the received chunk when they
   * lie in one (no copy), else a fresh buffer.
   */
  take(n: number): Buffer {
    if (n > this.#length) throw new RangeError(`ByteQueue holds ${this.#length} bytes, ${n} asked`);
    const head = this.#chunks[0];
    if (head !== undefined && head.length - this.#headOffset >= n) {
      const view = head.subarray(this.#headOffset, this.#headOffset + n);
      this.#advance(n);
      return view;
    }
    const out = Buffer.allocUnsafe(n);
    this.copyInto(out, 0, n);
    return out;
  }

  /** Moves `n` bytes (n <= length) into `target` at `targetOffset`. */
  copyInto(target: Buffer, targetOffset: number, n: number): void {
    let copied = 0;
    while (copied < n) {
      const head = this.#chunks[0]!;
      const available = head.length - this.#headOffset;
      const count = Math.min(available, n - copied);
      head.copy(target, targetOffset + copied, this.#headOffset, this.#headOffset + count);
      copied += count;
      this.#advance(count);
    }
  }

  /** Drops `n` bytes (n <= length). */
  skip(n: number): void {
    let left = n;
    while (left > 0) {
      const head = this.#chunks[0]!;
      const count = Math.min(head.length - this.#headOffset, left);
      this.#advance(count);
      left -= count;
    }
  }

  clear(): void {
    this.#chunks.length = 0;
    this.#headOffset = 0;
    this.#length = 0;
  }

  #advance(n: number): void {
    this.#headOffset += n;
    this.#length -= n;
    if (this.#headOffset === this.#chunks[0]!.length) {
      this.#chunks.shift();
      this.#headOffset = 0;
    }
  }
}
