/*
 * recommender tracker: records what shoppers do, for recommendations.
 *
 * Markup it understands (no other dependency, no globals except window.recommenderTracker):
 *   data-rec-view="<item id>"          a view of that item when the page loads
 *   data-rec-item="<item id>"          a click on that element is a "click" on the item
 *   data-rec-placement="home"          (on an ancestor) where the items were shown
 *   data-rec-recommendation="<uuid>"   (on an ancestor) the recommendation list they came from;
 *                                      when half of it is on screen, one impression is counted
 *   data-rec-scroll="1" / "-1"         a button that scrolls its carousel forward / back
 *
 * Events are queued, sent in batches every few seconds with fetch(keepalive), and
 * flushed with navigator.sendBeacon when the page is hidden. Each event carries its own
 * event_id, so a batch retried after a network error is stored once.
 */
(function () {
  "use strict";
  var script = document.currentScript;
  if (!script || window.recommenderTracker) { return; }
  var endpoint = script.getAttribute("data-endpoint");
  var impressionsEndpoint = script.getAttribute("data-impressions-endpoint");
  var seenLists = [];
  var csrfToken = script.getAttribute("data-csrf-token") || "";
  var flushMs = parseInt(script.getAttribute("data-flush-ms") || "2000", 10);
  var MAX_BATCH = 100;
  var MAX_RETRIES = 3;
  var queue = [];
  var timer = null;

  function uuid4() {
    if (window.crypto && crypto.randomUUID) { return crypto.randomUUID(); }
    var b = new Uint8Array(16);
    crypto.getRandomValues(b);
    b[6] = (b[6] & 0x0f) | 0x40; b[8] = (b[8] & 0x3f) | 0x80;
    var h = Array.prototype.map.call(b, function (x) { return (x + 0x100).toString(16).slice(1); }).join("");
    return h.slice(0, 8) + "-" + h.slice(8, 12) + "-" + h.slice(12, 16) + "-" + h.slice(16, 20) + "-" + h.slice(20);
  }

  function context(el) {
    var placed = el.closest("[data-rec-placement]");
    var recommended = el.closest("[data-rec-recommendation]");
    return {
      placement: placed ? placed.getAttribute("data-rec-placement") : "",
      recommendation_id: recommended ? recommended.getAttribute("data-rec-recommendation") : null
    };
  }

  function track(kind, item, extra) {
    if (!item) { return; }
    var event = {
      event_id: uuid4(), kind: kind, item: String(item), occurred_at: Date.now(),
      page: location.pathname.slice(0, 200)
    };
    extra = extra || {};
    for (var key in extra) { if (extra[key] !== undefined && extra[key] !== null && extra[key] !== "") { event[key] = extra[key]; } }
    queue.push({ event: event, tries: 0 });
    if (queue.length >= MAX_BATCH) { flush(); } else if (!timer) { timer = setTimeout(flush, flushMs); }
  }

  function send(batch) {
    var body = JSON.stringify({ events: batch.map(function (q) { return q.event; }) });
    return fetch(endpoint, {
      method: "POST", credentials: "same-origin", keepalive: true,
      headers: { "Content-Type": "application/json", "X-CSRFToken": csrfToken },
      body: body
    }).then(function (response) {
      // 4xx means the batch itself is bad (it was not stored): retrying cannot help.
      if (response.status >= 500 || response.status === 429) { throw new Error("HTTP " + response.status); }
      return response;
    });
  }

  function flush() {
    clearTimeout(timer); timer = null;
    if (!queue.length) { return; }
    var batch = queue.splice(0, MAX_BATCH);
    send(batch).catch(function () {
      var retry = batch.filter(function (q) { return ++q.tries <= MAX_RETRIES; });
      queue = retry.concat(queue);
      if (!timer) { timer = setTimeout(flush, flushMs * Math.pow(2, batch[0].tries)); }
    });
    if (queue.length) { timer = setTimeout(flush, flushMs); }
  }

  function flushOnHide() {
    if (!queue.length) { return; }
    var batch = queue.splice(0, MAX_BATCH);
    var body = JSON.stringify({ csrf_token: csrfToken, events: batch.map(function (q) { return q.event; }) });
    var sent = navigator.sendBeacon && navigator.sendBeacon(endpoint, new Blob([body], { type: "application/json" }));
    if (!sent) { queue = batch.concat(queue); flush(); }
  }

  function sendImpressions() {
    if (!seenLists.length || !impressionsEndpoint) { return; }
    var body = JSON.stringify({ csrf_token: csrfToken, recommendations: seenLists.splice(0, 50) });
    var sent = navigator.sendBeacon && navigator.sendBeacon(impressionsEndpoint, new Blob([body], { type: "application/json" }));
    if (!sent) {
      fetch(impressionsEndpoint, { method: "POST", credentials: "same-origin", keepalive: true,
        headers: { "Content-Type": "application/json", "X-CSRFToken": csrfToken }, body: body }).catch(function () {});
    }
  }

  function watchImpressions() {
    var lists = document.querySelectorAll("[data-rec-recommendation]");
    if (!lists.length || !("IntersectionObserver" in window)) { return; }
    var observer = new IntersectionObserver(function (entries) {
      entries.forEach(function (entry) {
        if (entry.isIntersecting) {
          var id = entry.target.getAttribute("data-rec-recommendation");
          if (id && seenLists.indexOf(id) < 0) { seenLists.push(id); setTimeout(sendImpressions, 500); }
          observer.unobserve(entry.target);
        }
      });
    }, { threshold: 0.5 });
    Array.prototype.forEach.call(lists, function (el) { observer.observe(el); });
  }

  function init() {
    watchImpressions();
    document.addEventListener("click", function (e) {
      var button = e.target.closest && e.target.closest("[data-rec-scroll]");
      if (!button) { return; }
      var track = button.closest("[data-rec-placement]").querySelector("ol, ul");
      if (track) { track.scrollBy({ left: track.clientWidth * 0.9 * parseInt(button.getAttribute("data-rec-scroll"), 10), behavior: "smooth" }); }
    });
    Array.prototype.forEach.call(document.querySelectorAll("[data-rec-view]"), function (el) {
      track("view", el.getAttribute("data-rec-view"), context(el));
    });
    document.addEventListener("click", function (e) {
      var el = e.target.closest && e.target.closest("[data-rec-item]");
      if (el) { track("click", el.getAttribute("data-rec-item"), context(el)); }
    }, true);
    document.addEventListener("visibilitychange", function () {
      if (document.visibilityState === "hidden") { flushOnHide(); }
    });
    window.addEventListener("pagehide", flushOnHide);
  }

  window.recommenderTracker = { track: track, flush: flush };
  if (document.readyState === "loading") { document.addEventListener("DOMContentLoaded", init); } else { init(); }
})();
