// The "Am I filtered?" page: once the browser has asked for every canary, fetch what the
// school's filter did with those lookups and fill in the table. Without this file the page's
// "see the results" link shows the same.
(function () {
  "use strict";
  var table = document.getElementById("live-test");
  var status = document.getElementById("test-status");
  if (!table) { return; }
  var images = Array.prototype.slice.call(document.querySelectorAll("img.canary"));
  var pending = images.length;
  var asked = false;
  var LOOKS = 10;

  // A category not yet as the policy says is "checking" until the last look: its lookup may
  // still be on its way to the log.
  function show(result, last) {
    result.categories.forEach(function (c) {
      var row = document.getElementById("cat-" + c.id);
      if (!row) { return; }
      var cell = row.querySelector(".observed");
      var waiting = !c.as_policy_says && !last;
      cell.textContent = waiting ? "Checking…" : c.words;
      row.setAttribute("data-observed", waiting ? "checking" : c.observed);
      cell.classList.toggle("error", !c.as_policy_says && last);
    });
  }

  function settled(result) {
    return result.categories.every(function (c) { return c.as_policy_says; });
  }

  function tell(result, last) {
    if (result.reached === true && (settled(result) || last)) {
      status.textContent = "Done: this device's lookups reach the school's filter.";
    } else if (!last) {
      status.textContent = "Checking what the school's filter did with this device's lookups…";
    } else if (result.reached === false) {
      status.textContent = "This device's lookups did not reach the school's filter. Tell the ICT technician.";
    } else {
      status.textContent = "Done.";
    }
  }

  function ask(round) {
    fetch(table.getAttribute("data-result"), { credentials: "same-origin", cache: "no-store" })
      .then(function (response) { return response.json(); })
      .then(function (result) {
        // The filter logs blocked lookups in bursts about a second apart, later on a busy
        // appliance: look again each second until every category is as the policy says, and
        // only then, or after the last look, say whether this device's lookups reach it.
        var last = settled(result) || round >= LOOKS - 1;
        show(result, last);
        tell(result, last);
        if (!last) { setTimeout(function () { ask(round + 1); }, 1000); }
      })
      .catch(function () { status.textContent = "The results could not be fetched; use the link instead."; });
  }

  function done() {
    pending -= 1;
    if (pending <= 0 && !asked) { asked = true; setTimeout(function () { ask(0); }, 500); }
  }
  images.forEach(function (img) {
    if (img.complete) { done(); } else {
      img.addEventListener("load", done);
      img.addEventListener("error", done);
    }
  });
  setTimeout(function () { if (!asked) { asked = true; ask(0); } }, 4000);
})();
