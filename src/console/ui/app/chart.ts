// A uPlot line chart that fills its container's width: one series over time (x in seconds).
import { html } from 'htm/preact';
import type { VNode } from 'preact';
import { useEffect, useRef } from 'preact/hooks';
import uPlot from 'uplot';
import 'uplot/dist/uPlot.min.css';

export interface ChartProps {
  /** x: Unix seconds; y: values (null leaves a gap). */
  xs: number[];
  ys: Array<number | null>;
  label: string;
  height: number;
  /** Draws steps (booleans, counts) instead of straight lines. */
  stepped?: boolean;
  testid?: string;
}

function options(props: ChartProps, width: number): uPlot.Options {
  return {
    width,
    height: props.height,
    legend: { show: false },
    cursor: { drag: { x: false, y: false } },
    scales: { x: { time: true } },
    axes: [
      { stroke: '#555', grid: { stroke: '#eee' }, ticks: { stroke: '#ddd' } },
      { stroke: '#555', grid: { stroke: '#eee' }, ticks: { stroke: '#ddd' }, size: 56 },
    ],
    series: [
      {},
      {
        label: props.label,
        stroke: '#1f6feb',
        width: 1.5,
        fill: 'rgba(31, 111, 235, 0.08)',
        points: { show: false },
        ...(props.stepped ? { paths: uPlot.paths.stepped?.({ align: 1 }) } : {}),
      },
    ],
  };
}

export function Chart(props: ChartProps): VNode {
  const box = useRef<HTMLDivElement>(null);
  const plot = useRef<uPlot | null>(null);

  useEffect(() => {
    const element = box.current;
    if (!element) return;
    const chart = new uPlot(options(props, Math.max(element.clientWidth, 100)), [props.xs, props.ys], element);
    plot.current = chart;
    const observer = new ResizeObserver(() => {
      const width = element.clientWidth;
      if (width > 0 && width !== chart.width) chart.setSize({ width, height: props.height });
    });
    observer.observe(element);
    return () => {
      observer.disconnect();
      chart.destroy();
      plot.current = null;
    };
  }, [props.label, props.height, props.stepped]);

  useEffect(() => {
    plot.current?.setData([props.xs, props.ys]);
  }, [props.xs, props.ys]);

  return html`<div class="chart" ref=${box} data-testid=${props.testid}></div>`;
}
