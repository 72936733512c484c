// Draws every <canvas data-chart="ID"> with Chart.js from the JSON in <script type="application/json" id="ID">
// (built by services/console/service.py: title, day labels, series with kind, axis and stack).
// Pages work without it: every chart's figures are in a table too.
"use strict";

(function () {
  const palette = ["#2563eb", "#dc2626", "#d97706", "#059669", "#7c3aed"];
  const reduceMotion = window.matchMedia("(prefers-reduced-motion: reduce)").matches;

  function draw(canvas) {
    const source = document.getElementById(canvas.dataset.chart);
    if (!source) return;
    const spec = JSON.parse(source.textContent);
    const usesRight = spec.series.some((s) => s.axis === "right");
    const stacked = spec.series.some((s) => s.stack);
    const number = (value) => Number(value).toLocaleString("en", { maximumSignificantDigits: 6 });
    const axis = (title, position) => ({
      beginAtZero: true,
      position: position,
      title: { display: Boolean(title), text: title },
      ticks: { callback: number },
    });
    const scales = { x: { stacked: stacked }, y: { ...axis(spec.axes.left, "left"), stacked: stacked } };
    if (usesRight) {
      scales.y1 = { ...axis(spec.axes.right, "right"), grid: { drawOnChartArea: false } };
    }
    new Chart(canvas, {
      data: {
        labels: spec.labels,
        datasets: spec.series.map((s, i) => ({
          type: s.kind,
          label: s.label,
          data: s.data,
          yAxisID: s.axis === "right" ? "y1" : "y",
          stack: s.stack || undefined,
          backgroundColor: palette[i % palette.length] + (s.kind === "line" ? "33" : "cc"),
          borderColor: palette[i % palette.length],
          borderWidth: s.kind === "line" ? 2 : 0,
          cubicInterpolationMode: "monotone",
          order: s.kind === "line" ? 0 : 1,
        })),
      },
      options: {
        responsive: true,
        maintainAspectRatio: false,
        animation: reduceMotion ? false : { duration: 300 },
        interaction: { mode: "index", intersect: false },
        scales: scales,
        plugins: { legend: { position: "bottom" } },
      },
    });
  }

  document.querySelectorAll("canvas[data-chart]").forEach(draw);

  // A page answering a form (the new key, shown once) puts the page's own address in the history instead of
  // the form's, so reloading it asks for the page again rather than sending the form a second time.
  const replace = document.querySelector("[data-replace-url]");
  if (replace) {
    window.history.replaceState(null, "", replace.dataset.replaceUrl);
  }
})();
