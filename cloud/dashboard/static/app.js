// Charts for the dashboard: every element with data-chart is drawn with uPlot from its
// data-src JSON (the page's /api twin) and, with data-live, refreshed every few seconds.
// Time charts span the t the server sends (the data's range, or the chosen ?window=); a null
// rate (the bucket still filling) is a gap at the right end, never a zero.
(function () {
  "use strict";
  const COLORS = ["#1f5fbf", "#d9480f", "#2b8a3e", "#862e9c", "#c92a2a", "#0b7285", "#e67700", "#495057"];
  const refreshS = Number(document.body.dataset.refresh || 5);

  function merge(named) {
    // [{label, points: [[x, y], ...]}] -> uPlot data with one shared, sorted x axis.
    const xs = new Set();
    named.forEach(s => s.points.forEach(p => xs.add(p[0])));
    const x = Array.from(xs).sort((a, b) => a - b);
    const index = new Map(x.map((v, i) => [v, i]));
    const ys = named.map(s => {
      const y = new Array(x.length).fill(null);
      s.points.forEach(p => { const i = index.get(p[0]); y[i] = y[i] === null ? p[1] : Math.max(y[i], p[1]); });
      return y;
    });
    return [x, ...ys];
  }

  function cdf(q) { return (q || []).map((v, i) => [Math.max(v, 1e-6), i]); }

  function timeSeries(t, groups) {
    const labels = [], data = [t];
    groups.forEach(g => Object.keys(g.rates).sort().forEach(k => {
      labels.push(g.prefix ? g.prefix + k : k); data.push(g.rates[k]);
    }));
    return { labels, data, time: true, yLabel: "per second" };
  }

  const BUILD = {
    rates: d => timeSeries(d.rates.t, [{ rates: d.rates.events, prefix: "events: " }]),
    anomalous: d => timeSeries(d.rates.t, [{ rates: d.rates.anomalous, prefix: "anomalous: " }]),
    decisions: d => timeSeries(d.decisions.t, [{ rates: d.decisions.rates }]),
    "alert-kinds": d => timeSeries(d.alerts_by_kind.t, [{ rates: d.alerts_by_kind.rates }]),
    gateway: d => timeSeries(d.series.t, [{ rates: d.series.events, prefix: "events: " },
                                          { rates: d.series.anomalous, prefix: "anomalous: " }]),
    scores: (d, el) => {
      const s = d.score_distributions[el.dataset.stream] || { training: [], live: [] };
      return { labels: ["training window", "live"], data: merge([
        { label: "training", points: cdf(s.training) }, { label: "live", points: cdf(s.live) }]),
        logX: true, xLabel: "score", yLabel: "% of events below" };
    },
    "run-scores": d => {
      const q = d.curves.score_quantiles || {};
      return { labels: ["challenger", "champion"], data: merge([
        { points: cdf(q.challenger) }, { points: cdf(q.champion) }]),
        logX: true, xLabel: "score", yLabel: "% of holdout below" };
    },
    loss: d => ({ labels: ["loss"], data: [d.curves.loss.map((_, i) => i + 1), d.curves.loss],
                  xLabel: "epoch", yLabel: "mean squared error" }),
    roc: d => ({ labels: ["challenger", "champion", "chance"], data: merge([
      { points: (d.curves.challenger.roc || []) }, { points: (d.curves.champion.roc || []) },
      { points: [[0, 0], [1, 1]] }]), xLabel: "false-positive rate", yLabel: "true-positive rate" }),
    pr: d => ({ labels: ["challenger", "champion"], data: merge([
      { points: (d.curves.challenger.pr || []) }, { points: (d.curves.champion.pr || []) }]),
      xLabel: "recall", yLabel: "precision" }),
  };

  function options(el, spec) {
    const series = [{ label: spec.time ? "time (UTC)" : spec.xLabel }];
    spec.labels.forEach((label, i) => series.push({
      label, stroke: COLORS[i % COLORS.length], width: 2, spanGaps: true,
      points: { show: false }, dash: label === "chance" ? [6, 6] : undefined }));
    return {
      width: Math.max(320, el.clientWidth - 16), height: 260, series,
      scales: { x: spec.time ? { time: true } : (spec.logX ? { time: false, distr: 3 } : { time: false }) },
      axes: [{ label: spec.time ? "" : spec.xLabel }, { label: spec.yLabel }],
      legend: { live: true }, tzDate: ts => uPlot.tzDate(new Date(ts * 1e3), "Etc/UTC"),
    };
  }

  function empty(el) {
    // Fitting the data found none in the kept window: say so instead of a blank frame.
    if (el._plot) { el._plot.destroy(); el._plot = null; el._shape = null; }
    if (!el._empty) {
      el._empty = document.createElement("p");
      el._empty.className = "empty muted";
      el._empty.textContent = "No events in this window yet.";
      el.appendChild(el._empty);
    }
    el.dataset.drawn = "1";
  }

  async function draw(el) {
    try {
      const resp = await fetch(el.dataset.src, { credentials: "same-origin", headers: { "Accept": "application/json" } });
      if (!resp.ok) return;
      const spec = BUILD[el.dataset.chart](await resp.json(), el);
      if (spec.time && !spec.data[0].length) { empty(el); return; }
      if (el._empty) { el._empty.remove(); el._empty = null; }
      const shape = spec.labels.join("|");
      if (el._plot && el._shape === shape) { el._plot.setData(spec.data); return; }
      if (el._plot) el._plot.destroy();
      el._plot = new uPlot(options(el, spec), spec.data, el);
      el._shape = shape;
      el.dataset.drawn = "1";
    } catch (err) { el.dataset.error = String(err); }
  }

  function start() {
    const charts = Array.from(document.querySelectorAll("[data-chart]"));
    charts.forEach(draw);
    const live = charts.filter(el => el.dataset.live);
    if (live.length) setInterval(() => live.forEach(draw), refreshS * 1000);
    window.addEventListener("resize", () => charts.forEach(el => el._plot &&
      el._plot.setSize({ width: Math.max(320, el.clientWidth - 16), height: 260 })));
  }
  document.addEventListener("DOMContentLoaded", start);
})();
