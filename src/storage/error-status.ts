/** HTTP statuses of storage error codes, by their suffix: bad requests are 4xx, never 500. */
export function storageHttpStatus(code: string): number {
  if (/_NOT_FOUND$/.test(code)) return 404;
  if (/(_EXISTS|_IN_USE|_NOT_EMPTY|_READ_ONLY|POOL_DEVICE_DUPLICATE)$/.test(code)) return 409;
  if (code === 'POOL_FULL' || code === 'POOL_METADATA_FULL') return 507;
  if (code === 'POOL_FAULTED' || code === 'POOL_CLOSED') return 503;
  if (/(_INVALID|_TOO_FEW_DEVICES|_TOO_SMALL|_SHRINK_BELOW_DATA|_NO_REDUNDANCY)$/.test(code)) return 400;
  return 500;
}
