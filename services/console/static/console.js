// Draws every <canvas data-chart="ID"> with Chart.js from the JSON in <script type="application/json" id="ID">
// (built by services/console/service.py: title, day labels, series with kind, axis and stack).
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
    const scales = {
      x: { stacked: stacked },
      y: { beginAtZero: true, stacked: stacked, position: "left" },
    };
    if (usesRight) {
      scales.y1 = { beginAtZero: true, position: "right", grid: { drawOnChartArea: false } };
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
          tension: 0.2,
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
})();
