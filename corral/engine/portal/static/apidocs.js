// Swagger UI on the API's document (/portal/api-docs): the document and the calls of "Try it out" go through
// the portal's pass-through to the API (/portal/api/...), which adds the session's token; a write carries the
// page's CSRF token, as every script of the portal sends it.
"use strict";
window.addEventListener("DOMContentLoaded", () => {
  const node = document.getElementById("swagger-ui");
  if (!node || !window.SwaggerUIBundle) return;
  const prefix = node.dataset.prefix;
  const csrf = document.querySelector('meta[name="csrf-token"]');
  window.SwaggerUIBundle({
    url: node.dataset.url,
    domNode: node,
    deepLinking: true,
    requestInterceptor: (req) => {
      const url = new URL(req.url, window.location.href);
      if (url.origin === window.location.origin && url.pathname.startsWith("/api/v1/")) {
        url.pathname = prefix + "/api/" + url.pathname.slice("/api/v1/".length);
        req.url = url.toString();
        if (csrf) req.headers["X-CSRF-Token"] = csrf.content;
      }
      return req;
    },
  });
});
