/**
 * HTTP statuses of storage error codes, by their suffix: bad requests are 4xx, never 500.
 *
 * A device string that does not parse is 400 (the request alone shows the mistake). A
 * well-formed request naming a device this node cannot use (missing, a FIFO, a directory, a
 * character device such as /dev/zero, an NBD export that does not answer or is read-only, a file
 * it may not open) is 422: the request is understood, and what must change is on the host or in
 * the choice of device. A device that holds data is 409, like a device in use: the request is
 * fine, the device's state conflicts with it, and `force` resolves the conflict.
 */
export function storageHttpStatus(code: string): number {
  if (/_NOT_FOUND$/.test(code)) return 404;
  if (/(_EXISTS|_IN_USE|_NOT_EMPTY|_READ_ONLY|_HAS_DATA|POOL_DEVICE_DUPLICATE)$/.test(code)) return 409;
  if (code === 'POOL_FULL' || code === 'POOL_METADATA_FULL') return 507;
  if (code === 'POOL_FAULTED' || code === 'POOL_CLOSED') return 503;
  if (/(_INVALID|_TOO_FEW_DEVICES|_TOO_SMALL|_SHRINK_BELOW_DATA|_NO_REDUNDANCY)$/.test(code)) return 400;
  if (/^POOL_DEVICE_(MISSING|UNSUITABLE|UNREACHABLE|UNREADABLE)$/.test(code)) return 422;
  return 500;
}
