// The live jackpot widget. Reads tenant, pool_id and brand_id from its own URL, shows
// the pools from /jp/widget/pools and follows /jp/widget/stream (Server-Sent Events);
// while the stream is down it polls every 2 s and tries the stream again every 30 s.
//
// Sizes are integers in minor units and stay integers here: they are formatted by
// splitting their digits at the currency's exponent, never by dividing.
// Every text from the server goes through textContent, never innerHTML.
(function () {
  "use strict";

  var POLL_MS = 2000;
  var STREAM_RETRY_MS = 30000;
  var COUNT_UP_MS = 800;

  var params = new URLSearchParams(window.location.search);
  var query = new URLSearchParams();
  ["tenant", "brand_id", "pool_id"].forEach(function (name) {
    var value = params.get(name);
    if (value) {
      query.set(name, value);
    }
  });

  var poolsEl = document.getElementById("pools");
  var noticeEl = document.getElementById("notice");
  var cards = new Map(); // pool_id -> card

  function formatMinor(minor, currency, exponent) {
    if (!Number.isSafeInteger(minor)) {
      return currency + " \u2014";
    }
    var digits = String(Math.abs(minor));
    var whole = digits;
    var fraction = "";
    if (exponent > 0) {
      digits = digits.padStart(exponent + 1, "0");
      whole = digits.slice(0, digits.length - exponent);
      fraction = "." + digits.slice(digits.length - exponent);
    }
    whole = whole.replace(/\B(?=(\d{3})+(?!\d))/g, ",");
    return currency + " " + (minor < 0 ? "-" : "") + whole + fraction;
  }

  function element(tag, className, parent) {
    var el = document.createElement(tag);
    if (className) {
      el.className = className;
    }
    if (parent) {
      parent.appendChild(el);
    }
    return el;
  }

  function setNotice(text) {
    noticeEl.textContent = text;
    noticeEl.hidden = !text;
  }

  function refreshEmptyNotice() {
    if (cards.size === 0) {
      setNotice("No jackpots to show.");
    } else if (noticeEl.textContent === "No jackpots to show.") {
      setNotice("");
    }
  }

  // ------------------------------------------------------------ count-up

  // Shows `to` on the size element, counting from what it shows now. The intermediate
  // figures are whole minor units (BigInt arithmetic); the last frame is exactly `to`.
  function showSize(row, to, currency, exponent) {
    var el = row.sizeEl;
    el.setAttribute("data-size-minor", String(to));
    if (row.frame) {
      cancelAnimationFrame(row.frame);
      row.frame = 0;
    }
    var from = row.shown;
    row.shown = to;
    // A drop back to the seed is shown at once: counting down would look like the
    // jackpot draining.
    if (from === null || to <= from || document.hidden) {
      el.textContent = formatMinor(to, currency, exponent);
      el.classList.remove("ticking");
      return;
    }
    var delta = BigInt(to - from);
    var started = performance.now();
    el.classList.add("ticking");
    function step(now) {
      var elapsed = Math.min(COUNT_UP_MS, Math.max(0, Math.floor(now - started)));
      var value = from + Number((delta * BigInt(elapsed)) / BigInt(COUNT_UP_MS));
      el.textContent = formatMinor(value, currency, exponent);
      if (elapsed < COUNT_UP_MS) {
        row.frame = requestAnimationFrame(step);
      } else {
        row.frame = 0;
        el.classList.remove("ticking");
      }
    }
    row.frame = requestAnimationFrame(step);
  }

  // ------------------------------------------------------------ cards

  function newCard(view) {
    var el = element("section", "pool");
    el.setAttribute("data-pool-card", view.pool_id);
    var heading = element("h2", "", el);
    var nameEl = element("span", "name", heading);
    var statusEl = element("span", "status", heading);
    var tiersEl = element("div", "tiers", el);
    var deadlineEl = element("p", "deadline", el);
    deadlineEl.hidden = true;
    poolsEl.appendChild(el);
    return {el: el, nameEl: nameEl, statusEl: statusEl, tiersEl: tiersEl, deadlineEl: deadlineEl,
            rows: new Map(), version: -1};
  }

  function newRow(card, poolId, tierName) {
    var el = element("div", "tier", card.tiersEl);
    var nameEl = element("span", "tier-name", el);
    // A single-tier pool's only tier is called "main"; the pool's name says enough.
    nameEl.textContent = tierName === "main" ? "" : tierName;
    nameEl.hidden = tierName === "main";
    var sizeEl = element("span", "tier-size", el);
    sizeEl.setAttribute("data-pool", poolId);
    sizeEl.setAttribute("data-tier", tierName);
    var winnerEl = element("p", "winner", el);
    winnerEl.hidden = true;
    return {el: el, sizeEl: sizeEl, winnerEl: winnerEl, shown: null, frame: 0};
  }

  function applyView(view) {
    var card = cards.get(view.pool_id);
    if (card && view.version <= card.version) {
      return; // an older or repeated snapshot (stream and poll may overlap)
    }
    if (!card) {
      card = newCard(view);
      cards.set(view.pool_id, card);
      refreshEmptyNotice();
    }
    card.version = view.version;
    card.nameEl.textContent = view.name || view.pool_id;
    card.statusEl.textContent = view.status === "open" ? "" : view.status;
    card.statusEl.hidden = view.status === "open";

    var seen = new Set();
    view.tiers.forEach(function (tier) {
      seen.add(tier.tier);
      var row = card.rows.get(tier.tier);
      if (!row) {
        row = newRow(card, view.pool_id, tier.tier);
        card.rows.set(tier.tier, row);
      }
      card.tiersEl.appendChild(row.el); // keeps the snapshot's tier order
      showSize(row, tier.size, view.currency, view.exponent);
      var last = tier.last_winner;
      if (last) {
        row.winnerEl.textContent = "Last winner: " + last.player + " won " +
          formatMinor(last.amount, view.currency, view.exponent);
        row.winnerEl.hidden = false;
      } else {
        row.winnerEl.textContent = "";
        row.winnerEl.hidden = true;
      }
    });
    card.rows.forEach(function (row, name) {
      if (!seen.has(name)) {
        if (row.frame) {
          cancelAnimationFrame(row.frame);
        }
        row.el.remove();
        card.rows.delete(name);
      }
    });

    if (view.kind === "timed" && Number.isSafeInteger(view.deadline_ms) && view.deadline_ms > 0) {
      card.deadlineEl.textContent = "Must drop by " + new Date(view.deadline_ms).toLocaleString();
      card.deadlineEl.hidden = false;
    } else {
      card.deadlineEl.hidden = true;
    }
  }

  // A full list: every pool in it is shown, every pool not in it is removed.
  function applyList(views) {
    var listed = new Set();
    views.forEach(function (view) {
      listed.add(view.pool_id);
      applyView(view);
    });
    cards.forEach(function (card, poolId) {
      if (!listed.has(poolId)) {
        card.rows.forEach(function (row) {
          if (row.frame) {
            cancelAnimationFrame(row.frame);
          }
        });
        card.el.remove();
        cards.delete(poolId);
      }
    });
    refreshEmptyNotice();
  }

  // ------------------------------------------------------------ feed

  var stream = null;
  var pollTimer = 0;
  var polling = false;
  var retryTimer = 0;

  function setFeed(mode) {
    document.body.setAttribute("data-feed", mode);
  }

  function poll() {
    fetch("/jp/widget/pools?" + query.toString(), {cache: "no-store"})
      .then(function (response) {
        if (!response.ok) {
          throw new Error("HTTP " + response.status);
        }
        return response.json();
      })
      .then(function (body) {
        if (polling) {
          applyList(body.pools);
          if (noticeEl.textContent === "Live updates paused; retrying.") {
            setNotice("");
            refreshEmptyNotice();
          }
        }
      })
      .catch(function () {
        setNotice("Live updates paused; retrying.");
      })
      .finally(function () {
        if (polling) {
          pollTimer = setTimeout(poll, POLL_MS);
        }
      });
  }

  function startPolling() {
    if (polling) {
      return;
    }
    polling = true;
    setFeed("polling");
    poll();
  }

  function stopPolling() {
    polling = false;
    clearTimeout(pollTimer);
    pollTimer = 0;
  }

  function openStream() {
    retryTimer = 0;
    if (!window.EventSource) {
      startPolling();
      return;
    }
    stream = new EventSource("/jp/widget/stream?" + query.toString());
    stream.addEventListener("pools", function (event) {
      stopPolling();
      setFeed("stream");
      applyList(JSON.parse(event.data).pools);
    });
    stream.addEventListener("pool", function (event) {
      applyView(JSON.parse(event.data));
    });
    stream.onerror = function () {
      // EventSource would reconnect by itself, but not after an HTTP error; one path
      // for both: poll now, try the stream again later.
      stream.close();
      stream = null;
      startPolling();
      if (!retryTimer) {
        retryTimer = setTimeout(openStream, STREAM_RETRY_MS);
      }
    };
  }

  if (!query.get("tenant")) {
    setFeed("idle");
    setNotice("This widget needs a tenant in its URL (?tenant=...).");
    return;
  }
  openStream();
})();
