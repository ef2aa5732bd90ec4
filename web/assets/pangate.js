// The pages, live. Once a second, while the tab is visible:
// - every element marked data-live is compared with the same element of the page as the
//   server renders it now, and replaced where it changed (forms are never marked, so
//   nothing typed is lost, and an element holding the focus is left alone);
// - every chart panel (section.charts) fetches the points after its newest from its
//   data-series URL and redraws with uPlot (vendored, served by the gateway).
// A hidden tab polls nothing; it catches up when shown again.
'use strict';
(() => {
  const PERIOD_MS = 1000;
  const KEEP_SECONDS = 3600;

  // The units of web/src/units.rs: SI per second for rates, µs/ms/s for latency.
  const si = (v) => {
    const a = Math.abs(v);
    for (const [f, p] of [[1e12, 'T'], [1e9, 'G'], [1e6, 'M'], [1e3, 'k']]) {
      if (a >= f) return `${(v / f).toFixed(1)} ${p}`;
    }
    return `${v.toFixed(a > 0 && a < 10 && v % 1 ? 1 : 0)} `;
  };
  const latency = (s) => (s < 1e-3 ? `${(s * 1e6).toFixed(0)} µs` : s < 1 ? `${(s * 1e3).toFixed(2)} ms` : `${s.toFixed(2)} s`);
  const FORMAT = { '/s': (v) => `${si(v)}/s`, 'B/s': (v) => `${si(v)}B/s`, s: latency };
  const COLOURS = ['#2a6fdb', '#d9480f', '#2b8a3e', '#862e9c'];

  const indicator = () => document.getElementById('live');
  const say = (text, cls) => {
    const el = indicator();
    if (el) { el.textContent = text; el.className = cls; }
  };

  // Live regions: the server's rendering is the only source of what they show.
  async function refresh() {
    if (!document.querySelector('[data-live]')) return;
    const r = await fetch(location.href, { headers: { 'X-Pangate-Live': '1' }, cache: 'no-store' });
    if (!r.ok || r.redirected) throw new Error(`${r.status}`);
    const doc = new DOMParser().parseFromString(await r.text(), 'text/html');
    for (const el of document.querySelectorAll('[data-live]')) {
      const fresh = el.id && doc.getElementById(el.id);
      if (!fresh || el.contains(document.activeElement) || el.outerHTML === fresh.outerHTML) continue;
      el.replaceWith(document.importNode(fresh, true));
    }
  }

  class Panel {
    constructor(section) {
      this.section = section;
      this.url = section.dataset.series;
      this.window = Number(section.dataset.window) || 300;
      this.t = [];
      this.columns = [];
      this.plots = [];
      // The window buttons work only with this script, so they show only with it.
      const windows = section.querySelector('.windows');
      if (windows) windows.hidden = false;
      for (const b of section.querySelectorAll('button[data-window]')) {
        b.addEventListener('click', () => this.setWindow(Number(b.dataset.window)));
      }
    }

    setWindow(seconds) {
      this.window = seconds;
      for (const b of this.section.querySelectorAll('button[data-window]')) {
        b.setAttribute('aria-pressed', String(Number(b.dataset.window) === seconds));
      }
      this.draw();
    }

    async poll() {
      const after = this.t.length ? this.t[this.t.length - 1] : 0;
      const r = await fetch(`${this.url}?after=${after}`, { cache: 'no-store' });
      if (!r.ok) throw new Error(`${r.status}`);
      const s = await r.json();
      const signature = JSON.stringify(s.charts);
      if (this.signature !== signature) {
        // A node gained its first LAN port, say: start over with the new set of charts.
        this.reset();
        this.signature = signature;
        this.build(s.charts);
        if (after) return; // the next poll fetches the whole hour
      }
      this.t.push(...s.t);
      s.values.forEach((v, i) => this.columns[i].push(...v));
      const drop = Math.max(0, this.t.length - KEEP_SECONDS);
      if (drop) {
        this.t.splice(0, drop);
        this.columns.forEach((c) => c.splice(0, drop));
      }
      this.draw();
    }

    reset() {
      for (const p of this.plots) { p.observer.disconnect(); p.u.destroy(); }
      this.plots = [];
      this.t = [];
      this.columns = [];
    }

    // The figure of a chart: the server renders one per chart it knew of (with the newest
    // values in its caption); a chart that came later gets one here.
    figure(title) {
      let figure = [...this.section.querySelectorAll('figure[data-chart]')].find((f) => f.dataset.chart === title);
      if (!figure) {
        figure = document.createElement('figure');
        figure.className = 'chart';
        figure.dataset.chart = title;
        const caption = document.createElement('figcaption');
        caption.textContent = title;
        const plot = document.createElement('div');
        plot.className = 'plot';
        figure.append(caption, plot);
        this.section.querySelector('.figures').append(figure);
      }
      return figure;
    }

    build(charts) {
      let column = 0;
      for (const chart of charts) {
        const figure = this.figure(chart.title);
        const fmt = FORMAT[chart.unit] || ((v) => String(v));
        const first = column;
        for (let i = 0; i < chart.series.length; i++) this.columns.push([]);
        column += chart.series.length;
        const plot = figure.querySelector('.plot');
        plot.replaceChildren();
        const width = () => Math.max(240, Math.min(plot.clientWidth || 480, 640));
        const opts = {
          width: width(),
          height: 160,
          scales: {
            x: { time: true, range: (u, min, max) => { const end = max ?? Date.now() / 1000; return [end - this.window, end]; } },
            y: { range: (u, min, max) => [0, Math.max(max || 0, chart.unit === 's' ? 1e-4 : 1) * 1.1] },
          },
          // The y-axis' tick labels, kept on the figure too (the canvas has no text to read).
          axes: [{ space: 70 },
            { size: (u, values) => 16 + 7 * Math.max(4, ...(values || []).map((v) => v.length)),
              values: (u, splits) => { const v = splits.map(fmt); figure.dataset.ticks = v.join(' | '); return v; } }],
          series: [{ value: '{YYYY}-{MM}-{DD} {HH}:{mm}:{ss}' },
            ...chart.series.map((name, i) => ({ label: name, stroke: COLOURS[i % COLOURS.length], width: 1.5,
              value: (u, v) => (v == null ? '-' : fmt(v)) }))],
        };
        const u = new uPlot(opts, [[], ...chart.series.map(() => [])], plot);
        const observer = new ResizeObserver(() => { if (u.width !== width()) u.setSize({ width: width(), height: 160 }); });
        observer.observe(plot);
        this.plots.push({ u, observer, figure, first, chart, fmt });
      }
    }

    draw() {
      for (const { u, figure, first, chart, fmt } of this.plots) {
        const cols = this.columns.slice(first, first + chart.series.length);
        u.setData([this.t, ...cols]);
        const last = cols.map((c) => (c.length ? c[c.length - 1] : null));
        // The caption says the newest values (the server wrote them at page load).
        let now = figure.querySelector('figcaption .now');
        if (!now) {
          now = document.createElement('span');
          now.className = 'now';
          figure.querySelector('figcaption').append(' ', now);
        }
        now.textContent = chart.series.map((name, i) => `${name} ${last[i] == null ? '-' : fmt(last[i])}`).join(' · ');
        // What the browser test reads: how many points, and the newest values.
        figure.dataset.points = String(this.t.length);
        figure.dataset.last = JSON.stringify(last);
      }
    }
  }

  const panels = [...document.querySelectorAll('section.charts[data-series]')].map((s) => new Panel(s));
  // idle: nothing scheduled (hidden tab); running: polling now; waiting: next poll due.
  let state = 'idle';

  async function tick() {
    if (document.hidden) { state = 'idle'; say('paused', 'paused'); return; }
    state = 'running';
    try {
      await Promise.all([refresh(), ...panels.map((p) => p.poll())]);
      say('live', 'ok');
    } catch (e) {
      say(`not answering (${e.message}); retrying`, 'error');
    }
    if (document.hidden) { state = 'idle'; say('paused', 'paused'); return; }
    state = 'waiting';
    setTimeout(tick, PERIOD_MS);
  }

  document.addEventListener('visibilitychange', () => {
    if (!document.hidden && state === 'idle') tick();
  });
  if (document.body.dataset.live !== undefined) tick();
})();
