/**
 * The page's style sheet, served at `/app.css` (no inline style: the
 * Content-Security-Policy allows none).
 *
 * @module
 */

/** The page's CSS. */
export const APP_CSS =
  `:root { color-scheme: light dark; --muted: #777; --ok: #1a7f37; --bad: #c0392b; --warn: #b7791f; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.4 system-ui, sans-serif; }
header { position: sticky; top: 0; z-index: 2; display: flex; flex-wrap: wrap; gap: 0.5rem 1rem; align-items: center;
  padding: 0.5rem 1rem; background: Canvas; border-bottom: 1px solid #8884; }
h1 { font-size: 1.1rem; margin: 0; }
h2 { font-size: 1rem; margin: 0; }
h3 { font-size: 0.9rem; margin: 1rem 0 0.25rem; }
.state { padding: 0.1rem 0.5rem; border-radius: 1rem; color: #fff; background: var(--muted); }
.state.live { background: var(--ok); }
.state.stale, .state.reconnecting { background: var(--bad); }
.state.connecting { background: var(--warn); }
#summary { color: var(--muted); }
main { padding: 0.5rem 1rem 2rem; }
section { margin: 1rem 0; }
.service-head { display: flex; gap: 1rem; align-items: center; }
.count { color: var(--muted); }
svg.plot { width: 240px; height: 28px; border: 1px solid #8884; }
svg.plot polyline { fill: none; stroke: currentColor; stroke-width: 1.5; }
table { border-collapse: collapse; width: 100%; margin-top: 0.25rem; }
th, td { text-align: left; padding: 0.15rem 0.5rem; border-bottom: 1px solid #8882; vertical-align: top;
  unicode-bidi: isolate; overflow-wrap: anywhere; }
th { font-weight: 600; color: var(--muted); }
td.address, td.addr { font-family: ui-monospace, monospace; white-space: nowrap; }
tr.instance { cursor: pointer; }
tr.instance:hover { background: #8881; }
tr.invalid td { color: var(--bad); }
.mismatch { color: var(--bad); }
details { margin-top: 0.25rem; }
ol.timeline { list-style: none; padding: 0; margin: 0.25rem 0; max-height: 16rem; overflow: auto;
  font-family: ui-monospace, monospace; font-size: 12px; }
ol.timeline li.gone { color: var(--bad); }
ol.timeline li.registered { color: var(--ok); }
ol.timeline li.status { color: var(--warn); }
aside { position: fixed; top: 3rem; right: 0; bottom: 0; width: min(36rem, 100%); overflow: auto; z-index: 3;
  padding: 1rem; background: Canvas; border-left: 1px solid #8884; }
pre { white-space: pre-wrap; overflow-wrap: anywhere; font-size: 12px; unicode-bidi: isolate; }
[hidden] { display: none !important; }
`;
