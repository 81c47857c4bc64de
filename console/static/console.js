// schoolgate console: progressive enhancement only; every page works without this file.
(function () {
  "use strict";
  document.documentElement.classList.remove("no-js");
  var toggle = document.querySelector(".menu-toggle");
  var nav = document.getElementById("nav");
  if (toggle && nav) {
    toggle.addEventListener("click", function () {
      var open = nav.classList.toggle("open");
      toggle.setAttribute("aria-expanded", open ? "true" : "false");
    });
  }
  // Auto-submit filter selects marked data-autosubmit (the form still has a button without JS).
  document.querySelectorAll("select[data-autosubmit]").forEach(function (el) {
    el.addEventListener("change", function () { if (el.form) { el.form.submit(); } });
  });
})();
