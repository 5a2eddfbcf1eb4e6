/*
 * Live training progress in the recommender admin, without a library.
 *
 * On a version's page, polls the staff-only JSON view named by
 * #recommender-progress[data-progress-url] about once a second and fills in the
 * elements with rec-progress-* ids, until the run is ready or failed. On the versions
 * list, a disabled #recommender-retrain[data-progress-url] button is re-enabled when
 * the run it waits for ends.
 */
(function () {
  "use strict";

  var POLL_MS = 1000;

  function fetchProgress(url) {
    return fetch(url, {
      credentials: "same-origin",
      headers: { Accept: "application/json" },
      cache: "no-store",
    }).then(function (response) {
      if (!response.ok) {
        throw new Error("HTTP " + response.status);
      }
      return response.json();
    });
  }

  var retrain = document.getElementById("recommender-retrain");
  if (retrain && retrain.disabled && retrain.dataset.progressUrl) {
    (function waitForRun() {
      fetchProgress(retrain.dataset.progressUrl)
        .then(function (data) {
          if (data.finished) {
            retrain.disabled = false;
            retrain.textContent = "Retrain now";
            retrain.dataset.lastStatus = data.status;
          } else {
            var p = data.progress || {};
            retrain.textContent = "Training v" + data.id + " " + data.status +
              (p.epochs ? " (epoch " + (p.epoch || 0) + "/" + p.epochs + ")" : "") + "…";
            window.setTimeout(waitForRun, POLL_MS * 2);
          }
        })
        .catch(function () {
          window.setTimeout(waitForRun, POLL_MS * 5);
        });
    })();
  }

  var panel = document.getElementById("recommender-progress");
  if (!panel || !panel.dataset.progressUrl) {
    return;
  }

  function byId(id) {
    return document.getElementById(id);
  }

  function setText(id, text) {
    var el = byId(id);
    if (el && el.textContent !== text) {
      el.textContent = text;
    }
  }

  function number(value, digits) {
    return typeof value === "number" && isFinite(value) ? value.toFixed(digits) : "—";
  }

  function seconds(value) {
    if (typeof value !== "number" || !isFinite(value)) {
      return "—";
    }
    var s = Math.round(value);
    if (s < 60) {
      return s + "s";
    }
    var m = Math.floor(s / 60);
    if (m < 60) {
      return m + "m " + String(s % 60).padStart(2, "0") + "s";
    }
    return Math.floor(m / 60) + "h " + String(m % 60).padStart(2, "0") + "m";
  }

  function render(data) {
    var p = data.progress || {};
    panel.dataset.status = data.status;
    var status = byId("rec-progress-status");
    if (status) {
      status.textContent = data.status;
      status.className = "rec-badge rec-status-" + data.status;
    }
    setText("rec-progress-stage", p.stage || "waiting for a worker");
    setText("rec-progress-epoch", p.epochs ? (p.epoch || 0) + " / " + p.epochs : "—");
    setText("rec-progress-loss", number(p.loss, 4));
    setText("rec-progress-ndcg", number(p.val_ndcg10, 4));
    setText("rec-progress-elapsed", seconds(p.elapsed));
    setText("rec-progress-eta", data.finished ? "—" : seconds(p.eta));
    var bar = byId("rec-progress-bar");
    if (bar) {
      bar.value = data.percent;
      bar.textContent = data.percent + "%";
    }
    var error = byId("rec-progress-error");
    if (error) {
      error.textContent = data.error || "";
      error.hidden = !data.error;
    }
    if (data.status === "ready") {
      var done = byId("rec-progress-done");
      if (done) {
        done.hidden = false;
      }
    }
  }

  function poll() {
    fetchProgress(panel.dataset.progressUrl)
      .then(function (data) {
        render(data);
        if (!data.finished) {
          window.setTimeout(poll, POLL_MS);
        }
      })
      .catch(function () {
        // A dropped request (server restart, network blip): try again a little later.
        panel.dataset.pollError = "1";
        window.setTimeout(poll, POLL_MS * 3);
      });
  }

  if (panel.dataset.status === "queued" || panel.dataset.status === "running") {
    poll();
  }
})();
