/**
 * What every route plugin shares: the Fastify instance type it receives and the error
 * responses its routes declare.
 */
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { ErrorBody } from '../../wire/schemas.ts';

/** The Fastify instance a route plugin receives: TypeBox types each request from its schemas. */
export type RouteApp = Parameters<FastifyPluginAsyncTypebox>[0];

/** What a route that acts on or names a resource may answer besides success (error-status.ts). */
export const errorResponses = { 400: ErrorBody, 401: ErrorBody, 404: ErrorBody, 409: ErrorBody, 422: ErrorBody, 503: ErrorBody };
/** What a list may answer besides success: a refused query or a missing token. */
export const listErrorResponses = { 400: ErrorBody, 401: ErrorBody };
