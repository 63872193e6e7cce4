/* The browser's time zone for the sign-up and sign-in forms (a hidden field the server keeps
   only while the account has none) and a suggestion on the account page. No inline script:
   the CSP allows scripts from 'self' only. */
(function () {
  "use strict";
  var zone = "";
  try {
    zone = Intl.DateTimeFormat().resolvedOptions().timeZone || "";
  } catch (e) {
    zone = "";
  }
  function apply(root) {
    if (!zone) return;
    root.querySelectorAll("input[data-browser-time-zone]").forEach(function (input) {
      if (!input.value) input.value = zone;
    });
    root.querySelectorAll("select[data-time-zone-select]").forEach(function (select) {
      var form = select.form;
      var hint = form && form.querySelector("[data-time-zone-suggestion]");
      var known = Array.prototype.some.call(select.options, function (o) { return o.value === zone; });
      if (!hint || !known || select.value === zone) return;
      hint.querySelector("[data-time-zone-name]").textContent = zone.replace(/_/g, " ");
      hint.hidden = false;
      hint.querySelector("[data-time-zone-use]").addEventListener("click", function () {
        select.value = zone;
        hint.hidden = true;
        select.focus();
      });
    });
  }
  document.addEventListener("DOMContentLoaded", function () { apply(document); });
  document.addEventListener("htmx:afterSwap", function (event) { apply(event.target); });
})();
