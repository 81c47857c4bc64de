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

  function show(result) {
    result.categories.forEach(function (c) {
      var row = document.getElementById("cat-" + c.id);
      if (!row) { return; }
      var cell = row.querySelector(".observed");
      cell.textContent = c.words;
      row.setAttribute("data-observed", c.observed);
      if (!c.as_policy_says) { cell.classList.add("error"); }
    });
    if (result.reached === false) {
      status.textContent = "This device's lookups did not reach the school's filter. Tell the ICT technician.";
    } else if (result.reached === true) {
      status.textContent = "Done: this device's lookups reach the school's filter.";
    }
  }

  function ask(round) {
    fetch(table.getAttribute("data-result"), { credentials: "same-origin", cache: "no-store" })
      .then(function (response) { return response.json(); })
      .then(function (result) {
        show(result);
        // Blocked lookups are logged within a second or so: look again a few times.
        if (round < 4) { setTimeout(function () { ask(round + 1); }, 1000); }
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
