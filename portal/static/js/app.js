/* Portal: small progressive enhancements. Every page works without this file. */
(function () {
  "use strict";

  /* "Copy" buttons: <button data-copy="#element-id" hidden>, with data-copy-compact to drop
     the spaces. Shown only when the clipboard can be used; the text stays selectable anyway. */
  function setUpCopyButtons(root) {
    if (!navigator.clipboard) {
      return;
    }
    root.querySelectorAll("button[data-copy]").forEach(function (button) {
      if (button.dataset.copyReady) {
        return;
      }
      button.dataset.copyReady = "1";
      button.hidden = false;
      button.addEventListener("click", function () {
        var source = document.querySelector(button.dataset.copy);
        if (!source) {
          return;
        }
        var text = source.innerText.trim();
        if (button.hasAttribute("data-copy-compact")) {
          text = text.replace(/\s+/g, ""); /* a key shown in groups of four */
        }
        navigator.clipboard.writeText(text).then(function () {
          var label = button.textContent;
          button.textContent = "Copied";
          window.setTimeout(function () {
            button.textContent = label;
          }, 2000);
        });
      });
    });
  }

  /* After htmx swaps a form back with errors, move focus to the first field that needs
     attention, so keyboard and screen-reader users land on the message. */
  function focusFirstInvalid(root) {
    var field = root.querySelector("[aria-invalid='true']");
    if (field) {
      field.focus();
    }
  }

  document.addEventListener("DOMContentLoaded", function () {
    setUpCopyButtons(document);
  });

  /* The wallet's monthly chart: <canvas data-chart='{"currency", "digits", "labels", "in",
     "out"}'>, drawn with Chart.js when it is loaded (the dashboard loads it). Charts swapped in
     by live updates are drawn too; charts whose canvas left the page are destroyed. */
  function cssVar(name, fallback) {
    var value = getComputedStyle(document.documentElement).getPropertyValue(name).trim();
    return value || fallback;
  }

  function drawCharts(root, animate) {
    var Chart = window.Chart;
    if (!Chart) {
      return;
    }
    Object.values(Chart.instances || {}).forEach(function (chart) {
      if (!chart.canvas || !chart.canvas.isConnected) {
        chart.destroy();
      }
    });
    root.querySelectorAll("canvas[data-chart]").forEach(function (canvas) {
      if (Chart.getChart(canvas)) {
        return;
      }
      var data;
      try {
        data = JSON.parse(canvas.dataset.chart);
      } catch (error) {
        return;
      }
      var format = new Intl.NumberFormat(data.locale || undefined, {
        minimumFractionDigits: data.digits,
        maximumFractionDigits: data.digits,
      });
      var compact = new Intl.NumberFormat(data.locale || undefined, { notation: "compact" });
      var text = cssVar("--color-muted", "#4a5261");
      var grid = cssVar("--color-chart-grid", "#e5e7eb");
      var reduced = window.matchMedia("(prefers-reduced-motion: reduce)").matches;
      new Chart(canvas, {
        type: "bar",
        data: {
          labels: data.labels,
          datasets: [
            {
              label: "Money in",
              data: data["in"].map(Number),
              backgroundColor: cssVar("--color-chart-in", "#16a34a"),
              borderRadius: 4,
            },
            {
              label: "Money out",
              data: data.out.map(Number),
              backgroundColor: cssVar("--color-chart-out", "#2563eb"),
              borderRadius: 4,
            },
          ],
        },
        options: {
          responsive: true,
          maintainAspectRatio: false,
          animation: animate && !reduced ? { duration: 400 } : false,
          interaction: { mode: "index", intersect: false },
          plugins: {
            legend: { position: "bottom", labels: { color: text, boxWidth: 12 } },
            tooltip: {
              callbacks: {
                label: function (item) {
                  return item.dataset.label + ": " + format.format(item.parsed.y) + " " +
                    data.currency;
                },
              },
            },
          },
          scales: {
            x: { grid: { display: false }, ticks: { color: text, maxRotation: 0, autoSkip: true } },
            y: {
              beginAtZero: true,
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

  /* A swapped-in review or receipt takes the focus, so keyboard and screen-reader users
     follow the step they are on. */
  function focusNewStep(root) {
    var target = root.querySelector("[data-autofocus]");
    if (target) {
      target.focus();
    }
  }

  document.addEventListener("DOMContentLoaded", function () {
    drawCharts(document, true);
  });

  /* Out-of-band swaps (live updates) settle after the main swap: redraw any new chart. */
  document.addEventListener("htmx:afterSettle", function () {
    drawCharts(document, false);
  });

  /* Money that has just arrived through a live update: the activity row (new, or a top-up
     that settled) and the card whose available balance went up get a brief highlight, and
     the page's aria-live region (#live-announcer) says what came in. What the page showed
     before is remembered here, so only real changes count. */
  var seenItems = null;
  var seenBalances = null;
  var HIGHLIGHT_MS = 4000;

  function snapshot() {
    var items = {};
    document.querySelectorAll(".activity__item[data-item-status]").forEach(function (item) {
      items[item.id] = item.dataset.itemStatus;
    });
    var balances = {};
    document.querySelectorAll("[data-balance=available][data-minor]").forEach(function (dd) {
      var tile = dd.closest(".card-tile");
      if (tile) {
        balances[tile.id] = Number(dd.dataset.minor);
      }
    });
    return { items: items, balances: balances };
  }

  function highlight(element) {
    element.classList.add("is-new");
    window.setTimeout(function () {
      element.classList.remove("is-new");
    }, HIGHLIGHT_MS);
  }

  function announceIncoming(live) {
    var now = snapshot();
    if (seenItems === null || !live) {
      seenItems = now.items;
      seenBalances = now.balances;
      return;
    }
    var messages = [];
    document.querySelectorAll(".activity__item[data-announce]").forEach(function (item) {
      var before = seenItems[item.id];
      if (item.dataset.itemStatus === "succeeded" && before !== "succeeded") {
        highlight(item);
        messages.push(item.dataset.announce);
      }
    });
    Object.keys(now.balances).forEach(function (id) {
      var before = seenBalances[id];
      if (before !== undefined && now.balances[id] > before) {
        var tile = document.getElementById(id);
        if (tile) {
          highlight(tile);
        }
      }
    });
    seenItems = now.items;
    seenBalances = now.balances;
    var region = document.getElementById("live-announcer");
    if (region && messages.length) {
      /* Cleared first, so the same words said twice are announced twice. */
      region.textContent = "";
      window.setTimeout(function () {
        region.textContent = "Money in: " + messages.join(". ") + ".";
      }, 100);
    }
  }

  document.addEventListener("DOMContentLoaded", function () {
    announceIncoming(false);
  });

  /* Only answers of the live poller announce; other swaps (more rows, a frozen card) just
     update what the page is known to show. */
  document.addEventListener("htmx:afterSettle", function (event) {
    var xhr = (event.detail || {}).xhr;
    announceIncoming(Boolean(xhr && /\/wallet\/changes\b/.test(xhr.responseURL || "")));
  });

  document.addEventListener("htmx:afterSwap", function (event) {
    var detail = event.detail || {};
    var target = detail.target;
    /* An outerHTML swap replaces the target: find its successor by id. */
    var current = target && (target.isConnected ? target : document.getElementById(target.id));
    setUpCopyButtons(current || document);
    if (current && detail.xhr && detail.xhr.status === 422) {
      focusFirstInvalid(current);
    } else if (current && current.id === "money-flow") {
      focusNewStep(current);
    }
  });
})();
