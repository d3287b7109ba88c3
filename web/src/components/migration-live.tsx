/**
 * A migration as it happens, from its operation's event stream (GET /v1/operations/{id}/events,
 * past events replayed first, then `end`): the stages it went through, a live chart of each
 * pre-copy pass (what was sent, what remains, the guest's dirty rate against the link; the
 * figures src/migration/migration-stream.ts reports with each pass), and once it ends the
 * model's prediction beside the outcome.
 */
import { useEffect, useMemo, useState } from 'react';
import type uPlot from 'uplot';
import type { Operation } from '../api/client';
import { formatBytes, UPlotChart } from './uplot-chart';

interface ProgressEvent {
  seq: number;
  at: string;
  stage: string;
  message: string;
  progress: number;
  data?: Record<string, unknown>;
}

interface PassSample {
  seconds: number;
  pass: number;
  transferredBytes: number;
  remainingBytes: number;
  dirtyRateBytesPerSec: number;
  bandwidthBytesPerSec: number;
}

interface Prediction {
  basis?: string;
  route?: string;
  converges?: boolean;
  predictedTotalMs?: number;
  predictedDowntimeMs?: number;
  dirtyRateBytesPerSec?: number;
  bandwidthBytesPerSec?: number;
}

/** What the migration service records when a migration ends (MigrationFigures). */
interface Figures {
  totalTimeMs?: number;
  downtimeMs?: number;
  pausedMs?: number;
  transferredBytes?: number;
  passes?: number;
  switchedToPostcopy?: boolean;
  prediction?: Prediction;
  predictionErrorPercent?: number;
}

const num = (value: unknown): number => (typeof value === 'number' && Number.isFinite(value) ? value : 0);

/** Follows one operation's events while mounted. */
function useOperationEvents(operationId: string) {
  const [events, setEvents] = useState<ProgressEvent[]>([]);
  const [end, setEnd] = useState<Operation>();
  const [failure, setFailure] = useState<string>();
  useEffect(() => {
    setEvents([]);
    setEnd(undefined);
    const source = new EventSource(`/v1/operations/${encodeURIComponent(operationId)}/events`);
    source.addEventListener('progress', (message) => {
      const event = JSON.parse((message as MessageEvent<string>).data) as ProgressEvent;
      setEvents((seen) => (seen.some((known) => known.seq === event.seq) ? seen : [...seen, event]));
    });
    source.addEventListener('end', (message) => {
      setEnd(JSON.parse((message as MessageEvent<string>).data) as Operation);
      // The stream ends with the operation: an EventSource would otherwise open it again.
      source.close();
    });
    source.onerror = () => {
      if (source.readyState === EventSource.CLOSED) setFailure("The operation's event stream could not be opened");
    };
    return () => source.close();
  }, [operationId]);
  return { events, end, failure };
}

/** The pre-copy passes' samples, in seconds since the first event. */
function passSamples(events: ProgressEvent[]): PassSample[] {
  const start = events.length ? Date.parse(events[0].at) : 0;
  return events
    .filter((event) => event.stage === 'precopy' && event.data)
    .map((event) => ({
      seconds: (Date.parse(event.at) - start) / 1000,
      pass: num(event.data?.pass),
      transferredBytes: num(event.data?.transferredBytes),
      remainingBytes: num(event.data?.remainingBytes),
      dirtyRateBytesPerSec: num(event.data?.dirtyRateBytesPerSec),
      bandwidthBytesPerSec: num(event.data?.bandwidthBytesPerSec),
    }));
}

const CHART_OPTIONS: Omit<uPlot.Options, 'width' | 'height'> = {
  scales: { x: { time: false }, bytes: {}, rate: {} },
  series: [
    { label: 's', value: (_, v) => (v === null ? '—' : `${v.toFixed(1)} s`) },
    { label: 'sent', scale: 'bytes', stroke: '#2563eb', width: 2, value: (_, v) => (v === null ? '—' : formatBytes(v)) },
    { label: 'remaining', scale: 'bytes', stroke: '#d97706', width: 2, value: (_, v) => (v === null ? '—' : formatBytes(v)) },
    { label: 'dirty rate', scale: 'rate', stroke: '#dc2626', dash: [6, 4], value: (_, v) => (v === null ? '—' : formatBytes(v, true)) },
    { label: 'link', scale: 'rate', stroke: '#059669', dash: [2, 3], value: (_, v) => (v === null ? '—' : formatBytes(v, true)) },
  ],
  axes: [
    { label: 'seconds', values: (_, ticks) => ticks.map((tick) => `${tick}`) },
    { scale: 'bytes', size: 70, values: (_, ticks) => ticks.map((tick) => formatBytes(tick)) },
    { scale: 'rate', side: 1, size: 80, grid: { show: false }, values: (_, ticks) => ticks.map((tick) => formatBytes(tick, true)) },
  ],
};

const ms = (value: number | undefined): string => (value === undefined ? '—' : `${Math.round(value)} ms`);

function PredictionBesideOutcome({ figures }: { figures: Figures }) {
  const predicted = figures.prediction;
  return (
    <table className="prediction" aria-label="Prediction beside the outcome">
      <thead>
        <tr>
          <th scope="col" />
          <th scope="col">Predicted{predicted?.basis ? ` (${predicted.basis})` : ''}</th>
          <th scope="col">Outcome</th>
        </tr>
      </thead>
      <tbody>
        <tr>
          <th scope="row">Total time</th>
          <td>{ms(predicted?.predictedTotalMs)}</td>
          <td data-outcome="total">
            {ms(figures.totalTimeMs)}
            {figures.predictionErrorPercent !== undefined
              ? ` (${figures.predictionErrorPercent > 0 ? '+' : ''}${figures.predictionErrorPercent} % against the prediction)`
              : ''}
          </td>
        </tr>
        <tr>
          <th scope="row">Downtime</th>
          <td>{ms(predicted?.predictedDowntimeMs)}</td>
          <td>
            {ms(figures.downtimeMs)} QEMU, {ms(figures.pausedMs)} paused
          </td>
        </tr>
        <tr>
          <th scope="row">Route</th>
          <td>
            {predicted?.route ?? '—'}
            {predicted?.converges === false ? ' (pre-copy would not converge)' : ''}
          </td>
          <td>
            {figures.switchedToPostcopy ? 'postcopy' : 'precopy'}, {figures.passes ?? '?'} pass{figures.passes === 1 ? '' : 'es'},{' '}
            {formatBytes(figures.transferredBytes ?? 0)} sent
          </td>
        </tr>
      </tbody>
    </table>
  );
}

/** The live view of one migration operation. */
export function MigrationLive({ operationId }: { operationId: string }) {
  const { events, end, failure } = useOperationEvents(operationId);
  const samples = useMemo(() => passSamples(events), [events]);
  const data = useMemo<uPlot.AlignedData>(
    () => [
      samples.map((sample) => sample.seconds),
      samples.map((sample) => sample.transferredBytes),
      samples.map((sample) => sample.remainingBytes),
      samples.map((sample) => sample.dirtyRateBytesPerSec),
      samples.map((sample) => sample.bandwidthBytesPerSec),
    ],
    [samples],
  );
  const stages = useMemo(() => {
    const last = new Map<string, ProgressEvent>();
    for (const event of events) last.set(event.stage, event);
    return [...last.values()];
  }, [events]);
  const passes = useMemo(() => {
    const byPass = new Map<number, PassSample>();
    for (const sample of samples) byPass.set(sample.pass, sample);
    return [...byPass.values()];
  }, [samples]);
  const current = events.at(-1);
  const done = events.find((event) => event.stage === 'done');
  const figures = (done?.data ?? (end?.result as { figures?: Figures } | undefined)?.figures) as Figures | undefined;
  const status = end ? end.status : 'running';
  return (
    <section className="card migration-live" aria-labelledby={`migration-${operationId}`} data-migration-status={status}>
      <h2 id={`migration-${operationId}`}>
        Migration <span className={`state state-${status}`}>{status}</span>
      </h2>
      {failure && !end && <p role="alert">{failure}</p>}
      <p className="migration-stage" data-stage={current?.stage ?? ''}>
        {current ? `${current.stage}: ${current.message}` : 'Waiting for the first event'}
      </p>
      {end?.error && <p role="alert">{end.error.message}</p>}
      <ol className="stages" aria-label="Stages">
        {stages.map((event) => (
          <li key={event.stage} data-stage={event.stage} title={event.message}>
            {event.stage}
          </li>
        ))}
      </ol>
      {samples.length > 0 ? (
        <UPlotChart title="Pre-copy: sent, remaining, dirty rate against the link" options={CHART_OPTIONS} seriesKey="precopy" data={data} />
      ) : (
        <p className="empty">{end ? 'No pre-copy pass was reported' : 'The chart starts with the first pre-copy pass'}</p>
      )}
      {passes.length > 0 && (
        <table className="passes" aria-label="Passes">
          <thead>
            <tr>
              <th scope="col">Pass</th>
              <th scope="col">Sent</th>
              <th scope="col">Remaining</th>
              <th scope="col">Dirty rate</th>
              <th scope="col">Link</th>
            </tr>
          </thead>
          <tbody>
            {passes.map((sample) => (
              <tr key={sample.pass} data-pass={sample.pass}>
                <td>{sample.pass}</td>
                <td>{formatBytes(sample.transferredBytes)}</td>
                <td>{formatBytes(sample.remainingBytes)}</td>
                <td>{formatBytes(sample.dirtyRateBytesPerSec, true)}</td>
                <td>{formatBytes(sample.bandwidthBytesPerSec, true)}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      {figures && <PredictionBesideOutcome figures={figures} />}
    </section>
  );
}
