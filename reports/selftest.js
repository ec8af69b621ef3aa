/* memtest report: page-side self-test, only when opened as report.html#selftest (used by the
   browser tests). On load it forces a full layout and measures the load time, then sorts and
   filters the case table, looks for injected elements, and writes a JSON verdict into
   <pre id="memtest-selftest-result">. */
(function () {
  "use strict";
  if (location.hash !== "#selftest") {
    return;
  }
  var OUR_SCRIPTS = ["memtest-guard", "memtest-report", "memtest-selftest"];

  function rowsOf(body) {
    return Array.prototype.slice.call(body.rows);
  }

  function numbers(body, col) {
    return rowsOf(body).map(function (row) {
      var raw = row.cells[col].getAttribute("data-v");
      return raw === null || raw === "" ? null : parseFloat(raw);
    }).filter(function (v) {
      return v !== null;
    });
  }

  function texts(body, col) {
    return rowsOf(body).map(function (row) {
      var cell = row.cells[col];
      return (cell.firstElementChild || cell).textContent.trim().toLowerCase();
    });
  }

  function compare(a, b) {
    return a < b ? -1 : a > b ? 1 : 0;
  }

  function isSorted(values, dir) {
    for (var i = 1; i < values.length; i++) {
      if (compare(values[i], values[i - 1]) * dir < 0) {
        return false;
      }
    }
    return true;
  }

  function column(table, name) {
    var cells = table.tHead.rows[0].cells;
    for (var i = 0; i < cells.length; i++) {
      if (cells[i].getAttribute("data-key") === name) {
        return i;
      }
    }
    return -1;
  }

  function setControl(id, value, eventName) {
    var el = document.getElementById(id);
    el.value = value;
    el.dispatchEvent(new Event(eventName));
  }

  function run() {
    /* force style and layout of the whole page, so the time includes laying out what is shown */
    var height = document.documentElement.getBoundingClientRect().height;
    var nav = performance.getEntriesByType("navigation")[0];
    var out = {
      loadMs: performance.now(),
      domContentLoadedMs: nav ? nav.domContentLoadedEventEnd : null,
      pageHeight: height,
      checks: {},
      failures: []
    };
    var st = window.__memtestSelftest || {errors: ["guard script did not run"], dialogs: [],
      cspViolations: [], resourceErrors: []};
    function check(name, ok, detail) {
      out.checks[name] = Boolean(ok);
      if (!ok) {
        out.failures.push(name + (detail ? ": " + detail : ""));
      }
    }
    try {
      var table = document.getElementById("cases-table");
      out.hasTable = Boolean(table);
      if (table) {
        var api = window.memtestReport;
        check("report script ran", Boolean(api));
        var body = table.tBodies[0];
        var n = api.total();
        var page = parseInt(table.getAttribute("data-page"), 10);
        out.rows = n;
        out.initialRows = body.rows.length;
        check("first page shown", body.rows.length === Math.min(n, page));
        var scoreCol = column(table, "score");
        var promptCol = column(table, "prompt");
        var head = table.tHead.rows[0].cells;
        var showAll = document.getElementById("show-all");

        head[scoreCol].click();
        out.scoreAscendingPage = numbers(body, scoreCol);
        check("score header marked ascending", head[scoreCol].getAttribute("aria-sort") === "ascending");
        check("show-all offered when rows wait", showAll.hidden === (n <= page));
        showAll.click();
        check("show all shows every row", body.rows.length === n && showAll.hidden);
        var asc = numbers(body, scoreCol);
        check("score sorts ascending", isSorted(asc, 1), JSON.stringify(asc.slice(0, 5)));
        out.scoreAscending = asc;
        head[scoreCol].click();
        var desc = numbers(body, scoreCol);
        check("score sorts descending", isSorted(desc, -1), JSON.stringify(desc.slice(0, 5)));
        out.scoreDescending = desc;
        head[promptCol].click();
        var prompts = texts(body, promptCol);
        check("prompt sorts alphabetically", isSorted(prompts, 1));
        out.promptsAscending = prompts;

        var probe = n ? body.rows[n - 1].getAttribute("data-id") : "";
        setControl("case-filter", probe, "input");
        var shown = rowsOf(body);
        var wrong = shown.filter(function (row) {
          return row.textContent.toLowerCase().indexOf(probe.toLowerCase()) === -1;
        });
        check("text filter keeps matching rows only", shown.length >= 1 && wrong.length === 0);
        out.filterText = probe;
        out.filterVisible = shown.length;
        out.filterCounter = document.getElementById("case-count").textContent;

        setControl("case-filter", "", "input");
        setControl("outcome-filter", "failed", "change");
        var failed = rowsOf(body);
        check("outcome filter", failed.length === api.count("data-outcome", "failed")
          && failed.every(function (row) {
            return row.getAttribute("data-outcome") === "failed";
          }));
        out.outcomeFailedVisible = failed.length;

        setControl("outcome-filter", "", "change");
        setControl("expectation-filter", "memorized", "change");
        var memorized = rowsOf(body);
        check("expectation filter", memorized.length === api.matching() && memorized.every(function (row) {
          return row.getAttribute("data-expectation") === "memorized";
        }));
        out.expectationMemorizedVisible = memorized.length;

        setControl("case-filter", "\u0000no such case\u0000", "input");
        check("no-match note shown", !document.getElementById("no-match").hidden && body.rows.length === 0);
        document.getElementById("filter-reset").click();
        check("reset shows all rows", body.rows.length === n);
      }

      var scripts = Array.prototype.map.call(document.getElementsByTagName("script"), function (s) {
        return s.id || "(no id)";
      });
      out.scripts = scripts;
      check("only our scripts", scripts.join(",") === OUR_SCRIPTS.join(","), scripts.join(","));
      var handlers = [];
      var all = document.getElementsByTagName("*");
      for (var i = 0; i < all.length; i++) {
        for (var j = 0; j < all[i].attributes.length; j++) {
          var attr = all[i].attributes[j].name.toLowerCase();
          if (attr.indexOf("on") === 0) {
            handlers.push(all[i].tagName.toLowerCase() + "[" + attr + "]");
          }
        }
      }
      out.eventHandlerAttributes = handlers;
      out.foreignElements = document.querySelectorAll(
        "img:not(.mt-img), iframe, object, embed, link, base, form, meta[http-equiv=refresh]").length;
      check("no inline event handlers", handlers.length === 0, handlers.join(","));
      check("no injected elements", out.foreignElements === 0);
    } catch (exc) {
      out.failures.push("selftest exception: " + String(exc && exc.stack || exc));
    }
    out.errors = st.errors;
    out.dialogs = st.dialogs;
    out.cspViolations = st.cspViolations;
    out.resourceErrors = st.resourceErrors;
    var pre = document.createElement("pre");
    pre.id = "memtest-selftest-result";
    pre.hidden = true;
    pre.textContent = JSON.stringify(out);
    document.body.appendChild(pre);
  }

  window.addEventListener("load", run);
})();
