/* memtest report: sortable, filterable case table. Vanilla JS, no dependencies.
   The first rows are in the table; the rest wait, unstyled and unlaid-out, in
   <template id="more-rows"> so that large reports open fast. Sorting and filtering work on
   all rows; at most `limit` matching rows are in the DOM until "Show all" is clicked. */
(function () {
  "use strict";
  var table = document.getElementById("cases-table");
  if (!table) {
    return;
  }
  var tbody = table.tBodies[0];
  var headers = table.tHead.rows[0].cells;
  var more = document.getElementById("more-rows");
  var rows = Array.prototype.slice.call(tbody.rows);
  if (more) {
    rows = rows.concat(Array.prototype.slice.call(more.content.querySelectorAll("tr")));
  }
  var texts = rows.map(function (row) {
    return row.textContent.toLowerCase();
  });
  var matches = rows.map(function () {
    return true;
  });
  var ordered = rows.map(function (_, i) {
    return i;
  });
  var limit = parseInt(table.getAttribute("data-page"), 10) || Infinity;
  var state = {col: -1, dir: 1};
  var query = document.getElementById("case-filter");
  var outcomeSelect = document.getElementById("outcome-filter");
  var expectationSelect = document.getElementById("expectation-filter");
  var counter = document.getElementById("case-count");
  var empty = document.getElementById("no-match");
  var showAll = document.getElementById("show-all");

  function key(row, col, numeric) {
    var cell = row.cells[col];
    if (numeric) {
      var raw = cell.getAttribute("data-v");
      return raw === null || raw === "" ? null : parseFloat(raw);
    }
    var node = cell.firstElementChild || cell;
    return node.textContent.trim().toLowerCase();
  }

  function render() {
    var total = 0;
    var fragment = document.createDocumentFragment();
    var shown = 0;
    ordered.forEach(function (i) {
      if (matches[i]) {
        total += 1;
        if (shown < limit) {
          fragment.appendChild(rows[i]);
          shown += 1;
        }
      }
    });
    tbody.textContent = "";
    tbody.appendChild(fragment);
    var text = total === rows.length ? rows.length + " cases" : total + " of " + rows.length + " cases match";
    counter.textContent = shown < total ? "showing " + shown + " of " + text : text;
    empty.hidden = total !== 0;
    showAll.hidden = shown >= total;
    showAll.textContent = "Show all " + total + (total === rows.length ? " cases" : " matching cases");
  }

  function sortBy(col, dir) {
    var numeric = headers[col].getAttribute("data-type") === "num";
    if (dir !== 1 && dir !== -1) {
      dir = state.col === col ? -state.dir : 1;
    }
    state.col = col;
    state.dir = dir;
    var keys = rows.map(function (row) {
      return key(row, col, numeric);
    });
    ordered = rows.map(function (_, i) {
      return i;
    });
    ordered.sort(function (a, b) {
      var ka = keys[a];
      var kb = keys[b];
      if (ka === null || kb === null) {
        if (ka === kb) {
          return a - b;
        }
        return ka === null ? 1 : -1; /* missing values last in both directions */
      }
      if (ka < kb) {
        return -dir;
      }
      if (ka > kb) {
        return dir;
      }
      return a - b;
    });
    for (var i = 0; i < headers.length; i++) {
      if (headers[i].hasAttribute("data-type")) {
        headers[i].setAttribute("aria-sort", i === col ? (dir > 0 ? "ascending" : "descending") : "none");
      }
    }
    render();
  }

  function applyFilter() {
    var terms = query.value.toLowerCase().split(/\s+/).filter(Boolean);
    var outcome = outcomeSelect.value;
    var expectation = expectationSelect.value;
    rows.forEach(function (row, i) {
      var ok = terms.every(function (term) {
        return texts[i].indexOf(term) !== -1;
      });
      if (ok && outcome) {
        ok = outcome === "flagged" ? row.getAttribute("data-flagged") === "1"
          : row.getAttribute("data-outcome") === outcome;
      }
      if (ok && expectation) {
        ok = row.getAttribute("data-expectation") === expectation;
      }
      matches[i] = ok;
    });
    render();
  }

  Array.prototype.forEach.call(headers, function (th, col) {
    if (th.hasAttribute("data-type")) {
      th.addEventListener("click", function () {
        sortBy(col);
      });
    }
  });
  query.addEventListener("input", applyFilter);
  outcomeSelect.addEventListener("change", applyFilter);
  expectationSelect.addEventListener("change", applyFilter);
  document.getElementById("filter-reset").addEventListener("click", function () {
    query.value = "";
    outcomeSelect.value = "";
    expectationSelect.value = "";
    applyFilter();
  });
  showAll.addEventListener("click", function () {
    limit = Infinity;
    render();
  });
  if (query.value || outcomeSelect.value || expectationSelect.value) {
    applyFilter(); /* the browser restored form values (back navigation) */
  }
  window.memtestReport = {
    sortBy: sortBy,
    applyFilter: applyFilter,
    total: function () {
      return rows.length;
    },
    matching: function () {
      return matches.filter(Boolean).length;
    },
    count: function (attribute, value) {
      return rows.filter(function (row, i) {
        return matches[i] && row.getAttribute(attribute) === value;
      }).length;
    }
  };
})();
