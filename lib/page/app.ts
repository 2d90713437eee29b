/**
 * The page's script, served at `/app.js`: one EventSource on `/v1/events`;
 * it applies each change to the DOM (no re-listing), keeps the timeline and
 * draws each service's instance count as an SVG made with DOM calls. Every
 * field of a record is hostile: it reaches the page only through
 * `textContent` and attribute setters, never as markup, and control and
 * format characters (bidi overrides) are shown as `\uXXXX`. Plain ES2017 in
 * a string (no backtick, no `${` inside), so the bundle carries it as is.
 *
 * @module
 */

/** The page's JavaScript. */
export const APP_JS = String.raw`"use strict";
(function () {
  var UNPRINTABLE = /[\p{Cc}\p{Cf}\u2028\u2029]/gu;
  var UNPRINTABLE_BUT_NEWLINE = /[\u0000-\u0009\u000b-\u001f\u007f-\u009f\p{Cf}\u2028\u2029]/gu;
  var SVG = "http://www.w3.org/2000/svg";
  var TIMELINE_SHOWN = 50;

  function escapeUnit(c) {
    var out = "";
    for (var i = 0; i < c.length; i++) out += "\\u" + ("0000" + c.charCodeAt(i).toString(16)).slice(-4);
    return out;
  }
  /** Any value as one line of text a person can read: controls escaped, cut to max characters. */
  function shown(value, max) {
    var text = typeof value === "string" ? value : value === undefined ? "-" : JSON.stringify(value);
    text = String(text).replace(UNPRINTABLE, escapeUnit);
    if (max && text.length > max) text = text.slice(0, max - 1) + "\u2026";
    return text;
  }
  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }
  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
  }
  function pad(n) {
    return (n < 10 ? "0" : "") + n;
  }
  function clock(ms) {
    var d = new Date(ms);
    var today = new Date().toDateString() === d.toDateString();
    var time = pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds());
    return today ? time : d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " + time;
  }
  function age(registeredAt, now) {
    var then = typeof registeredAt === "string" ? Date.parse(registeredAt) : NaN;
    if (isNaN(then)) return "-";
    var s = Math.max(0, Math.floor((now - then) / 1000));
    if (s < 120) return s + "s";
    if (s < 7200) return Math.floor(s / 60) + "m";
    if (s < 172800) return Math.floor(s / 3600) + "h";
    return Math.floor(s / 86400) + "d";
  }
  /** An exec check's status as k=v, k=v (as registry ls shows it): plain words plain, the rest as JSON. */
  function statusText(status) {
    if (status === undefined) return "-";
    if (!status || typeof status !== "object" || Array.isArray(status)) return shown(status, 120);
    var plain = function (v) { return /^[\w.:\/@+-]+$/.test(v) ? v : JSON.stringify(v); };
    var pairs = Object.keys(status).map(function (k) {
      var v = status[k];
      return plain(k) + "=" + (typeof v === "string" ? plain(v) : JSON.stringify(v));
    });
    return pairs.length ? shown(pairs.join(", "), 120) : "{}";
  }
  function rank(address) {
    var colon = address.lastIndexOf(":");
    var ip = address.slice(0, colon).split(".").map(function (o) { return ("00" + o).slice(-3); }).join(".");
    return ip + ":" + ("0000" + address.slice(colon + 1)).slice(-5);
  }

  var prefix = "";
  var serverState = { state: "connecting" };
  var instances = new Map(); // key -> { key, service, address, json, row, search }
  var services = new Map(); // name -> { section, tbody, count, plot, list, details }
  var timeline = []; // oldest first: { revision, at, approx, kind, service, address }
  var dirty = new Set(); // services whose timeline or plot to redraw
  var detailKey = null;
  var frame = 0;

  var $ = function (id) { return document.getElementById(id); };
  var main = $("services");
  var serviceSelect = $("service");
  var filterInput = $("filter");

  function place(key) {
    if (key.indexOf(prefix + "/") !== 0) return null;
    var parts = key.slice(prefix.length + 1).split("/");
    return parts.length === 2 ? { service: parts[0], address: parts[1] } : null;
  }

  function serviceOf(name) {
    var s = services.get(name);
    if (s) return s;
    var section = el("section");
    var head = el("div", "service-head");
    head.appendChild(el("h2", "", shown(name, 128)));
    var count = el("span", "count", "0 instances");
    head.appendChild(count);
    var plot = document.createElementNS(SVG, "svg");
    plot.setAttribute("class", "plot");
    plot.setAttribute("viewBox", "0 0 240 28");
    plot.setAttribute("preserveAspectRatio", "none");
    plot.setAttribute("role", "img");
    head.appendChild(plot);
    section.appendChild(head);
    var table = el("table");
    var thead = el("thead");
    var hr = el("tr");
    ["address", "host", "age", "status", "meta", "Addr"].forEach(function (h) { hr.appendChild(el("th", "", h)); });
    thead.appendChild(hr);
    table.appendChild(thead);
    var tbody = el("tbody");
    table.appendChild(tbody);
    section.appendChild(table);
    var details = el("details", "service-timeline");
    details.appendChild(el("summary", "", "timeline"));
    var list = el("ol", "timeline");
    details.appendChild(list);
    section.appendChild(details);
    s = { name: name, section: section, tbody: tbody, count: count, plot: plot, list: list, size: 0 };
    services.set(name, s);
    // sections in name order
    var after = null;
    services.forEach(function (other) {
      if (other !== s && other.name > name && (!after || other.name < after.name)) after = other;
    });
    main.insertBefore(section, after ? after.section : null);
    var option = el("option", "", shown(name, 128));
    option.value = name;
    var next = null;
    for (var i = 1; i < serviceSelect.options.length; i++) {
      if (serviceSelect.options[i].value > name) { next = serviceSelect.options[i]; break; }
    }
    serviceSelect.insertBefore(option, next);
    $("empty").hidden = true;
    section.hidden = Boolean(serviceSelect.value) && serviceSelect.value !== name;
    return s;
  }

  function fillRow(item, now) {
    var j = item.json;
    var row = item.row;
    clear(row);
    row.appendChild(el("td", "address", shown(item.address, 64)));
    if (j.invalid !== undefined) {
      row.className = "instance invalid";
      row.appendChild(el("td", "", "-"));
      row.appendChild(el("td", "", "-"));
      row.appendChild(el("td", "", "(not a record)"));
      row.appendChild(el("td", "", shown(j.invalid, 120)));
      row.appendChild(el("td", "addr", "-"));
    } else {
      row.className = "instance";
      row.appendChild(el("td", "host", shown(j.host, 80)));
      row.appendChild(el("td", "age", age(j.registered_at, now)));
      row.appendChild(el("td", "status", statusText(j.status)));
      var meta = el("td", "meta");
      if (Array.isArray(j.mismatch) && j.mismatch.length) {
        meta.appendChild(el("span", "mismatch", "(mismatch: " + shown(j.mismatch.join(","), 80) + ") "));
      }
      var pairs = [];
      if (j.meta && typeof j.meta === "object" && !Array.isArray(j.meta)) {
        Object.keys(j.meta).forEach(function (k) { pairs.push(k + "=" + (typeof j.meta[k] === "string" ? j.meta[k] : JSON.stringify(j.meta[k]))); });
      }
      meta.appendChild(document.createTextNode(pairs.length ? shown(pairs.join(", "), 200) : "-"));
      row.appendChild(meta);
      row.appendChild(el("td", "addr", shown(j.Addr, 64)));
    }
    item.search = (row.textContent || "").toLowerCase();
  }

  function upsert(json) {
    var key = typeof json.key === "string" ? json.key : "";
    var at = place(key);
    var item = instances.get(key);
    if (!item) {
      var service = at ? at.service : "(not instance keys)";
      item = { key: key, service: service, address: at ? at.address : key, json: json, row: el("tr") };
      item.row.dataset.key = key;
      item.rank = at ? rank(at.address) : key;
      instances.set(key, item);
      var s = serviceOf(service);
      var rows = s.tbody.rows;
      var before = null;
      for (var i = 0; i < rows.length; i++) {
        if (instances.get(rows[i].dataset.key).rank > item.rank) { before = rows[i]; break; }
      }
      s.tbody.insertBefore(item.row, before);
      s.size++;
      countChanged(s);
    }
    item.json = json;
    fillRow(item, Date.now());
    applyFilter(item);
    if (detailKey === key) showDetail(key);
  }

  function remove(key) {
    var item = instances.get(key);
    if (!item) return;
    instances.delete(key);
    item.row.remove();
    var s = services.get(item.service);
    s.size--;
    countChanged(s);
    if (detailKey === key) showDetail(key);
  }

  function countChanged(s) {
    s.count.textContent = s.size + (s.size === 1 ? " instance" : " instances");
    dirty.add(s.name);
    schedule();
    summary();
  }

  function summary() {
    $("summary").textContent = instances.size + " entries in " + services.size + " services";
  }

  function matches(item) {
    var wanted = serviceSelect.value;
    if (wanted && item.service !== wanted) return false;
    var text = filterInput.value.trim().toLowerCase();
    return !text || item.search.indexOf(text) >= 0 || item.key.toLowerCase().indexOf(text) >= 0;
  }
  function applyFilter(item) {
    item.row.hidden = !matches(item);
  }
  function applyFilters() {
    instances.forEach(applyFilter);
    var wanted = serviceSelect.value;
    var text = filterInput.value.trim();
    services.forEach(function (s) {
      var visible = (!wanted || s.name === wanted) &&
        (!text || Array.prototype.some.call(s.tbody.rows, function (r) { return !r.hidden; }));
      s.section.hidden = !visible;
    });
  }

  function timelineItem(e) {
    var li = el("li", e.kind);
    var words = [(e.approx ? "\u2248" : "") + clock(e.at), e.kind === "status" ? "status changed" : e.kind];
    li.textContent = words.concat([shown(e.service, 128), shown(e.address, 64)]).join("  ");
    li.title = "revision " + shown(e.revision, 24);
    return li;
  }

  function drawPlot(s, entries) {
    clear(s.plot);
    var now = Date.now();
    // the window: from the oldest change known (history's times need not follow revisions), a minute at least
    var start = now - 60000;
    for (var t = 0; t < timeline.length; t++) if (timeline[t].at < start) start = timeline[t].at;
    // counts walking back from now: a registration added one, a departure took one
    var points = [[now, s.size]];
    var count = s.size;
    for (var i = entries.length - 1; i >= 0; i--) {
      var e = entries[i];
      points.push([e.at, count]);
      if (e.kind === "registered") count--;
      else if (e.kind === "gone") count++;
      count = Math.max(0, count);
      points.push([e.at, count]);
    }
    points.push([start, count]);
    points.reverse();
    var max = 1;
    points.forEach(function (p) { max = Math.max(max, p[1]); });
    var span = Math.max(1, now - start);
    var line = document.createElementNS(SVG, "polyline");
    line.setAttribute("points", points.map(function (p) {
      var x = ((p[0] - start) / span) * 238 + 1;
      var y = 27 - (p[1] / max) * 25;
      return x.toFixed(1) + "," + y.toFixed(1);
    }).join(" "));
    s.plot.appendChild(line);
    var title = document.createElementNS(SVG, "title");
    title.textContent = "instances since " + clock(start) + ": now " + s.size + ", at most " + max;
    s.plot.appendChild(title);
  }

  function drawService(name) {
    var s = services.get(name);
    if (!s) return;
    var entries = timeline.filter(function (e) { return e.service === name; });
    drawPlot(s, entries);
    clear(s.list);
    for (var i = entries.length - 1; i >= 0 && entries.length - i <= TIMELINE_SHOWN; i--) {
      s.list.appendChild(timelineItem(entries[i]));
    }
  }

  function schedule() {
    if (frame) return;
    frame = requestAnimationFrame(function () {
      frame = 0;
      dirty.forEach(drawService);
      dirty.clear();
    });
  }

  function showDetail(key) {
    detailKey = key;
    var item = instances.get(key);
    var at = place(key);
    $("detail").hidden = false;
    $("detail-title").textContent = shown(key, 200);
    $("detail-note").textContent = item ? "" : "gone: no longer in the registry";
    $("detail-record").textContent = item ? JSON.stringify(item.json, null, 2).replace(UNPRINTABLE_BUT_NEWLINE, escapeUnit) : "";
    var list = $("detail-timeline");
    clear(list);
    if (!at) return;
    for (var i = timeline.length - 1; i >= 0; i--) {
      var e = timeline[i];
      if (e.service === at.service && e.address === at.address) list.appendChild(timelineItem(e));
    }
  }

  function showState() {
    var node = $("state");
    var text;
    var cls;
    if (source.readyState !== 1) {
      cls = "reconnecting";
      text = "reconnecting to the server; showing what it sent last";
    } else if (serverState.state === "stale") {
      cls = "stale";
      text = "stale since " + clock(Date.parse(serverState.staleSince)) + ": etcd unreachable, showing the last listing";
    } else if (serverState.state === "live") {
      cls = "live";
      text = "live";
    } else {
      cls = "connecting";
      text = "waiting for etcd";
    }
    node.className = "state " + cls;
    node.textContent = text;
  }

  function parse(event) {
    try {
      return JSON.parse(event.data);
    } catch (err) {
      return null;
    }
  }

  var source = new EventSource("/v1/events");
  source.onopen = showState;
  source.onerror = showState;
  source.addEventListener("resync", function (event) {
    var data = parse(event);
    if (!data) return;
    prefix = typeof data.prefix === "string" ? data.prefix : "";
    instances.forEach(function (item) { item.row.remove(); });
    instances.clear();
    services.forEach(function (s) { s.section.remove(); });
    services.clear();
    while (serviceSelect.options.length > 1) serviceSelect.remove(1);
    $("empty").hidden = false;
    serverState = data;
    showState();
    summary();
  });
  source.addEventListener("message", function (event) {
    var data = parse(event);
    if (!data || typeof data.key !== "string") return;
    if (data.change === "gone") remove(data.key);
    else if (data.change === "registered") upsert(data);
  });
  source.addEventListener("timeline", function (event) {
    var data = parse(event);
    if (!data || !Array.isArray(data.entries)) return;
    var entries = data.entries.map(function (e) {
      return { revision: String(e.revision), at: Date.parse(e.at), approx: e.approx === true, kind: String(e.kind),
        service: String(e.service), address: String(e.address) };
    });
    timeline = data.replace ? entries : timeline.concat(entries);
    if (timeline.length > 6000) timeline = timeline.slice(-5000);
    if (data.replace) services.forEach(function (s) { dirty.add(s.name); });
    else entries.forEach(function (e) { dirty.add(e.service); });
    schedule();
    if (detailKey) showDetail(detailKey);
  });
  source.addEventListener("state", function (event) {
    var data = parse(event);
    if (data) serverState = data;
    showState();
  });

  main.addEventListener("click", function (event) {
    var row = event.target.closest ? event.target.closest("tr.instance") : null;
    if (row) showDetail(row.dataset.key);
  });
  $("close").addEventListener("click", function () {
    detailKey = null;
    $("detail").hidden = true;
  });
  serviceSelect.addEventListener("change", applyFilters);
  filterInput.addEventListener("input", applyFilters);
  setInterval(function () {
    var now = Date.now();
    instances.forEach(function (item) {
      var cell = item.row.querySelector("td.age");
      if (cell) cell.textContent = age(item.json.registered_at, now);
    });
    services.forEach(function (s) { dirty.add(s.name); });
    schedule();
    showState();
  }, 5000);
})();
`;
