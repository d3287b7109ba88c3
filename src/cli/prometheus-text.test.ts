import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { Counter, Histogram, Registry } from 'prom-client';
import type { NubisError } from '../core/errors.ts';
import { parsePrometheusText } from './prometheus-text.ts';

describe('Prometheus text parsing (nubis metrics --json)', () => {
  it('reads back what prom-client writes: names, escaped labels, values and family types', async () => {
    const registry = new Registry();
    const counter = new Counter({ name: 'x_requests_total', help: 'h', labelNames: ['route'] as const, registers: [registry] });
    const histogram = new Histogram({ name: 'x_seconds', help: 'h', buckets: [0.5], registers: [registry] });
    counter.inc({ route: '/v1/vms/:vm "quoted" back\\slash\nnewline' }, 3);
    histogram.observe(0.25);
    const samples = parsePrometheusText(await registry.metrics());
    assert.deepEqual(samples, [
      { name: 'x_requests_total', labels: { route: '/v1/vms/:vm "quoted" back\\slash\nnewline' }, value: 3, type: 'counter' },
      { name: 'x_seconds_bucket', labels: { le: '0.5' }, value: 1, type: 'histogram' },
      { name: 'x_seconds_bucket', labels: { le: '+Inf' }, value: 1, type: 'histogram' },
      { name: 'x_seconds_sum', labels: {}, value: 0.25, type: 'histogram' },
      { name: 'x_seconds_count', labels: {}, value: 1, type: 'histogram' },
    ]);
  });

  it('keeps NaN and infinities as text and takes a timestamp after the value', () => {
    assert.deepEqual(parsePrometheusText('a Nan\nb{x="1",} +Inf 1700000000000\nc -1.5e3\n'), [
      { name: 'a', labels: {}, value: 'Nan' },
      { name: 'b', labels: { x: '1' }, value: '+Inf' },
      { name: 'c', labels: {}, value: -1500 },
    ]);
  });

  it('names the first line that is not the format', () => {
    for (const [text, line] of [
      ['ok 1\n{x="1"} 2', 2],
      ['a{x=1} 2', 1],
      ['a{x="1" 2', 1],
      ['a lots', 1],
    ] as const)
      assert.throws(
        () => parsePrometheusText(text),
        (error: NubisError) => error.code === 'METRICS_UNPARSABLE' && error.message.startsWith(`Line ${line} `),
      );
  });
});
