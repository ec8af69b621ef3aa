/* memtest report: self-test guard. Runs first, and only when the page is opened as
   report.html#selftest: records script errors, failed resource loads, CSP violations and dialog
   calls (alert/confirm/prompt) so tests can read them from the DOM. Does nothing otherwise. */
(function () {
  "use strict";
  if (location.hash !== "#selftest") {
    return;
  }
  var st = {errors: [], dialogs: [], cspViolations: [], resourceErrors: []};
  window.__memtestSelftest = st;
  window.onerror = function (message, source, line) {
    st.errors.push(String(message) + " @" + String(source || "") + ":" + String(line || 0));
    return false;
  };
  window.addEventListener("error", function (event) {
    var target = event.target;
    if (target && target !== window && target.tagName) {
      st.resourceErrors.push(target.tagName.toLowerCase() + " failed to load");
    }
  }, true);
  window.addEventListener("unhandledrejection", function (event) {
    st.errors.push("unhandled rejection: " + String(event.reason));
  });
  document.addEventListener("securitypolicyviolation", function (event) {
    st.cspViolations.push(String(event.violatedDirective) + " " + String(event.blockedURI || ""));
  });
  ["alert", "confirm", "prompt"].forEach(function (name) {
    window[name] = function (message) {
      st.dialogs.push(name + ": " + String(message));
      return null;
    };
  });
})();
