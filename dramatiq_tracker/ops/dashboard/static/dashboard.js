// dramatiq-tracker dashboard: pages update themselves without reloading.  The page's live part is
// fetched again from the server (the same URL with _live=1), already rendered and escaped there,
// and swapped in.  No framework, no build step; the Content-Security-Policy allows only this file.
"use strict";
(function () {
  var settingsElement = document.getElementById("dashboard-settings");
  var settings = settingsElement ? JSON.parse(settingsElement.textContent) : {};
  var live = document.getElementById("live");
  var status = document.getElementById("live-status");
  var toggle = document.getElementById("live-toggle");
  var refresh = settings.refresh || 0;
  var paused = false;
  var timer = null;
  var updates = 0;
  // A page slow to render (a filter over a huge namespace) is fetched less often: the next update
  // waits at least twice as long as the last one took.
  var delay = refresh;

  // What a failed update says, by HTTP status.
  var FAILURES = { 401: "log in again", 503: "the tracker's Redis is unreachable; retrying" };

  if (!live || !refresh) {
    return;
  }

  // Every time the dashboard shows is in UTC, as the server writes them; so is this one.
  function utcTime(date) {
    return date.toISOString().slice(11, 19) + " UTC";
  }

  function say(text, failed) {
    if (status) {
      status.textContent = text;
      status.classList.toggle("failed", Boolean(failed));
    }
  }

  function schedule() {
    clearTimeout(timer);
    timer = setTimeout(update, delay);
  }

  function update() {
    if (paused || document.hidden) {
      schedule();
      return;
    }
    var target = new URL(window.location.href);
    var started = Date.now();
    target.searchParams.set("_live", "1");
    fetch(target.toString(), { credentials: "same-origin", cache: "no-store", headers: { Accept: "text/html" } })
      .then(function (response) {
        if (!response.ok) {
          throw new Error(FAILURES[response.status] || "HTTP " + response.status);
        }
        return response.text();
      })
      .then(function (html) {
        if (html !== live.innerHTML) {
          live.innerHTML = html;
        }
        updates += 1;
        delay = Math.max(refresh, 2 * (Date.now() - started));
        live.setAttribute("data-updates", String(updates));
        say("updated " + utcTime(new Date()), false);
      })
      .catch(function (error) {
        say("update failed: " + error.message, true);
      })
      .then(schedule);
  }

  if (toggle) {
    toggle.hidden = false;
    toggle.addEventListener("click", function () {
      paused = !paused;
      toggle.textContent = paused ? "Resume live updates" : "Pause live updates";
      toggle.setAttribute("aria-pressed", paused ? "true" : "false");
      say(paused ? "paused" : "", false);
      if (!paused) {
        update();
      }
    });
  }
  document.addEventListener("visibilitychange", function () {
    if (!document.hidden && !paused) {
      update();
    }
  });
  say("live", false);
  schedule();
})();
