"""The page's own CSS and script (plain strings: `launch` passes the CSS, `layout` loads the script).

The script, run once per page:
- draws the player's position on the ingestion bar (the bar is re-rendered every second, so it keeps at it);
- while a file is ingested at real-time pace, keeps the player playing in step with ingestion (within
  2 s), until the user seeks elsewhere;
- seeks the player to a block when its thumbnail or a heatmap cell is clicked, and shows a clicked
  thumbnail's frames enlarged (a click or Escape closes them).
"""

PAGE_JS = """() => {
  if (window.__memstream) return;
  window.__memstream = true;
  let free = false;  // the user sought: stop following ingestion until the next one
  const video = () => document.querySelector('#player video');
  const seek = (t) => {
    const v = video();
    if (!v || !isFinite(t)) return;
    free = true;
    v.currentTime = Math.max(0, t);
    v.muted = true;
    v.play().catch(() => {});
    window.__memstreamSeek = t;  // for tests
  };
  setInterval(() => {
    const box = document.querySelector('#status-box');
    const v = video();
    const mark = document.querySelector('#player-mark');
    const pos = document.querySelector('#player-pos');
    const d = box ? +box.dataset.duration : 0;
    if (!box || !v || !mark || !pos || !d) { if (pos) pos.textContent = ''; return; }
    mark.style.display = 'block';
    mark.style.left = `calc(${Math.min(100, 100 * v.currentTime / d)}% - 1px)`;
    pos.textContent = ` · player at ${v.currentTime.toFixed(1)} s`;
    if (box.dataset.state !== 'ingesting') { free = false; return; }
    if (box.dataset.pace !== 'real time' || free) return;
    const at = +box.dataset.position;
    if (Math.abs(v.currentTime - at) > 2) v.currentTime = at;
    if (v.paused) { v.muted = true; v.play().catch(() => {}); }
  }, 250);
  const close = () => document.querySelector('#enlarged')?.remove();
  document.addEventListener('keydown', (e) => { if (e.key === 'Escape') close(); });
  document.addEventListener('click', (e) => {
    if (e.target.closest('#enlarged')) { close(); return; }
    const th = e.target.closest('.thumb');
    if (!th) return;
    seek(+th.dataset.t);
    close();
    const big = document.createElement('div');
    big.id = 'enlarged';
    big.innerHTML = '<div class="frames"></div><div class="cap"></div>';
    th.querySelectorAll('img').forEach((img) => {
      const copy = document.createElement('img'); copy.src = img.src; big.firstChild.appendChild(copy);
    });
    big.lastChild.textContent = th.querySelector('figcaption').textContent + ' · click or Esc to close';
    document.body.appendChild(big);
  });
  setInterval(() => {  // heatmap cells: bind each new plot once
    document.querySelectorAll('#heatmap .js-plotly-plot, #heatmap-b .js-plotly-plot').forEach((el) => {
      if (el.__memstreamBound || !el.on) return;
      el.__memstreamBound = true;
      el.on('plotly_click', (ev) => { const p = ev.points && ev.points[0]; if (p) seek(+p.x); });
    });
  }, 500);
}"""

CSS = """
#notice p { margin: 0; }
#intro h2 { margin: 0 0 2px 0; }
#intro p { margin: 0; }
#banner { background: #fff3cd; border: 1px solid #e0b252; border-radius: 6px; padding: 6px 12px; }
#banner p { margin: 0; color: #5c4400; }
#enlarged { position: fixed; inset: 0; background: rgba(0,0,0,0.8); z-index: 1000; display: flex;
  flex-direction: column; align-items: center; justify-content: center; cursor: zoom-out; }
#enlarged .frames { display: flex; gap: 6px; flex-wrap: wrap; justify-content: center; max-width: 96vw; }
#enlarged img { height: min(70vh, 480px); width: auto; max-width: 47vw; object-fit: contain; border-radius: 4px; }
#enlarged .cap { color: #fff; margin-top: 8px; font-size: 0.9em; }
#heatmap .js-plotly-plot, #heatmap-b .js-plotly-plot { cursor: pointer; }
.thumb-strip img { max-width: 45vw; }
.status-grid { display: grid; grid-template-columns: max-content 1fr max-content 1fr; gap: 1px 12px;
  font-size: 0.85em; margin-top: 5px; }
@media (max-width: 600px) {
  .status-grid { grid-template-columns: max-content 1fr; }
  #heatmap, #heatmap-b { overflow-x: auto; }
  .thumb-strip img { height: 56px !important; }
}
"""
