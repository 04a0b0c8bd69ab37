// scstn-vcn evaluation report: the query browser. Reads window.SCSTN_REPORT (data.js, written by
// scstn_vcn/report/writer.py); every number it shows is in that data as the evaluation computed it
// (percentages rounded to 2 decimals as results.json rounds them); nothing is fetched, nothing leaves
// the folder.
(function () {
  "use strict";

  var D = window.SCSTN_REPORT;
  var RUNS = D.runs;
  var COMPARE = RUNS.length > 1;
  var CODE_TEXT = ["junk or same camera (not ranked)", "non-match", "match"];
  var CODE_CLASS = ["discarded", "nonmatch", "match"];

  // rows[i]: the evaluation row (global, spatial, fusion, +rk ...) shown for run i
  var state = { rows: [], sort: null, cam: "all", pids: null, show: "all", page: 0, pageSize: 25, open: {} };

  function $(id) {
    return document.getElementById(id);
  }

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    if (attrs) {
      Object.keys(attrs).forEach(function (key) {
        if (key === "text") node.textContent = attrs[key];
        else if (key === "cls") node.className = attrs[key];
        else node.setAttribute(key, attrs[key]);
      });
    }
    (children || []).forEach(function (child) {
      if (child !== null && child !== undefined) node.appendChild(child);
    });
    return node;
  }

  function fmt(value) {
    return value === null || value === undefined ? "–" : value.toFixed(2);
  }

  // ------------------------------------------------------------------------------------------- ordering

  function defaultRow(run) {
    return run.rows.indexOf("fusion") >= 0 ? "fusion" : run.rows[0];
  }

  function records(run) {
    return RUNS[run].per_query[state.rows[run]];
  }

  function ap(run, q) {
    return records(run).ap[q];
  }

  function rank(run, q) {
    return records(run).rank[q];
  }

  function delta(q) {
    var a = ap(0, q);
    var b = ap(1, q);
    return a === null || b === null ? null : b - a;
  }

  // Each key: [label, value of a query (null = no valid match: always last), descending?]
  function sortKeys() {
    var keys = {
      "ap-asc": ["AP, worst first", function (q) { return ap(0, q); }, false],
      "ap-desc": ["AP, best first", function (q) { return ap(0, q); }, true],
      "rank-desc": ["first-match rank, worst first", function (q) { return rank(0, q) || null; }, true],
      "rank-asc": ["first-match rank, best first", function (q) { return rank(0, q) || null; }, false],
      "index": ["query order", function (q) { return q; }, false],
    };
    if (COMPARE) {
      var a = RUNS[0].short;
      var b = RUNS[1].short;
      keys = Object.assign(
        {
          "delta-abs": ["|AP " + b + " − AP " + a + "|, largest first", function (q) {
            var d = delta(q);
            return d === null ? null : Math.abs(d);
          }, true],
          "delta-b": [b + " better first (AP " + b + " − AP " + a + ")", delta, true],
          "delta-a": [a + " better first (AP " + a + " − AP " + b + ")", delta, false],
        },
        keys
      );
      keys["ap-asc"][0] = "AP of " + a + ", worst first";
      keys["ap-desc"][0] = "AP of " + a + ", best first";
      keys["rank-desc"][0] = "first-match rank of " + a + ", worst first";
      keys["rank-asc"][0] = "first-match rank of " + a + ", best first";
      keys["b-ap-asc"] = ["AP of " + b + ", worst first", function (q) { return ap(1, q); }, false];
    }
    return keys;
  }

  function passes(q) {
    if (state.cam !== "all" && D.query.cam[q] !== Number(state.cam)) return false;
    if (state.pids && state.pids.indexOf(D.query.pid[q]) < 0) return false;
    if (state.show === "miss") {
      return RUNS.some(function (run, i) { return rank(i, q) !== 1 && rank(i, q) !== 0; });
    }
    if (state.show === "hit") return RUNS.every(function (run, i) { return rank(i, q) === 1; });
    if (state.show === "invalid") return rank(0, q) === 0;
    if (state.show === "differ") return RUNS.length > 1 && (rank(0, q) === 1) !== (rank(1, q) === 1);
    return true;
  }

  function orderedQueries() {
    var key = sortKeys()[state.sort];
    var value = key[1];
    var sign = key[2] ? -1 : 1;
    var shown = [];
    for (var q = 0; q < D.query.pid.length; q++) if (passes(q)) shown.push(q);
    var values = {};
    shown.forEach(function (q) { values[q] = value(q); });
    shown.sort(function (x, y) {
      var vx = values[x];
      var vy = values[y];
      if (vx === null && vy !== null) return 1;  // queries without a valid match go last
      if (vy === null && vx !== null) return -1;
      if (vx !== vy) return sign * (vx - vy);
      if (state.sort !== "index") {
        var rx = rank(0, x) || Infinity;  // ties: the later first match first, then query order
        var ry = rank(0, y) || Infinity;
        if (rx !== ry) return rx > ry ? -1 : 1;
      }
      return x - y;
    });
    return shown;
  }

  // ------------------------------------------------------------------------------------------- drawing

  function thumbSrc(name) {
    return "thumbs/" + name;
  }

  function galleryThumb(g, code, rankText, dist) {
    var pid = D.gallery.pid[g];
    var title =
      D.gallery.name[g] + "\nidentity " + pid + ", camera " + D.gallery.cam[g] + "\n" + CODE_TEXT[code] +
      (dist === null ? "" : "\ndistance " + dist.toFixed(4));
    return el("figure", { cls: "thumb " + CODE_CLASS[code], "data-g": g, "data-code": code, title: title }, [
      el("img", { src: thumbSrc(D.gallery.thumb[g]), alt: D.gallery.name[g], loading: "lazy" }),
      el("figcaption", { text: rankText + " · " + pid }),
    ]);
  }

  function queryThumb(q) {
    return el("figure", { cls: "thumb query", title: D.query.name[q] + "\nidentity " + D.query.pid[q] +
        ", camera " + D.query.cam[q] }, [
      el("img", { src: thumbSrc(D.query.thumb[q]), alt: D.query.name[q] }),
      el("figcaption", { text: "id " + D.query.pid[q] }),
    ]);
  }

  function rankedList(run, q) {
    var rec = records(run);
    var top = rec.top[q];
    var codes = rec.code[q];
    var strip = el("div", { cls: "strip" }, [queryThumb(q)]);
    var kept = 0;
    for (var i = 0; i < top.length; i++) {
      var code = Number(codes[i]);
      if (code !== 0) kept += 1;
      strip.appendChild(galleryThumb(top[i], code, code === 0 ? "–" : String(kept), rec.dist[q][i]));
    }
    if (rec.rank[q] > kept) {
      strip.appendChild(el("span", { cls: "gap", text: "…" }));
      strip.appendChild(galleryThumb(rec.first[q], 2, String(rec.rank[q]), null));
    }
    return strip;
  }

  function scoreText(run, q) {
    var a = ap(run, q);
    if (rank(run, q) === 0) return "no valid match in the gallery";
    return "AP " + fmt(a) + " · first match at rank " + rank(run, q) +
      " · INP " + records(run).inp[q].toFixed(2);
  }

  function card(q) {
    var head = el("div", { cls: "head" }, [
      el("span", { cls: "qid", text: "query " + q }),
      el("span", { text: "identity " + D.query.pid[q] + " · camera " + D.query.cam[q] }),
    ]);
    if (COMPARE) {
      var d = delta(q);
      head.appendChild(el("span", { cls: "delta " + (d > 0 ? "up" : d < 0 ? "down" : ""),
        text: d === null ? "" : "ΔAP " + (d > 0 ? "+" : "") + d.toFixed(2) }));
    } else {
      head.appendChild(el("span", { cls: rank(0, q) === 0 ? "invalid" : "", text: scoreText(0, q) }));
    }
    var button = el("button", { type: "button", cls: "more", text: state.open[q] ? "hide details" : "details" });
    button.addEventListener("click", function () {
      state.open[q] = !state.open[q];
      render();
    });
    head.appendChild(button);
    var node = el("div", { cls: "card", "data-q": q, "data-cam": D.query.cam[q], "data-pid": D.query.pid[q],
      "data-ap": ap(0, q) === null ? "" : ap(0, q) }, [head]);
    RUNS.forEach(function (run, i) {
      var block = el("div", { cls: "run-list" }, []);
      if (COMPARE) block.appendChild(el("div", { cls: "run-label", text: run.short + ": " + scoreText(i, q) }));
      block.appendChild(rankedList(i, q));
      node.appendChild(block);
    });
    if (state.open[q]) node.appendChild(details(q));
    return node;
  }

  function boxed(name, box, caption) {
    var fig = el("figure", { cls: "aligned" }, []);
    var wrap = el("div", { cls: "boxwrap" }, [el("img", { src: thumbSrc(name), alt: caption })]);
    if (box) {
      var svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
      svg.setAttribute("viewBox", "0 0 1 1");
      svg.setAttribute("preserveAspectRatio", "none");
      var poly = document.createElementNS("http://www.w3.org/2000/svg", "polygon");
      poly.setAttribute("points", box.map(function (p) { return p[0] + "," + p[1]; }).join(" "));
      svg.appendChild(poly);
      wrap.appendChild(svg);
    }
    fig.appendChild(wrap);
    fig.appendChild(el("figcaption", { text: caption }));
    return fig;
  }

  function details(q) {
    var box = el("div", { cls: "details" }, []);
    RUNS.forEach(function (run, i) {
      var table = el("table", { cls: "rows" }, [el("tr", {}, ["row", "AP", "INP", "first match", "its image"].map(
        function (h) { return el("th", { text: h }); }))]);
      run.rows.forEach(function (row) {
        var rec = run.per_query[row];
        var first = rec.first[q];
        table.appendChild(el("tr", { cls: row === state.rows[i] ? "current" : "" }, [
          el("td", { text: row }),
          el("td", { text: fmt(rec.ap[q]) }),
          el("td", { text: fmt(rec.inp[q]) }),
          el("td", { text: rec.rank[q] ? "rank " + rec.rank[q] : "none" }),
          el("td", {}, [first >= 0 ? galleryThumb(first, 2, String(rec.rank[q]), null) : null]),
        ]));
      });
      var parts = [el("h4", { text: (COMPARE ? run.short + ": " : "") + "every row for query " + q }), table];
      var al = run.align;
      if (al && al.query[q]) {
        var m = al.match[q];
        var figs = [boxed(D.query.thumb[q], al.qbox[q], "query"), boxed(al.query[q], null, "query, SC-STN")];
        if (m >= 0) {
          figs.push(boxed(D.gallery.thumb[m], al.gbox[q], "top match (" + al.row + ")"));
          figs.push(boxed(al.gallery[q], null, "top match, SC-STN"));
        }
        parts.push(el("h4", { text: "SC-STN alignment: the input with the region the transformer samples, " +
          "and that region resampled (as the demo's alignment figure)" }));
        parts.push(el("div", { cls: "alignment" }, figs));
      }
      box.appendChild(el("div", { cls: "detail-run" }, parts));
    });
    return box;
  }

  function cameraMatrix() {
    var holder = $("cam-matrix");
    holder.textContent = "";
    RUNS.forEach(function (run, r) {
      var row = state.rows[r];
      var m = run.per_query[row].cams;
      var table = el("table", { cls: "cams" }, []);
      var head = el("tr", {}, [el("th", { text: "query cam \\ first-match cam" })]);
      m.gcams.forEach(function (c) { head.appendChild(el("th", { text: String(c) })); });
      head.appendChild(el("th", { text: "all" }));
      table.appendChild(head);
      var colHits = m.gcams.map(function () { return 0; });
      var colCounts = colHits.slice();
      var allHits = 0;
      var allCounts = 0;
      function cell(hits, counts, tag) {
        var value = counts ? (100 * hits) / counts : null;
        var td = el(tag || "td", { title: hits + " of " + counts + " valid queries at rank 1" }, [
          el("span", { text: value === null ? "·" : value.toFixed(1) }),
          el("small", { text: counts ? " n=" + counts : "" }),
        ]);
        if (value !== null) td.style.background = "hsl(" + Math.round(1.2 * value) + ",55%,88%)";
        return td;
      }
      m.qcams.forEach(function (qc, i) {
        var th = el("th", { cls: "pick", text: String(qc), title: "show the queries of camera " + qc });
        th.addEventListener("click", function () {
          state.cam = String(qc);
          $("f-cam").value = state.cam;
          state.page = 0;
          render();
        });
        var tr = el("tr", {}, [th]);
        var rowHits = 0;
        var rowCounts = 0;
        m.gcams.forEach(function (gc, j) {
          tr.appendChild(cell(m.hits[i][j], m.counts[i][j]));
          rowHits += m.hits[i][j];
          rowCounts += m.counts[i][j];
          colHits[j] += m.hits[i][j];
          colCounts[j] += m.counts[i][j];
        });
        tr.appendChild(cell(rowHits, rowCounts, "th"));
        allHits += rowHits;
        allCounts += rowCounts;
        table.appendChild(tr);
      });
      var foot = el("tr", {}, [el("th", { text: "all" })]);
      m.gcams.forEach(function (gc, j) { foot.appendChild(cell(colHits[j], colCounts[j], "th")); });
      var total = el("th", { cls: "total", text: allCounts ? ((100 * allHits) / allCounts).toFixed(2) : "–" });
      total.title = "rank-1 of " + row + ": " + allHits + " of " + allCounts + " valid queries";
      foot.appendChild(total);
      table.appendChild(foot);
      holder.appendChild(el("div", { cls: "cam-run" }, [
        el("h3", { text: (COMPARE ? run.short + " · " : "") + row }), table]));
    });
  }

  function render() {
    var shown = orderedQueries();
    var pages = Math.max(1, Math.ceil(shown.length / state.pageSize));
    state.page = Math.min(state.page, pages - 1);
    var start = state.page * state.pageSize;
    var list = $("list");
    list.textContent = "";
    shown.slice(start, start + state.pageSize).forEach(function (q) { list.appendChild(card(q)); });
    $("status").textContent = shown.length + " of " + D.query.pid.length + " queries" +
      (shown.length ? ", " + (start + 1) + "–" + Math.min(start + state.pageSize, shown.length) + " shown" : "") +
      " · ranked by " + RUNS.map(function (run, i) {
        return (COMPARE ? run.short + " " : "") + state.rows[i];
      }).join(", ") + " · top " + D.topk;
    $("page-text").textContent = "page " + (state.page + 1) + " of " + pages;
    $("prev").disabled = state.page === 0;
    $("next").disabled = state.page >= pages - 1;
    cameraMatrix();
  }

  function option(value, text) {
    return el("option", { value: value, text: text });
  }

  function init() {
    state.rows = RUNS.map(defaultRow);
    ["f-row", "f-row-b"].slice(0, RUNS.length).forEach(function (id, i) {
      RUNS[i].rows.forEach(function (row) { $(id).appendChild(option(row, row)); });
      $(id).value = state.rows[i];
    });
    if (COMPARE) {
      $("l-row").firstChild.textContent = "row of " + RUNS[0].short + " ";
      $("l-row-b").firstChild.textContent = "row of " + RUNS[1].short + " ";
      $("l-row-b").hidden = false;
    }
    var keys = sortKeys();
    state.sort = COMPARE ? "delta-abs" : "ap-asc";
    Object.keys(keys).forEach(function (key) { $("f-sort").appendChild(option(key, keys[key][0])); });
    $("f-sort").value = state.sort;
    var cams = D.query.cam.filter(function (c, i, all) { return all.indexOf(c) === i; }).sort(function (a, b) {
      return a - b;
    });
    $("f-cam").appendChild(option("all", "all cameras"));
    cams.forEach(function (c) { $("f-cam").appendChild(option(String(c), "camera " + c)); });
    var shows = [["all", "all queries"], ["miss", "rank-1 misses"], ["hit", "rank-1 hits"],
      ["invalid", "no valid match"]];
    if (COMPARE) shows.push(["differ", "rank-1 differs between the models"]);
    shows.forEach(function (s) { $("f-show").appendChild(option(s[0], s[1])); });
    [25, 50, 100, 200].forEach(function (n) { $("f-size").appendChild(option(String(n), n + " a page")); });

    function on(id, event, apply) {
      $(id).addEventListener(event, function () {
        apply($(id).value);
        state.page = 0;
        render();
      });
    }
    on("f-row", "change", function (v) { state.rows[0] = v; });
    if (COMPARE) on("f-row-b", "change", function (v) { state.rows[1] = v; });
    on("f-sort", "change", function (v) { state.sort = v; });
    on("f-cam", "change", function (v) { state.cam = v; });
    on("f-show", "change", function (v) { state.show = v; });
    on("f-size", "change", function (v) { state.pageSize = Number(v); });
    on("f-pid", "input", function (v) {
      var ids = v.split(/[\s,]+/).filter(Boolean).map(Number).filter(function (n) { return !isNaN(n); });
      state.pids = ids.length ? ids : null;
    });
    $("prev").addEventListener("click", function () { state.page -= 1; render(); });
    $("next").addEventListener("click", function () { state.page += 1; render(); });
    render();
  }

  init();
})();
