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

  document.addEventListener("htmx:afterSwap", function (event) {
    var detail = event.detail || {};
    var target = detail.target;
    /* An outerHTML swap replaces the target: find its successor by id. */
    var current = target && (target.isConnected ? target : document.getElementById(target.id));
    setUpCopyButtons(current || document);
    if (current && detail.xhr && detail.xhr.status === 422) {
      focusFirstInvalid(current);
    }
  });
})();
