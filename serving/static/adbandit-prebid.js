/*!
 * adbandit-prebid.js — Prebid.js auction results → adbandit outcome events.
 *
 * Served by the service at GET /v1/prebid/adbandit-prebid.js (docs/service.md, "Prebid
 * analytics"). It listens to Prebid's events with pbjs.onEvent (no Prebid build step) and
 * posts one outcome event per bidder and ad unit of every auction to POST /v1/outcomes:
 *
 *   bidResponse  → filled, revenue_cpm = the bid's CPM, at the floor Prebid applied
 *   bidRejected  → not filled (floor not met), at that floor
 *   noBid        → not filled, at the floor the bidder was given (bidRequest.getFloor)
 *   bidTimeout   → not filled, at that floor
 *   bidWon       → marks the winner's event (context.prebid_won = true) before it is sent
 *
 * Each event carries the decision_id of its auction's floors: Prebid draws one model group of
 * the floors document per auction and gives its modelVersion to every bid request
 * (bidRequest.floorData.modelVersion, seen in bidRequested); the service ends it in
 * '#<floors id>', a signed id of the group's variant. The service learns the event into that
 * variant, and accepts it without the write key (the signature is the page's credential), so
 * a page never needs the write key.
 *
 * The network of an event is the bidder code (or options.networks[bidder]), its placement
 * the ad unit code (or options.placements[adUnitCode]; a mapping function may return null to
 * leave an ad unit out); options.context(adUnitCode, bid) gives the context of its segment. Events are batched: sent once
 * their auction has ended and options.winWaitMs has passed (so a bidWon that follows the
 * auction can mark its event), at most options.batchSize per POST, and on pagehide.
 * A POST that fails is retried (event ids make repeats harmless: the service counts them
 * as duplicates).
 *
 * Usage:
 *   adbanditPrebid.attach(pbjs, {url: 'https://adbandit.example.com'});
 */
(function (global) {
  'use strict';

  var VERSION = '2';
  var FLOOR_NOT_MET = 'Bid does not meet price floor';

  function round(x, digits) {
    var m = Math.pow(10, digits);
    return Math.round(x * m) / m;
  }

  function lookup(mapping, key) {
    if (typeof mapping === 'function') return mapping(key);
    if (mapping && Object.prototype.hasOwnProperty.call(mapping, key)) return mapping[key];
    return key;
  }

  function Tracker(pbjs, options) {
    options = options || {};
    if (!options.url) throw new Error('adbanditPrebid.attach: options.url (the service base URL) is required');
    this.pbjs = pbjs;
    this.endpoint = options.url.replace(/\/+$/, '') + '/v1/outcomes';
    this.placements = options.placements || null;
    this.networks = options.networks || null;
    this.context = options.context || null;
    this.currency = options.currency || 'USD';
    this.apiKey = options.apiKey || null;
    this.batchSize = options.batchSize || 200;
    this.winWaitMs = options.winWaitMs === undefined ? 500 : options.winWaitMs;
    this.maxRetries = options.maxRetries === undefined ? 3 : options.maxRetries;
    this.maxQueue = options.maxQueue || 10000;
    this.onPost = options.onPost || null;
    this.records = {}; // event_id → pending record (not yet sent)
    this.sent = {}; // event_id → true for the last maxSent events sent
    this.sentOrder = [];
    this.maxSent = options.maxSent || 20000;
    this.order = []; // event ids in arrival order
    this.ended = {}; // auctionId → time its auctionEnd was seen
    this.models = {}; // auctionId → {model: modelVersion of the floors group Prebid drew, skipped}
    this.modelOrder = [];
    this.maxAuctions = options.maxAuctions || 1000;
    this.timer = null;
    this.inflight = [];
    this.counts = {
      bidResponse: 0, bidRejected: 0, noBid: 0, bidTimeout: 0, bidWon: 0,
      rejectedOther: 0, posted: 0, accepted: 0, duplicates: 0, refused: 0, failedPosts: 0, dropped: 0
    };
  }

  /** Subscribe to Prebid's events (once Prebid has loaded: see attach). */
  Tracker.prototype.listen = function () {
    var self = this;
    var pbjs = this.pbjs;
    var on = function (name, fn) {
      pbjs.onEvent(name, function (args) {
        try { fn.call(self, args); } catch (e) { if (global.console) global.console.error('adbandit-prebid', e); }
      });
    };
    on('bidRequested', this.onBidRequested);
    on('bidResponse', this.onBidResponse);
    on('bidRejected', this.onBidRejected);
    on('noBid', this.onNoBid);
    on('bidTimeout', this.onBidTimeout);
    on('bidWon', this.onBidWon);
    on('auctionEnd', this.onAuctionEnd);
    if (global.addEventListener) {
      global.addEventListener('pagehide', function () { self.flush(true); });
    }
  };

  Tracker.prototype.eventId = function (auctionId, adUnitCode, bidder) {
    var id = 'pb:' + auctionId + ':' + adUnitCode + ':' + bidder;
    return id.length <= 256 ? id : id.slice(0, 256);
  };

  /** The floor (CPM) a bid request was given: Prebid's getFloor for that bidder, 0 without one. */
  Tracker.prototype.floorOf = function (bidRequest) {
    if (bidRequest && typeof bidRequest.getFloor === 'function') {
      try {
        var floor = bidRequest.getFloor({currency: this.currency, mediaType: '*', size: '*'});
        if (floor && typeof floor.floor === 'number' && isFinite(floor.floor)) return floor.floor;
      } catch (e) { /* no floor data for this auction */ }
    }
    return 0;
  };

  /** The floors group of an auction: every bid request of it carries the same floorData. */
  Tracker.prototype.onBidRequested = function (bidderRequest) {
    var bids = (bidderRequest && bidderRequest.bids) || [];
    for (var i = 0; i < bids.length; i++) {
      var data = bids[i].floorData;
      if (data && data.modelVersion && bids[i].auctionId) { this.remember(bids[i].auctionId, data); return; }
    }
  };

  /** Remember an auction's floors group (modelVersion) and whether Prebid skipped its floors:
   * a bid response's floorData has neither. */
  Tracker.prototype.remember = function (auctionId, floorData) {
    if (this.models[auctionId] === undefined) {
      this.modelOrder.push(auctionId);
      if (this.modelOrder.length > this.maxAuctions) delete this.models[this.modelOrder.shift()];
    }
    this.models[auctionId] = {model: String(floorData.modelVersion), skipped: !!floorData.skipped};
  };

  /** One bidder's answer in one auction: a filled record is never replaced by an unfilled one. */
  Tracker.prototype.record = function (kind, source, filled, floor, cpm) {
    var bidder = source.bidderCode || source.bidder;
    var adUnitCode = source.adUnitCode;
    if (!bidder || !adUnitCode || !source.auctionId) return;
    var placement = lookup(this.placements, adUnitCode);
    if (placement === null || placement === undefined) return; // an ad unit left out
    var id = this.eventId(source.auctionId, adUnitCode, bidder);
    if (this.sent[id]) return; // sent already: e.g. the noBid Prebid emits after a bidTimeout
    var old = this.records[id];
    if (old && (old.filled || !filled) && !(filled && cpm > old.revenue_cpm)) return;
    if (!old && this.order.length >= this.maxQueue) { this.counts.dropped++; return; }
    var context = {};
    var extra = this.context ? this.context(adUnitCode, source) : null;
    for (var k in extra || {}) if (Object.prototype.hasOwnProperty.call(extra, k)) context[k] = extra[k];
    context.prebid_event = kind;
    if (source.floorData && source.floorData.modelVersion) this.remember(source.auctionId, source.floorData);
    var group = this.models[source.auctionId];
    var model = group ? group.model : null;
    var mark = model ? model.lastIndexOf('#') : -1;
    if (model) context.prebid_model = (mark >= 0 ? model.slice(0, mark) : model).slice(0, 256);
    if ((group && group.skipped) || (source.floorData && source.floorData.skipped)) context.prebid_floors_skipped = true;
    var event = {
      event_id: id,
      ts: round(Date.now() / 1000, 3),
      placement: placement,
      network: lookup(this.networks, bidder),
      floor_cpm: round(Math.max(0, floor || 0), 6),
      filled: !!filled,
      revenue_cpm: filled ? round(Math.max(0, cpm), 6) : 0,
      context: context,
      decision_id: mark >= 0 ? model.slice(mark + 1) : null,
      _auction: source.auctionId,
      _request: source.requestId || source.bidId
    };
    if (!old) this.order.push(id);
    this.records[id] = event;
  };

  Tracker.prototype.onBidResponse = function (bid) {
    this.counts.bidResponse++;
    var floor = bid.floorData ? bid.floorData.floorValue : 0;
    this.record('bidResponse', bid, true, floor, bid.cpm);
  };

  Tracker.prototype.onBidRejected = function (bid) {
    if (bid.rejectionReason !== FLOOR_NOT_MET) { this.counts.rejectedOther++; return; }
    this.counts.bidRejected++;
    this.record('bidRejected', bid, false, bid.floorData ? bid.floorData.floorValue : this.floorOf(bid), 0);
  };

  Tracker.prototype.onNoBid = function (bidRequest) {
    this.counts.noBid++;
    this.record('noBid', bidRequest, false, this.floorOf(bidRequest), 0);
  };

  Tracker.prototype.onBidTimeout = function (bidRequests) {
    for (var i = 0; i < (bidRequests || []).length; i++) {
      this.counts.bidTimeout++;
      this.record('bidTimeout', bidRequests[i], false, this.floorOf(bidRequests[i]), 0);
    }
  };

  Tracker.prototype.onBidWon = function (bid) {
    this.counts.bidWon++;
    var event = this.records[this.eventId(bid.auctionId, bid.adUnitCode, bid.bidderCode || bid.bidder)];
    if (event) event.context.prebid_won = true;
  };

  Tracker.prototype.onAuctionEnd = function (auction) {
    this.ended[auction.auctionId] = Date.now();
    this.schedule(this.winWaitMs);
  };

  Tracker.prototype.schedule = function (delay) {
    var self = this;
    if (this.timer !== null) return;
    this.timer = setTimeout(function () { self.timer = null; self.flush(false); }, delay);
  };

  /** Events whose auction ended at least winWaitMs ago (all of them when ``all``), removed from the queue. */
  Tracker.prototype.take = function (all) {
    var now = Date.now();
    var ready = [];
    var kept = [];
    for (var i = 0; i < this.order.length; i++) {
      var id = this.order[i];
      var event = this.records[id];
      var ended = this.ended[event._auction];
      if (all || (ended !== undefined && now - ended >= this.winWaitMs)) {
        ready.push(event);
        delete this.records[id];
        this.sent[id] = true;
        this.sentOrder.push(id);
        if (this.sentOrder.length > this.maxSent) delete this.sent[this.sentOrder.shift()];
      } else {
        kept.push(id);
      }
    }
    this.order = kept;
    return ready;
  };

  /** Send what is ready (everything when ``all``); a promise of when the POSTs are done. */
  Tracker.prototype.flush = function (all) {
    var ready = this.take(all);
    var posts = [];
    for (var i = 0; i < ready.length; i += this.batchSize) {
      var batch = ready.slice(i, i + this.batchSize).map(function (e) {
        var out = {event_id: e.event_id, ts: e.ts, placement: e.placement, network: e.network,
                   floor_cpm: e.floor_cpm, filled: e.filled, revenue_cpm: e.revenue_cpm, context: e.context};
        if (e.decision_id) out.decision_id = e.decision_id;
        return out;
      });
      posts.push(this.post(batch, 0, !!all));
    }
    if (this.order.length) this.schedule(this.winWaitMs);
    var done = Promise.all(posts.concat(this.inflight));
    return done.then(function () { return undefined; });
  };

  Tracker.prototype.post = function (batch, attempt, unloading) {
    var self = this;
    var headers = {'Content-Type': 'application/json'};
    if (this.apiKey) headers.Authorization = 'Bearer ' + this.apiKey;
    var body = JSON.stringify(batch);
    var promise = global.fetch(this.endpoint, {
      method: 'POST', headers: headers, body: body, mode: 'cors', credentials: 'omit',
      keepalive: unloading && body.length < 60000
    }).then(function (response) {
      return response.json().catch(function () { return null; }).then(function (reply) {
        if (response.ok && reply) {
          self.counts.posted += batch.length;
          self.counts.accepted += reply.accepted || 0;
          self.counts.duplicates += reply.duplicates || 0;
          self.counts.refused += (reply.rejected || []).length;
        } else if (response.status >= 500 || response.status === 429 || response.status === 408) {
          throw new Error('HTTP ' + response.status);
        } else {
          self.counts.failedPosts++; // a 4xx: retrying would not help
        }
        if (self.onPost) self.onPost({events: batch, status: response.status, reply: reply});
      });
    }).catch(function (error) {
      if (attempt < self.maxRetries && !unloading) {
        return new Promise(function (resolve) { setTimeout(resolve, 250 * Math.pow(2, attempt)); })
          .then(function () { return self.post(batch, attempt + 1, false); });
      }
      self.counts.failedPosts++;
      if (self.onPost) self.onPost({events: batch, status: 0, error: String(error)});
    });
    this.inflight.push(promise);
    promise.then(function () {
      var i = self.inflight.indexOf(promise);
      if (i >= 0) self.inflight.splice(i, 1);
    });
    return promise;
  };

  global.adbanditPrebid = {
    version: VERSION,
    /** Start sending ``pbjs``'s auction results to the service at ``options.url``; returns the tracker
     * (``tracker.flush(true)`` sends everything now, ``tracker.counts`` counts what it saw and sent). */
    attach: function (pbjs, options) {
      var tracker = new Tracker(pbjs, options);
      if (typeof pbjs.onEvent === 'function') {
        tracker.listen();
      } else { // Prebid not loaded yet: subscribe from its command queue
        pbjs.que = pbjs.que || [];
        pbjs.que.push(function () { tracker.listen(); });
      }
      return tracker;
    }
  };
})(typeof window !== 'undefined' ? window : this);
