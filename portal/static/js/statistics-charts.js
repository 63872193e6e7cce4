/* Statistics charts (portal/templates/statistics/_panel.html): <canvas data-stat-chart='{"kind":
   "bar"|"line", "currency", "digits", "labels", "label", "values", "counts"}'>, drawn with
   Chart.js once it has loaded. The panel swapped in by its pickers (htmx) is drawn again;
   charts whose canvas left the page are destroyed. The numbers are also in a table beside
   each chart. */
(function () {
  "use strict";

  function cssVar(name, fallback) {
    var value = getComputedStyle(document.documentElement).getPropertyValue(name).trim();
    return value || fallback;
  }

  function draw(root, animate) {
    var Chart = window.Chart;
    if (!Chart) {
      return;
    }
    Object.values(Chart.instances || {}).forEach(function (chart) {
      if (!chart.canvas || !chart.canvas.isConnected) {
        chart.destroy();
      }
    });
    root.querySelectorAll("canvas[data-stat-chart]").forEach(function (canvas) {
      if (Chart.getChart(canvas)) {
        return;
      }
      var data;
      try {
        data = JSON.parse(canvas.dataset.statChart);
      } catch (error) {
        return;
      }
      var format = new Intl.NumberFormat(undefined, {
        minimumFractionDigits: data.digits,
        maximumFractionDigits: data.digits,
      });
      var compact = new Intl.NumberFormat(undefined, { notation: "compact" });
      var text = cssVar("--color-muted", "#4a5261");
      var grid = cssVar("--color-chart-grid", "#e5e7eb");
      var colour = cssVar(data.kind === "line" ? "--color-chart-out" : "--color-chart-in",
        data.kind === "line" ? "#2563eb" : "#16a34a");
      var reduced = window.matchMedia("(prefers-reduced-motion: reduce)").matches;
      new Chart(canvas, {
        type: data.kind === "line" ? "line" : "bar",
        data: {
          labels: data.labels,
          datasets: [{
            label: data.label,
            data: data.values.map(Number),
            backgroundColor: colour,
            borderColor: colour,
            borderRadius: 4,
            tension: 0.2,
            pointRadius: 2,
          }],
        },
        options: {
          responsive: true,
          maintainAspectRatio: false,
          animation: animate && !reduced ? { duration: 300 } : false,
          interaction: { mode: "index", intersect: false },
          plugins: {
            legend: { display: false },
            tooltip: {
              callbacks: {
                label: function (item) {
                  var count = data.counts[item.dataIndex];
                  return format.format(item.parsed.y) + " " + data.currency +
                    (data.kind === "line" ? "" : " (" + count + ")");
                },
              },
            },
          },
          scales: {
            x: {
              grid: { display: false },
              ticks: {
                color: text, maxRotation: 0, autoSkip: true,
                callback: function (value) {
                  return String(data.labels[value]).split(" ")[0];
                },
              },
            },
            y: {
              beginAtZero: data.kind !== "line",
              grid: { color: grid },
              ticks: {
                color: text,
                callback: function (value) {
                  return compact.format(value);
                },
              },
            },
          },
        },
      });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    draw(document, true);
  });
  document.addEventListener("htmx:afterSettle", function () {
    draw(document, false);
  });
  /* Chart.js is loaded with defer too: draw once it is there if the page was ready first. */
  window.addEventListener("load", function () {
    draw(document, false);
  });
})();
