// The sluice console: reads /console/api/* and draws the pages. Every value from the server is
// set as text (textContent, text nodes, attribute values): nothing is parsed as HTML.
'use strict';

(function () {
  const OUTCOMES = ['indexed', 'deleted', 'stale', 'filtered', 'dead_lettered', 'skipped'];
  const COLORS = {
    indexed: '#1a7f37', deleted: '#8250df', stale: '#9a6700',
    filtered: '#57606a', dead_lettered: '#cf222e', skipped: '#0969da',
  };
  const SVG_NS = 'http://www.w3.org/2000/svg';
  const PAGES = ['sinks', 'backfills', 'failed'];
  const REFRESH_MS = 2000;

  let overview = null;
  let page = 'sinks';
  let timer = null;

  // el('td', {class: 'x', 'data-sink': name}, 'text', child…): attributes and text only.
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    setAttrs(node, attrs);
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function svg(tag, attrs) {
    const node = document.createElementNS(SVG_NS, tag);
    setAttrs(node, attrs);
    return node;
  }

  function setAttrs(node, attrs) {
    for (const [key, value] of Object.entries(attrs || {})) {
      if (key.startsWith('on')) throw new Error('no event handler attributes: ' + key);
      if (value !== null && value !== undefined && value !== false) node.setAttribute(key, String(value));
    }
  }

  function replace(container, ...children) {
    container.replaceChildren(...children.filter((c) => c !== null && c !== undefined));
  }

  function message(text, ok) {
    const box = document.getElementById('message');
    box.textContent = text;
    box.className = ok ? 'ok' : '';
    box.hidden = !text;
  }

  async function api(path, options) {
    const response = await fetch('api/' + path, options);
    let body = null;
    try {
      body = await response.json();
    } catch (e) {
      body = null;
    }
    if (!response.ok) {
      const reason = body && body.error ? body.error : response.status + ' ' + response.statusText;
      const error = new Error(reason);
      error.status = response.status;
      throw error;
    }
    return body;
  }

  function ago(micros, now) {
    if (micros === null || micros === undefined) return 'never';
    const seconds = Math.max(0, (now - micros) / 1e6);
    return seconds < 120 ? seconds.toFixed(1) + ' s ago' : Math.round(seconds / 60) + ' min ago';
  }

  function duration(micros) {
    if (micros === null || micros === undefined) return 'none yet';
    return micros < 1e6 ? Math.round(micros / 1000) + ' ms' : (micros / 1e6).toFixed(2) + ' s';
  }

  function fact(label, value, attrs) {
    return el('span', {}, label + ' ', el('b', attrs || {}, value));
  }

  function errorOf(value) {
    return value && typeof value === 'object' && !Array.isArray(value) && value.error;
  }

  // ---- sinks ----

  function renderSinks(data) {
    const cards = data.sinks.map((sink) => sinkCard(sink, data.now_micros));
    if (cards.length === 0) cards.push(el('p', {}, 'No sink in the config.'));
    replace(document.getElementById('page-sinks'), ...cards);
  }

  function sinkCard(sink, now) {
    const stateClass = 'state state-' + sink.state.replace(/ /g, '-');
    const card = el('article', {class: 'card sink', 'data-sink': sink.sink},
      el('h2', {}, sink.sink, el('span', {class: stateClass, 'data-field': 'state'}, sink.state)),
      sink.state_reason ? el('p', {class: 'muted', 'data-field': 'state-reason'}, sink.state_reason) : null,
      el('div', {class: 'facts'},
        fact('lag', sink.lag === null ? 'unknown' : sink.lag, {'data-field': 'lag'}),
        fact('last bulk success', ago(sink.last_success_micros, now), {'data-field': 'last-success'}),
        fact('commit → indexed', duration(sink.commit_to_indexed_micros), {'data-field': 'latency'}),
        fact('dead letters to re-drive', errorOf(sink.dead_letters) || sink.dead_letters, {'data-field': 'dead-letters'}),
        fact('topic', sink.topic), fact('index', sink.index)));
    card.append(outcomeTable(sink.outcomes), chart(sink.rates), partitionTable(sink.partitions),
      memberTable(sink.members, now));
    return card;
  }

  function outcomeTable(outcomes) {
    return el('table', {class: 'outcomes'},
      el('tr', {}, ...OUTCOMES.map((o) => el('th', {}, o.replace('_', ' ')))),
      el('tr', {}, ...OUTCOMES.map((o) => el('td', {'data-outcome': o}, outcomes[o]))));
  }

  // Events per second by outcome over the last minutes, summed over the group's members.
  function chart(rates) {
    const width = 640;
    const height = 120;
    const box = el('div', {class: 'chart-box'});
    const drawn = svg('svg', {class: 'chart', width, height, viewBox: `0 0 ${width} ${height}`,
      role: 'img', 'aria-label': 'events per second by outcome'});
    if (rates.length < 2) {
      box.append(el('p', {class: 'muted'}, 'Rates appear after the first samples (every 5 s).'));
      return box;
    }
    const first = rates[0].at;
    const span = Math.max(1, rates[rates.length - 1].at - first);
    const top = Math.max(1, ...rates.flatMap((r) => OUTCOMES.map((o) => r[o])));
    for (const outcome of OUTCOMES) {
      if (!rates.some((r) => r[outcome] > 0)) continue;
      const points = rates.map((r) => {
        const x = ((r.at - first) / span) * (width - 10) + 5;
        const y = height - 5 - (r[outcome] / top) * (height - 20);
        return x.toFixed(1) + ',' + y.toFixed(1);
      });
      drawn.append(svg('polyline', {points: points.join(' '), fill: 'none',
        stroke: COLORS[outcome], 'stroke-width': 2, 'data-outcome': outcome}));
    }
    const label = svg('text', {x: 5, y: 12, 'font-size': 11, fill: '#57606a'});
    const shown = span < 120 ? span + ' s' : Math.round(span / 60) + ' min';
    label.textContent = 'events/s by outcome, last ' + shown + ' (peak ' + top.toFixed(1) + ')';
    drawn.append(label);
    box.append(drawn, el('div', {class: 'legend'}, ...OUTCOMES.map((o) =>
      el('span', {}, svg('svg', {width: 12, height: 12}), o.replace('_', ' ')))));
    for (const [i, swatch] of [...box.querySelectorAll('.legend svg')].entries()) {
      swatch.append(svg('rect', {width: 12, height: 12, fill: COLORS[OUTCOMES[i]]}));
    }
    return box;
  }

  function partitionTable(partitions) {
    if (errorOf(partitions)) return el('p', {class: 'muted'}, 'partitions: ' + partitions.error);
    return el('table', {class: 'partitions'},
      el('tr', {}, el('th', {}, 'partition'), el('th', {}, 'committed'), el('th', {}, 'end'),
        el('th', {}, 'lag'), el('th', {}, 'member')),
      ...partitions.map((p) => el('tr', {'data-partition': p.partition},
        el('td', {}, p.partition), el('td', {}, p.committed === null ? 'none' : p.committed),
        el('td', {}, p.end), el('td', {'data-field': 'lag'}, p.lag),
        el('td', {'data-field': 'member'}, p.member || 'unassigned'))));
  }

  function memberTable(members, now) {
    if (errorOf(members)) return el('p', {class: 'muted'}, 'members: ' + members.error);
    return el('table', {class: 'members'},
      el('tr', {}, el('th', {}, 'member'), el('th', {}, 'partitions'), el('th', {}, 'indexed'),
        el('th', {}, 'dead-lettered'), el('th', {}, 'retried'), el('th', {}, 'last bulk success')),
      ...members.map((m) => el('tr', {'data-member': m.addr || m.client_id},
        el('td', {}, (m.addr || m.client_id) + (m.this_process ? ' (this process)' : '')),
        ...(m.error ? [el('td', {colspan: 5, class: 'muted'}, m.error)] : [
          el('td', {}, m.partitions.join(', ') || 'none'),
          el('td', {}, m.outcomes.indexed), el('td', {}, m.outcomes.dead_lettered),
          el('td', {}, m.retried), el('td', {}, ago(m.last_success_micros, now))]))));
  }

  // ---- backfills ----

  function renderBackfills(data) {
    const slot = data.slot;
    const slotCard = el('article', {class: 'card', id: 'slot'}, el('h2', {}, 'Replication slot'),
      errorOf(slot) ? el('p', {class: 'muted'}, slot.error) : el('div', {class: 'facts'},
        fact('slot', slot.name),
        slot.exists ? fact('confirmed LSN', slot.confirmed_lsn, {'data-field': 'confirmed-lsn'}) : fact('state', 'does not exist yet'),
        slot.exists ? fact('lag', slot.lag_bytes + ' bytes', {'data-field': 'slot-lag'}) : null,
        slot.exists ? fact('streaming', slot.active ? 'yes' : 'no') : null),
      el('p', {class: 'muted'}, data.producer
        ? 'producer at ' + data.producer.addr + ': ' + data.producer.state
        : 'no producer of this slot answers on this host (rates and ETAs need its /status)'));
    const jobs = data.backfills;
    const jobCard = el('article', {class: 'card', id: 'backfills'}, el('h2', {}, 'Backfills'),
      errorOf(jobs) ? el('p', {class: 'muted'}, jobs.error)
        : jobs.length === 0 ? el('p', {class: 'muted'}, 'No backfill yet.')
          : el('table', {},
            el('tr', {}, ...['id', 'table', 'where', 'state', 'progress', 'rows', 'rows/s', 'ETA', 'error']
              .map((h) => el('th', {}, h))),
            ...jobs.map((job) => el('tr', {'data-backfill': job.id},
              el('td', {}, job.id), el('td', {}, job.table), el('td', {}, job.condition || ''),
              el('td', {'data-field': 'state'}, job.state),
              el('td', {}, job.rows_total ? el('progress', {value: Math.min(job.rows_done, job.rows_total), max: job.rows_total}) : ''),
              el('td', {'data-field': 'rows'}, job.rows_done + (job.rows_total ? ' of ~' + job.rows_total : '')),
              el('td', {}, job.rows_per_second === null ? '' : job.rows_per_second),
              el('td', {}, job.eta_seconds === null ? '' : job.eta_seconds + ' s'),
              el('td', {}, job.error || '')))));
    const rebuildCard = el('article', {class: 'card', id: 'rebuilds'}, el('h2', {}, 'Rebuilds'),
      ...data.rebuilds.map((r) => el('div', {'data-sink': r.sink},
        el('p', {}, el('b', {}, r.sink), ': ', r.progress || 'no rebuild in progress'),
        el('p', {class: 'muted'}, 'rebuild the index behind its alias with ', el('code', {}, r.command),
          ' (run it where the config is; `status` and this page show its progress)'))));
    replace(document.getElementById('page-backfills'), slotCard, jobCard, rebuildCard);
  }

  // ---- failed messages ----

  function actionButton(label, request) {
    const enabled = overview && overview.actions.enabled;
    const button = el('button', {type: 'button', class: 'redrive', disabled: !enabled,
      title: enabled ? 'the same as `dlq redrive`' : overview ? overview.actions.reason : ''}, label);
    button.addEventListener('click', () => redrive(button, request));
    return button;
  }

  async function redrive(button, request) {
    const token = document.getElementById('token').value;
    const headers = {'Content-Type': 'application/json'};
    if (token) headers.Authorization = 'Bearer ' + token;
    button.disabled = true;
    message('re-driving…', true);
    try {
      const tally = await api('redrive', {method: 'POST', headers, body: JSON.stringify(request)});
      message(`re-driven ${tally.selected.total}: indexed ${tally.indexed}, deleted ${tally.deleted}, ` +
        `stale ${tally.stale}, filtered ${tally.filtered}, failed again ${tally.failed_again.total}`, true);
    } catch (error) {
      message('redrive refused or failed: ' + error.message, false);
    }
    button.disabled = false;
    refresh();
  }

  function renderFailed(data) {
    const summary = data.summary;
    const body = [el('p', {'data-field': 'failed-total'}, summary.total + ' dead letters to re-drive in ' + data.topic)];
    if (summary.reasons.length > 0) {
      body.push(el('table', {class: 'reasons'},
        el('tr', {}, ...['count', 'stage', 'error type', 'HTTP', 'first', 'last', 'reason', '']
          .map((h) => el('th', {}, h))),
        ...summary.reasons.map((r) => el('tr', {class: 'reason'},
          el('td', {'data-field': 'count'}, r.count), el('td', {}, r.stage), el('td', {}, r.error_type),
          el('td', {}, r.statuses.join('/')), el('td', {}, r.first || ''), el('td', {}, r.last || ''),
          el('td', {'data-field': 'reason'}, r.reason),
          el('td', {}, actionButton('Redrive these', {sink: data.sink, reason: r.reason}))))));
      body.push(actionButton('Redrive all', {sink: data.sink}));
    }
    body.push(...data.letters.map((l) => letter(data.sink, l)));
    // A refresh keeps the events a person opened open.
    const container = document.getElementById('failed-body');
    const open = new Set([...container.querySelectorAll('div.letter details[open]')]
      .map((d) => d.closest('div.letter').dataset.position));
    replace(container, ...body);
    for (const details of container.querySelectorAll('div.letter details')) {
      if (open.has(details.closest('div.letter').dataset.position)) details.open = true;
    }
  }

  function letter(sink, l) {
    const position = l.partition + ':' + l.offset;
    const decoded = l.event !== null;
    const record = decoded
      ? JSON.stringify(l.event.record === undefined ? l.event : l.event.record, null, 2)
      : 'does not decode: ' + l.undecodable + '\nvalue (base64): ' + l.value_base64;
    return el('div', {class: 'letter', 'data-position': position},
      el('b', {}, 'dead letter ' + position), ' ', el('span', {class: 'muted'}, l.time ? 'written ' + l.time : ''),
      el('div', {}, l.stage + ' ', el('b', {'data-field': 'error-type'}, l.error_type),
        l.status ? ', HTTP ' + l.status : '', ', attempts ' + l.attempts),
      el('div', {'data-field': 'reason'}, 'reason: ' + l.reason),
      el('div', {class: 'muted'}, `source: ${l.source.topic} partition ${l.source.partition} offset ${l.source.offset}, key ${l.key}`),
      el('div', {}, decoded && l.event.action ? 'event: ' + l.event.action + ', record:' : 'event:'),
      el('pre', {'data-field': 'record'}, record),
      decoded ? el('details', {}, el('summary', {}, 'the whole event (as a filter or transform sees it)'),
        el('pre', {'data-field': 'event'}, JSON.stringify(l.event, null, 2))) : null,
      actionButton('Redrive this', {sink, position}));
  }

  function fillSinkChoice(data) {
    const select = document.getElementById('failed-sink');
    const names = data.sinks.map((s) => s.sink);
    const current = [...select.options].map((o) => o.value);
    if (names.join('\n') !== current.join('\n')) {
      const chosen = select.value;
      replace(select, ...names.map((n) => el('option', {value: n}, n)));
      if (names.includes(chosen)) select.value = chosen;
    }
  }

  // ---- navigation and refresh ----

  async function refresh() {
    clearTimeout(timer);
    try {
      overview = await api('overview');
      document.getElementById('process').textContent = 'this process: ' + (overview.process || '?');
      const note = document.getElementById('actions-note');
      note.textContent = overview.actions.enabled ? '' : overview.actions.reason;
      note.hidden = overview.actions.enabled;
      fillSinkChoice(overview);
      if (page === 'sinks') renderSinks(overview);
      if (page === 'backfills') renderBackfills(await api('backfills'));
      if (page === 'failed') {
        const sink = document.getElementById('failed-sink').value;
        if (sink) renderFailed(await api('failed/' + encodeURIComponent(sink)));
      }
      document.getElementById('updated').textContent = 'updated ' + new Date().toLocaleTimeString();
    } catch (error) {
      message('cannot read the console API: ' + error.message, false);
    }
    timer = setTimeout(refresh, page === 'sinks' ? REFRESH_MS : REFRESH_MS * 3);
  }

  function route() {
    const wanted = location.hash.replace('#', '');
    page = PAGES.includes(wanted) ? wanted : 'sinks';
    for (const name of PAGES) {
      document.getElementById('page-' + name).hidden = name !== page;
      document.getElementById('nav-' + name).className = name === page ? 'current' : '';
    }
    refresh();
  }

  window.addEventListener('hashchange', route);
  document.getElementById('failed-sink').addEventListener('change', refresh);
  document.getElementById('failed-refresh').addEventListener('click', refresh);
  route();
}());
