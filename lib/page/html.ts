/**
 * The page `registry serve` answers at `/`: a shell with no inline script or
 * style (the Content-Security-Policy allows neither); lib/page/app.ts fills
 * it from `/v1/events`, lib/page/css.ts styles it. Kept as a string so the
 * bundle carries it and deno loads it from source alike.
 *
 * @module
 */

/** The page's HTML. */
export const INDEX_HTML = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>registry</title>
<link rel="stylesheet" href="/app.css">
<script src="/app.js" defer></script>
</head>
<body>
<header>
<h1>registry</h1>
<span id="state" class="state connecting">connecting</span>
<span id="summary"></span>
<label>service <select id="service"><option value="">all</option></select></label>
<label>filter <input id="filter" type="search" placeholder="address, host, status, meta" autocomplete="off"></label>
</header>
<main id="services"><p id="empty">No instances yet.</p></main>
<aside id="detail" hidden>
<button id="close" type="button">close</button>
<h2 id="detail-title"></h2>
<p id="detail-note"></p>
<h3>Timeline</h3>
<ol id="detail-timeline" class="timeline"></ol>
<h3>Record</h3>
<pre id="detail-record"></pre>
</aside>
</body>
</html>
`;
