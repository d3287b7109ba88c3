/**
 * The part of autocannon 9's API that bench/access uses (the package ships no types, and its
 * README is the reference: https://github.com/mcollina/autocannon#api).
 */
declare module 'autocannon' {
  import type { EventEmitter } from 'node:events';

  export interface AutocannonRequest {
    method?: string;
    path?: string;
    headers?: Record<string, string>;
    body?: string;
    /** Called before each request; returns the request to send. */
    setupRequest?: (request: AutocannonRequest, context: Record<string, unknown>) => AutocannonRequest;
  }

  export interface AutocannonOptions {
    url: string;
    connections?: number;
    /** Seconds. */
    duration?: number;
    method?: string;
    headers?: Record<string, string>;
    body?: string;
    requests?: AutocannonRequest[];
    /** Seconds before a request counts as timed out (default 10). */
    timeout?: number;
  }

  export interface AutocannonResult {
    /** Seconds the run lasted. */
    duration: number;
    errors: number;
    timeouts: number;
    non2xx: number;
    '2xx': number;
    statusCodeStats: Record<string, { count: number }>;
    requests: { sent: number; average: number };
    latency: { p50: number; p99: number };
  }

  /** Emits `response` (client, statusCode, bytes, responseTimeMs) for every response. */
  export interface AutocannonInstance extends EventEmitter, PromiseLike<AutocannonResult> {}

  export default function autocannon(options: AutocannonOptions): AutocannonInstance;
}
