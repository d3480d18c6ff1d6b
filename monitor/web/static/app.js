// Status page: polls /api/status and /api/events, shows the live views, classifies uploads.
// Same-origin fetches carry the browser's cached basic-auth credentials; no secret ever goes into a URL.
'use strict';

const STATUS_EVERY = 1500;       // ms
const EVENTS_EVERY = 5000;       // ms
const SNAPSHOT_EVERY = 2000;     // ms, cameras shown as refreshed snapshots
// Browsers open about 6 connections per host and every MJPEG view holds one for good: past this many
// cameras the rest refresh snapshots instead, so polling and uploads still get a connection.
const MAX_LIVE = 4;

const cards = new Map();

// The page's own words in Chinese; English is the text in index.html and the fallback of t(). The class names
// come from the API (`display`, ?lang=); the language is the switch's choice (kept in localStorage), else the
// daemon's labels.language.
const ZH = {
  connecting: '连接中…', live: '在线', unreachable: '无法连接守护进程：',
  untrained1: '未训练的演示模型 — 这是随机初始化的', untrained2: '产物：它的预测没有意义。请用',
  untrained3: '构建真实权重。',
  classifyTitle: '识别一张图片', drop: '把图片拖到这里，或点击选择', customTitle: '自定义类别',
  eventsTitle: '最近事件', noEvents: '暂无事件', noCameras: '未配置摄像头', classifying: '识别中…',
  notClassified: '未能识别：', event: '事件：', heatmap: ' 热力图：为什么是这个标签', saveFrame: '把这一帧保存为',
  retrain: '重新训练', right: '正确', wrong: '错误', on: '，摄像头', ongoing: '进行中', examples: '样本：',
  noExamples: '暂无样本', up: '运行', down: '断开', connectingState: '连接中', error: '错误',
  'fps in': '输入帧率', 'fps out': '输出帧率', latency: '延迟', size: '尺寸', frames: '帧数',
  reconnects: '重连次数', 'last frame': '最新帧', uptime: '已运行 ', liveOf: '实时画面：',
};
const EN = { unreachable: 'daemon unreachable: ', noCameras: 'no cameras configured', classifying: 'classifying…',
  notClassified: 'Not classified: ', event: 'EVENT: ', heatmap: ' heatmap: why this label', saveFrame: 'save this frame as',
  retrain: 'retrain', right: 'right', wrong: 'wrong', on: ' on ', ongoing: 'ongoing', examples: 'examples: ',
  noExamples: 'no examples yet', connectingState: 'connecting', uptime: 'up ', liveOf: 'live view of ' };
const LANG_KEY = 'monitor.lang';
let lang = null;              // 'en' | 'zh'; null until chosen or told by the first status

function t(key) {
  if (lang === 'zh' && ZH[key] !== undefined) return ZH[key];
  return EN[key] !== undefined ? EN[key] : key;
}

function storedLang() {
  try { return window.localStorage.getItem(LANG_KEY); } catch (e) { return null; }
}

// Static texts carry data-i18n: their English is kept the first time, so switching back restores it.
function applyLanguage(next) {
  lang = next === 'zh' ? 'zh' : 'en';
  document.documentElement.lang = lang === 'zh' ? 'zh-CN' : 'en';
  document.getElementById('lang').value = lang;
  for (const node of document.querySelectorAll('[data-i18n]')) {
    if (node.dataset.en === undefined) node.dataset.en = node.textContent;
    node.textContent = lang === 'zh' ? (ZH[node.dataset.i18n] || node.dataset.en) : node.dataset.en;
  }
  for (const card of cards.values()) card.applyLanguage();
}

function setupLanguage() {
  const select = document.getElementById('lang');
  const stored = storedLang();
  if (stored === 'en' || stored === 'zh') applyLanguage(stored);
  select.addEventListener('change', () => {
    try { window.localStorage.setItem(LANG_KEY, select.value); } catch (e) { /* private mode: not kept */ }
    applyLanguage(select.value);
    pollStatusNow();
    pollEventsNow();
  });
}

function langQuery(sep) {
  return lang ? `${sep}lang=${lang}` : '';
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === 'class') node.className = value;
    else if (key === 'text') node.textContent = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function fmt(value, digits, unit) {
  if (value === null || value === undefined || Number.isNaN(value)) return '–';
  return Number(value).toFixed(digits) + (unit || '');
}

function fmtDuration(seconds) {
  const s = Math.floor(seconds);
  const d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600), m = Math.floor(s % 3600 / 60);
  return (d ? d + 'd ' : '') + (d || h ? h + 'h ' : '') + m + 'm ' + (s % 60) + 's';
}

function fmtTime(unix) {
  return unix ? new Date(unix * 1000).toLocaleString() : '–';
}

function renderPredictions(ol, predictions) {
  ol.replaceChildren(...predictions.map((p) => {
    const pct = Math.max(0, Math.min(100, p.probability * 100));
    const fill = el('span', { class: 'fill' });
    fill.style.width = pct.toFixed(1) + '%';
    return el('li', { 'data-label': p.label, 'data-index': String(p.index) },
      el('span', { class: 'label', text: p.display || p.label, title: p.label }),
      el('span', { class: 'bar' }, fill),
      el('span', { class: 'score', text: pct.toFixed(1) + '%' }));
  }));
}

function liveSource(name, live) {
  const base = encodeURIComponent(name);
  return live ? `/stream/${base}.mjpg?v=${Date.now()}` : `/snapshot/${base}.jpg?t=${Date.now()}`;
}

function makeCard(cam, index) {
  const live = index < MAX_LIVE;
  const img = el('img', { class: 'live', alt: t('liveOf') + cam.name });
  img.dataset.mode = live ? 'mjpeg' : 'snapshot';
  // A dropped stream (daemon restart, camera down for long) is retried; snapshots refresh on a timer.
  img.addEventListener('error', () => { setTimeout(() => { img.src = liveSource(cam.name, live); }, 3000); });
  img.src = liveSource(cam.name, live);
  if (!live) setInterval(() => { img.src = liveSource(cam.name, false); }, SNAPSHOT_EVERY);
  const card = {
    root: el('article', { class: 'camera', 'data-camera': cam.name }),
    state: el('span', { class: 'state' }),
    reason: el('p', { class: 'reason' }),
    active: el('p', { class: 'active-events', hidden: '' }),
    figures: el('dl', { class: 'figures' }),
    preds: el('ol', { class: 'preds' }),
    custom: el('ul', { class: 'custom' }),
    heat: el('input', { type: 'checkbox', class: 'heat-toggle' }),
    labelSelect: el('select', { class: 'label-class', 'aria-label': `class for a frame of ${cam.name}` }),
    labelButton: el('button', { type: 'button', class: 'label-save', text: t('saveFrame') }),
    heatText: document.createTextNode(t('heatmap')),
    labelNote: el('span', { class: 'muted label-note' }),
    img,
  };
  card.heat.addEventListener('change', () => postAction(
    `/api/cameras/${encodeURIComponent(cam.name)}/heatmap?on=${card.heat.checked}`, card.labelNote));
  card.labelButton.addEventListener('click', () => {
    const [head, cls] = card.labelSelect.value.split(':');
    if (!head) return;
    postAction(`/api/cameras/${encodeURIComponent(cam.name)}/label?head=${encodeURIComponent(head)}` +
      `&class=${encodeURIComponent(cls)}`, card.labelNote, (body) => `saved as ${head}:${cls} ` +
      `(${Object.entries(body.examples).map(([k, v]) => `${k} ${v}`).join(', ')})`);
  });
  card.labelRow = el('p', { class: 'label-row', hidden: '' }, card.labelButton, ' ', card.labelSelect, ' ',
    card.labelNote);
  card.root.append(
    el('h2', {}, el('span', { class: 'name', text: cam.name }), card.state),
    el('div', { class: 'view' }, img),
    el('label', { class: 'heat' }, card.heat, card.heatText),
    card.active, card.reason, card.figures, card.preds, card.custom, card.labelRow);
  card.applyLanguage = () => {
    card.labelButton.textContent = t('saveFrame');
    card.heatText.textContent = t('heatmap');
    img.alt = t('liveOf') + cam.name;
  };
  return card;
}

// POST with the parameters in the query string; `note` shows the outcome.
async function postAction(path, note, describe) {
  try {
    const body = await getJSON(path, { method: 'POST' });
    if (note) note.textContent = describe ? describe(body) : 'ok';
    return body;
  } catch (e) {
    if (note) note.textContent = 'failed: ' + e.message;
    return null;
  }
}

let heads = [];

function renderCustom(card, cam) {
  card.custom.replaceChildren(...(cam.custom || []).map((c) => el('li', { 'data-head': c.head },
    el('span', { class: 'label', text: `${c.head}: ${c.label}` }),
    el('span', { class: 'score', text: (c.probability * 100).toFixed(1) + '%' }))));
  card.heat.checked = !!cam.heatmap;
  const options = heads.filter((h) => h.cameras.includes(cam.name))
    .flatMap((h) => [...new Set([...h.classes, 'none'])].map((cls) => `${h.name}:${cls}`));
  const current = [...card.labelSelect.options].map((o) => o.value).join('|');
  if (current !== options.join('|')) {
    card.labelSelect.replaceChildren(...options.map((o) => el('option', { value: o, text: o })));
  }
  card.labelRow.hidden = options.length === 0;
}

// The list is rebuilt only when the set of heads changes; otherwise each entry is updated in place. A button
// replaced between the press and the release of the mouse never gets the click (status comes every 1.5 s).
let headsShown = null;

function headItem(h) {
  const button = el('button', { type: 'button', class: 'retrain', text: t('retrain') });
  const note = el('span', { class: 'muted retrain-state' });
  button.addEventListener('click', () => postAction(`/api/heads/${encodeURIComponent(h.name)}/retrain`, note,
    (body) => body.retrain.state));
  return el('li', { 'data-head': h.name }, el('strong', { text: h.name }), el('span', { class: 'summary' }),
    button, ' ', note);
}

function updateHeadItem(item, h) {
  const state = h.retrain || { state: 'idle' };
  const counts = Object.entries(h.examples).map(([k, v]) => `${k} ${v}`).join(', ') || t('noExamples');
  item.querySelector('.summary').textContent = ` ${h.classes.join(' / ')} · ${t('examples')}${counts} `;
  item.querySelector('.retrain').textContent = t('retrain');
  item.querySelector('.retrain').disabled = state.state === 'queued' || state.state === 'training';
  item.querySelector('.retrain-state').textContent = state.state +
    (state.state === 'failed' ? ': ' + state.message : '') +
    (state.state === 'done' && state.accuracy != null ? ` (held-out ${(state.accuracy * 100).toFixed(1)}%)` : '');
}

function renderHeads(list) {
  heads = list;
  document.getElementById('heads').hidden = list.length === 0;
  const ul = document.getElementById('heads-list');
  const names = list.map((h) => h.name).join('|');
  let items = list.map((h) => ul.querySelector(`li[data-head="${CSS.escape(h.name)}"]`));
  if (names !== headsShown || items.includes(null)) {
    items = list.map(headItem);
    ul.replaceChildren(...items);
    headsShown = names;
  }
  list.forEach((h, i) => updateHeadItem(items[i], h));
}

function updateCard(card, cam) {
  const img = card.img;
  if (img.naturalWidth) {
    // Where the live picture is drawn and at what size it arrived: lets a user (or a test) tell a painted
    // view from an empty box without looking at the pixels.
    const r = img.getBoundingClientRect();
    img.dataset.natural = `${img.naturalWidth}x${img.naturalHeight}`;
    img.dataset.box = [r.left + window.scrollX, r.top + window.scrollY, r.width, r.height].map(Math.round).join(',');
  }
  card.root.dataset.state = cam.state;
  card.state.textContent = t(cam.state === 'connecting' ? 'connectingState' : cam.state);
  card.state.dataset.state = cam.state;
  card.state.className = 'state ' + cam.state;
  card.reason.textContent = cam.state === 'up' ? '' : (cam.reason || '');
  card.reason.hidden = !card.reason.textContent;
  const figures = [
    ['fps in', fmt(cam.fps_in, 1)], ['fps out', fmt(cam.fps_out, 1)],
    ['latency', cam.latency === null ? '–' : fmt(cam.latency * 1000, 0, ' ms')],
    ['size', cam.width ? `${cam.width}×${cam.height}` : '–'], ['frames', String(cam.frames)],
    ['reconnects', String(cam.reconnects)], ['last frame', fmtTime(cam.last_frame_at)],
  ];
  card.figures.replaceChildren(...figures.flatMap(([k, v]) => [el('dt', { text: t(k) }), el('dd', { text: v })]));
  renderPredictions(card.preds, cam.predictions || []);
  renderCustom(card, cam);
  const active = cam.active || [];
  card.root.classList.toggle('alerting', active.length > 0);
  card.active.hidden = active.length === 0;
  const names = cam.active_display || active;
  card.active.textContent = active.length ? t('event') + names.join(', ') : '';
}

function renderStatus(status) {
  if (lang === null) applyLanguage(status.language);
  renderHeads(status.custom_classes || []);
  const box = document.getElementById('cameras');
  const seen = new Set();
  status.cameras.forEach((cam, index) => {
    seen.add(cam.name);
    let card = cards.get(cam.name);
    if (!card) {
      card = makeCard(cam, index);
      cards.set(cam.name, card);
      box.append(card.root);
    }
    updateCard(card, cam);
  });
  for (const [name, card] of cards) {
    if (!seen.has(name)) { card.img.removeAttribute('src'); card.root.remove(); cards.delete(name); }
  }
  if (!status.cameras.length) box.replaceChildren(el('p', { class: 'muted', text: t('noCameras') }));
  const m = status.model;
  document.getElementById('model').textContent =
    `${m.name} · ${m.precision}${m.engine ? ' / ' + m.engine : ''} · sha256 ${(m.sha256 || '').slice(0, 12)}`;
  document.getElementById('untrained').hidden = !m.untrained;
  document.body.classList.toggle('untrained', !!m.untrained);
  document.getElementById('uptime').textContent = t('uptime') + fmtDuration(status.uptime);
  fleetOn = !!status.fleet;
  const v = status.versions;
  document.getElementById('versions').textContent =
    `monitor ${v.monitor} · Python ${v.python} · torch ${v.torch} · OpenCV ${v.opencv}`;
}

function setConn(ok, text) {
  const conn = document.getElementById('conn');
  delete conn.dataset.i18n;             // its text is set here from now on, not by the language switch
  conn.dataset.state = ok ? 'ok' : 'error';
  conn.textContent = text;
}

// Resolved against location.origin, never the page URL: opened with user:pass@ in the address, the page URL
// carries credentials and fetch() refuses such URLs; the browser's auth cache supplies them instead.
function api(path) {
  return new URL(path, window.location.origin).href;
}

async function getJSON(path, options) {
  const response = await fetch(api(path), Object.assign({ cache: 'no-store', credentials: 'same-origin' }, options));
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  if (!response.ok) throw new Error((body && body.error) || `${response.status} ${response.statusText}`);
  return body;
}

let statusTimer = null;

// Fleet (/api/fleet, only on a node with fleet:): every node with its heartbeat, cameras and outbox, and every
// fleet camera with its holder, linked to the live view on the node that runs it (that node's public_url).
let fleetOn = false;
const FLEET_EVERY = 3000;

function fleetRow(cells) {
  return el('tr', {}, ...cells.map((c) => (c instanceof Node ? el('td', {}, c) : el('td', { text: String(c) }))));
}

function renderFleet(doc) {
  const urls = new Map(doc.nodes.map((n) => [n.name, n.public_url]));
  const live = (node, cam) => el('a', { href: `${urls.get(node)}/stream/${encodeURIComponent(cam)}.mjpg`,
    target: '_blank', rel: 'noopener', text: cam, class: 'fleet-live', 'data-node': node });
  document.getElementById('fleet-nodes').replaceChildren(
    el('tr', {}, ...['node', 'heartbeat', 'cameras', 'outbox', 'lag'].map((h) => el('th', { text: h }))),
    ...doc.nodes.map((n) => fleetRow([
      el('a', { href: n.public_url + '/', text: n.name + (n.name === doc.node ? ' (this)' : ''), target: '_blank',
        rel: 'noopener' }),
      `${fmt(n.heartbeat_age, 1)} s ago`, `${n.cameras_held}/${n.max_cameras}`, n.outbox_pending,
      `${fmt(n.outbox_lag, 1)} s`])));
  document.getElementById('fleet-cameras').replaceChildren(
    el('tr', {}, el('th', { text: 'camera (live view)' }), el('th', { text: 'holder' })),
    ...doc.cameras.map((c) => fleetRow([c.holder ? live(c.holder, c.name) : c.name, c.holder || '–'])));
}

async function pollFleet() {
  try {
    if (fleetOn) renderFleet(await getJSON('/api/fleet'));
  } catch (e) {
    document.getElementById('fleet-cameras').replaceChildren(el('tr', {}, el('td', { text: e.message })));
  } finally {
    document.getElementById('fleet').hidden = !fleetOn;
    setTimeout(pollFleet, FLEET_EVERY);
  }
}

async function pollStatus() {
  clearTimeout(statusTimer);
  try {
    renderStatus(await getJSON('/api/status' + langQuery('?')));
    setConn(true, t('live'));
  } catch (e) {
    setConn(false, t('unreachable') + e.message);
  } finally {
    clearTimeout(statusTimer);
    statusTimer = setTimeout(pollStatus, STATUS_EVERY);
  }
}

function pollStatusNow() { pollStatus(); }

// What each event's right/wrong click filed: kept while the event is listed, so that the answer stays in view
// when the list is rebuilt (or the user clicks again and files the same frame twice).
const marked = new Map();
// The list is rebuilt only when its set of entries changes; otherwise each entry's text is updated in place.
// A button replaced between the press and the release of the mouse never gets the click (the list is polled
// every 5 s; a click takes ~0.1 s).
let eventsShown = null;

function eventInfo(ev) {
  return el('div', { class: 'info' },
    el('strong', { text: `${ev.display || ev.label} `, title: ev.label }),
    el('span', { text: `${(ev.peak_score * 100).toFixed(0)}%${t('on')}${ev.camera}` }),
    el('br'),
    el('span', { class: 'muted', text: `${ev.rule} · ${fmtTime(ev.started_at)}${ev.ended_at ? '' : ' · ' + t('ongoing')}` }));
}

function eventItem(ev) {
  const item = el('li', { class: 'event' + (ev.ended_at ? '' : ' open'), 'data-event': String(ev.id) });
  if (ev.snapshot_url) {
    item.append(el('a', { href: ev.snapshot_url, target: '_blank', rel: 'noopener' },
      el('img', { class: 'thumb', src: ev.snapshot_url, alt: `snapshot of event ${ev.id}`, loading: 'lazy' })));
  }
  if (ev.has_clip && ev.clip) {
    // the clip plays inline; the server answers Range requests, so seeking fetches only what it needs
    item.append(el('video', { class: 'clip', src: ev.clip, poster: ev.snapshot_url || '', controls: '',
      preload: 'metadata', muted: '', playsinline: '', 'data-clip': String(ev.id) }));
  }
  item.append(eventInfo(ev));
  if (ev.label.includes(':') && ev.snapshot_url) {
    // A custom-class event teaches its head: right files its frame under the class, wrong under none.
    const note = el('span', { class: 'muted', text: marked.get(ev.id) || '' });
    const mark = (right) => async () => {
      if (await postAction(`/api/events/${ev.id}/label?right=${right}`, note,
        () => (right ? 'filed under ' + ev.label : 'filed under none'))) marked.set(ev.id, note.textContent);
    };
    const right = el('button', { type: 'button', class: 'mark-right', text: t('right') });
    const wrong = el('button', { type: 'button', class: 'mark-wrong', text: t('wrong') });
    right.addEventListener('click', mark(true));
    wrong.addEventListener('click', mark(false));
    item.append(el('div', { class: 'mark' }, right, ' ', wrong, ' ', note));
  }
  return item;
}

let eventsTimer = null;

function pollEventsNow() { eventsShown = null; pollEvents(); }

async function pollEvents() {
  clearTimeout(eventsTimer);
  try {
    const { events } = await getJSON('/api/events?limit=12' + langQuery('&'));
    const listed = new Set(events.map((ev) => ev.id));
    for (const id of marked.keys()) if (!listed.has(id)) marked.delete(id);
    const list = document.getElementById('events');
    // what decides an entry's elements: a snapshot that arrives later adds the thumbnail and the buttons
    const entries = events.map((ev) => `${ev.id}:${ev.label}:${ev.snapshot_url}:${ev.has_clip}`).join('|');
    const items = events.map((ev) => list.querySelector(`li[data-event="${ev.id}"]`));
    if (!events.length) {
      list.replaceChildren(el('li', { class: 'muted', text: t('noEvents') }));
    } else if (entries !== eventsShown || items.includes(null)) {
      list.replaceChildren(...events.map(eventItem));
    } else {
      events.forEach((ev, i) => {
        items[i].className = 'event' + (ev.ended_at ? '' : ' open');
        items[i].querySelector('.info').replaceWith(eventInfo(ev));
      });
    }
    eventsShown = entries;
  } catch (e) {
    // the status poll reports an unreachable daemon; events just keep their last content
  } finally {
    clearTimeout(eventsTimer);
    eventsTimer = setTimeout(pollEvents, EVENTS_EVERY);
  }
}

let previewUrl = null;
let uploads = 0;     // an answer to an earlier upload that arrives after a newer one started is not shown

async function classify(file) {
  const mine = ++uploads;
  const error = document.getElementById('upload-error');
  const result = document.getElementById('upload-result');
  const preview = document.getElementById('preview');
  error.hidden = true;
  drawExplanation(null);     // the previous upload's map must not lie over this image, even if this one fails
  result.replaceChildren(el('li', { class: 'muted', text: t('classifying') }));
  if (previewUrl) URL.revokeObjectURL(previewUrl);
  previewUrl = URL.createObjectURL(file);
  preview.src = previewUrl;
  preview.hidden = false;
  const form = new FormData();
  form.append('file', file, file.name || 'upload');
  try {
    const body = await getJSON('/api/classify?explain=true' + langQuery('&'), { method: 'POST', body: form });
    if (mine !== uploads) return;
    renderPredictions(result, body.predictions.slice(0, 3));
    drawExplanation(body.explanation);
    result.classList.toggle('untrained', !!body.model.untrained);
  } catch (e) {
    if (mine !== uploads) return;
    result.replaceChildren();
    error.textContent = t('notClassified') + e.message;
    error.hidden = false;
  }
}

// The top class's activation map over the uploaded image: a 7x7 grid (0..1) covering `box` (fractions of the
// image), drawn on a canvas laid over the preview (CSP allows no data: images; a canvas needs none).
// The canvas follows the image's place and size in the box: a portrait image is narrower than the box and
// centred in it; a resized window changes both (drawn again then).
let explained = null;

function drawExplanation(explanation) {
  const canvas = document.getElementById('heat');
  const preview = document.getElementById('preview');
  explained = explanation;
  canvas.hidden = !explanation;
  delete canvas.dataset.label;
  if (!explanation) return;
  const draw = () => {
    if (explained !== explanation) return;       // a newer upload replaced this one meanwhile
    const w = preview.clientWidth, h = preview.clientHeight;
    canvas.width = w; canvas.height = h;
    canvas.style.width = w + 'px'; canvas.style.height = h + 'px';
    canvas.style.left = preview.offsetLeft + 'px'; canvas.style.top = preview.offsetTop + 'px';
    const ctx = canvas.getContext('2d');
    ctx.clearRect(0, 0, w, h);
    const [bx, by, bw, bh] = explanation.box;
    const grid = explanation.grid, n = grid.length;
    const cw = bw * w / n, ch = bh * h / n;
    for (let r = 0; r < n; r++) {
      for (let c = 0; c < grid[r].length; c++) {
        const v = grid[r][c];
        ctx.fillStyle = `rgba(${Math.round(255 * v)}, 0, ${Math.round(255 * (1 - v))}, ${0.15 + 0.45 * v})`;
        ctx.fillRect(bx * w + c * cw, by * h + r * ch, Math.ceil(cw), Math.ceil(ch));
      }
    }
    canvas.dataset.label = explanation.label;
  };
  if (preview.complete && preview.naturalWidth) draw(); else preview.addEventListener('load', draw, { once: true });
}

function setupUpload() {
  const drop = document.getElementById('drop');
  const input = document.getElementById('file');
  input.addEventListener('change', () => { if (input.files.length) classify(input.files[0]); });
  for (const name of ['dragenter', 'dragover']) {
    drop.addEventListener(name, (e) => { e.preventDefault(); drop.classList.add('over'); });
  }
  for (const name of ['dragleave', 'drop']) {
    drop.addEventListener(name, () => drop.classList.remove('over'));
  }
  drop.addEventListener('drop', (e) => {
    e.preventDefault();
    const file = e.dataTransfer && e.dataTransfer.files[0];
    if (file) classify(file);
  });
  window.addEventListener('resize', () => { if (explained) drawExplanation(explained); });
  // Dropping next to the box must not navigate away from the page.
  window.addEventListener('dragover', (e) => e.preventDefault());
  window.addEventListener('drop', (e) => e.preventDefault());
}

setupLanguage();
setupUpload();
pollStatus();
pollEvents();
pollFleet();
