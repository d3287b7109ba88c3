/**
 * The API's error contract at its edge: Fastify's validation and request errors and our own
 * NubisErrors become a status and a body with a stable code and a sentence (core/error-codes.ts).
 */
import type { FastifyError } from 'fastify';
import { NubisError } from '../core/errors.ts';
import { toWireError } from '../core/error-codes.ts';

/** Turns Fastify's validation errors into our codes and a sentence that names the field. */
export function toApiError(error: FastifyError | NubisError | Error): {
  status: number;
  body: { code: string; message: string; details?: Record<string, unknown> };
} {
  const fastifyError = error as FastifyError;
  if (fastifyError.validation) {
    const first = fastifyError.validation[0];
    const field = `${fastifyError.validationContext ?? 'body'}${first?.instancePath ? first.instancePath.replaceAll('/', '.') : ''}`;
    // details.field names the offending field for forms (the web console shows the message beside it).
    const missing = first?.keyword === 'required' ? (first.params as { missingProperty?: string }).missingProperty : undefined;
    const details = { field: missing ? `${field}.${missing}` : field };
    if (first?.keyword === 'additionalProperties') {
      const extra = (first.params as { additionalProperty?: string }).additionalProperty;
      return {
        status: 400,
        body: { code: 'UNKNOWN_FIELD', message: `Unknown field ${extra} in ${field}; remove it (see /v1/openapi.json for the fields)`, details },
      };
    }
    // A pattern alone tells a person nothing: name the value and say what the field takes.
    // (Ajv's `verbose` option adds the failing schema and value to each error.)
    const verbose = first as { parentSchema?: { description?: string }; data?: unknown } | undefined;
    const description = verbose?.parentSchema?.description;
    if (first?.keyword === 'pattern' && description && typeof verbose?.data === 'string') {
      const value = verbose.data.length > 200 ? `${JSON.stringify(verbose.data.slice(0, 200))}...` : JSON.stringify(verbose.data);
      return {
        status: 400,
        body: { code: 'VALIDATION_FAILED', message: `Invalid ${field} ${value}: give ${description.charAt(0).toLowerCase()}${description.slice(1)}`, details },
      };
    }
    return { status: 400, body: { code: 'VALIDATION_FAILED', message: `Invalid ${field}: ${first?.message ?? fastifyError.message}`, details } };
  }
  // Fastify's own refusals of a malformed request (a body that is no JSON, too large, ...).
  if (!(error instanceof NubisError) && fastifyError.statusCode && fastifyError.statusCode < 500 && fastifyError.code?.startsWith('FST_')) {
    return { status: fastifyError.statusCode, body: { code: 'BAD_REQUEST', message: fastifyError.message } };
  }
  return toWireError(error);
}
