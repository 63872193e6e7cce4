/* Money forms: when the card changes, the amount input's currency sign, the available money
   and the limits follow it (each card option carries them as data attributes, in the user's
   format), and "My card" lists only the other cards in the same currency. Without JavaScript
   the page shows the same for the card chosen when it was drawn, and the server checks again. */
(function () {
  "use strict";
  function sync(form) {
    var select = form.querySelector("select[name=card_id]");
    if (!select) return;
    var option = select.options[select.selectedIndex];
    if (!option || !option.dataset.currency) return;
    var set = function (selector, text) {
      var el = form.querySelector(selector);
      if (el && text !== undefined) el.textContent = text;
    };
    set("[data-amount-sign]", option.dataset.sign);
    set("[data-amount-code]", option.dataset.currency);
    set("[data-amount-available]", option.dataset.available);
    set("[data-amount-limits]", option.dataset.limits);
    var amount = form.querySelector("input[name=amount]");
    if (amount && option.dataset.example !== undefined) amount.placeholder = option.dataset.example;
    var mine = form.querySelector("select[name=to_card_id]");
    if (!mine) return;
    var fitting = [];
    Array.prototype.forEach.call(mine.options, function (o) {
      if (!o.value) return;
      var fits = o.dataset.currency === option.dataset.currency && o.value !== option.value;
      o.hidden = !fits;
      o.disabled = !fits;
      if (!fits && o.selected) mine.value = "";
      if (fits) fitting.push(o);
    });
    if (fitting.length === 1 && !mine.value) mine.value = fitting[0].value;
    // "Send to": with no other card of this currency, someone else's card is the only way;
    // when the sending card changes back, the choice the person made stays.
    var own = form.querySelector("input[name=destination][value=own]");
    var other = form.querySelector("input[name=destination][value=other]");
    if (own && other && !fitting.length && own.checked) other.checked = true;
  }
  function wire(root) {
    root.querySelectorAll("#money-flow form").forEach(function (form) {
      var select = form.querySelector("select[name=card_id]");
      if (!select || select.dataset.moneyWired) return;
      select.dataset.moneyWired = "1";
      select.addEventListener("change", function () { sync(form); });
      sync(form);
    });
  }
  document.addEventListener("DOMContentLoaded", function () { wire(document); });
  document.addEventListener("htmx:afterSwap", function () { wire(document); });
})();
