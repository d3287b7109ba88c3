/**
 * One uPlot chart in the page, as wide as its box: created once per set of series, fed new data
 * in place (so a live chart does not flicker), resized with its box, destroyed with the component.
 */
import { useEffect, useRef } from 'react';
import uPlot from 'uplot';
import 'uplot/dist/uPlot.min.css';

const CHART_HEIGHT_PX = 180;

export interface UPlotChartProps {
  title: string;
  /** What builds the options; a change of `seriesKey` builds the chart again. */
  options: Omit<uPlot.Options, 'width' | 'height'>;
  seriesKey: string;
  data: uPlot.AlignedData;
}

/** A chart whose title names it for screen readers too (the canvas itself says nothing). */
export function UPlotChart({ title, options, seriesKey, data }: UPlotChartProps) {
  const box = useRef<HTMLDivElement>(null);
  const chart = useRef<uPlot | undefined>(undefined);
  const latest = useRef(data);
  latest.current = data;
  // biome-ignore lint/correctness/useExhaustiveDependencies: the chart is rebuilt only when its series change (seriesKey)
  useEffect(() => {
    const target = box.current;
    if (!target) return;
    const made = new uPlot({ ...options, title, width: Math.max(target.clientWidth, 200), height: CHART_HEIGHT_PX }, latest.current, target);
    chart.current = made;
    const resized = new ResizeObserver(() => made.setSize({ width: Math.max(target.clientWidth, 200), height: CHART_HEIGHT_PX }));
    resized.observe(target);
    return () => {
      resized.disconnect();
      made.destroy();
      chart.current = undefined;
    };
  }, [seriesKey, title]);
  useEffect(() => {
    chart.current?.setData(data);
  }, [data]);
  return <figure className="chart" ref={box} aria-label={title} data-chart={title} />;
}

/** An axis value in bytes (or bytes per second with `perSecond`), in the largest unit above 1. */
export function formatBytes(value: number, perSecond = false): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let amount = Math.abs(value);
  let index = 0;
  while (amount >= 1024 && index < units.length - 1) {
    amount /= 1024;
    index++;
  }
  const sign = value < 0 ? '-' : '';
  return `${sign}${amount >= 10 || Number.isInteger(amount) ? Math.round(amount) : amount.toFixed(1)} ${units[index]}${perSecond ? '/s' : ''}`;
}
