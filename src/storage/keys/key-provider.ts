/**
 * Where the key-encryption keys (KEKs) of encrypted volumes live, behind a small interface: the
 * storage engine only ever holds a volume's data key wrapped (encrypted and authenticated) by a
 * KEK, and asks a provider to wrap and unwrap it. The default provider keeps its KEKs in a key
 * file of the storage node (file-key-provider.ts); an external KMS is another implementation of
 * this interface, not a change to the engine.
 */

/** A data key wrapped by a KEK: which KEK, and the wrapped bytes (base64). */
export interface WrappedKey {
  kekId: string;
  wrapped: string;
}

/** A rotation begun by `KeyProvider.rotate`: the new KEK is current and durable, the old ones kept. */
export interface KeyRotation {
  /** The new current KEK. */
  readonly kekId: string;
  /**
   * Destroys every KEK but the new one. Call it only once every wrapped key has been rewrapped
   * with the new KEK and that is durable: a key still wrapped by a destroyed KEK is lost.
   */
  retire(): Promise<{ destroyedKekIds: string[] }>;
}

/** What a provider shows of itself (never key material). */
export interface KeyProviderStatus {
  provider: string;
  /** Where the KEKs are (a file path, a KMS address). */
  location: string;
  /** The KEK new keys are wrapped with; undefined before the first encrypted volume. */
  currentKekId?: string;
  currentKekCreatedAt?: string;
  /** Older KEKs still kept: a rotation was interrupted or could not rewrap every key. */
  retiredKekIds: string[];
}

/**
 * Wraps and unwraps data keys. `volumeId` names the volume a key belongs to (the storage node
 * passes `<pool uuid>/<volume id>`) and is bound to the wrapped key: a wrapped key copied to
 * another volume does not unwrap there.
 */
export interface KeyProvider {
  /** Wraps `dataKey` with the current KEK (making the first KEK if there is none). */
  wrap(dataKey: Buffer, volumeId: string): Promise<WrappedKey>;
  /** The data key; `VOLUME_KEY_UNAVAILABLE` when its KEK is gone or the bytes do not authenticate. */
  unwrap(wrapped: WrappedKey, volumeId: string): Promise<Buffer>;
  /** Makes a new KEK the current one, durably, keeping the old ones until `retire`. */
  rotate(): Promise<KeyRotation>;
  status(): Promise<KeyProviderStatus>;
}
