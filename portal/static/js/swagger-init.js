// Starts Swagger UI on /api/docs. It lives in a file, not in the page, so the
// Content-Security-Policy needs no inline script. The spec's URL comes from the page.
(function () {
  "use strict";

  function start() {
    var root = document.getElementById("swagger-ui");
    if (!root || typeof window.SwaggerUIBundle !== "function") {
      return;
    }
    window.ui = window.SwaggerUIBundle({
      url: root.dataset.specUrl,
      domNode: root,
      presets: [window.SwaggerUIBundle.presets.apis],
      layout: "BaseLayout",
      deepLinking: true,
      // Never ask a public validator about our spec (no network beyond this origin).
      validatorUrl: null,
      // The token stays in this tab only, never in localStorage.
      persistAuthorization: false,
      displayRequestDuration: true,
      defaultModelsExpandDepth: 0,
      tryItOutEnabled: false
    });
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
