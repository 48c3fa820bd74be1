// A seeded market of test bidders for the Prebid browser test (test_prebid_browser.py).
//
// Each bidder is a network running its own second-price auction among `buyers` buyers whose
// values are lognormal (median `median`, log-sd `sigma`). Asked with floor f (Prebid's
// getFloor for that bidder), it answers
//   * a timeout (probability `timeout`, per auction): its request goes to a URL that never answers;
//   * no bid (probability `nobid` in all);
//   * otherwise its clearing price: max(second value, f) when its top value clears f, else
//     its top value, which is below the floor, so Prebid's floors module rejects it.
// Revenue of the network at floor f: (1 - timeout - nobid) E[max(V2, f); V1 >= f] — the
// oracle in the Python test computes its argmax, the market's best floor per bidder.
// Answers travel as data: URLs through Prebid's own ajax, so bidders are real spec adapters.
(function (global) {
  'use strict';

  var MARKET = {
    alpha: {timeout: 0.0, nobid: 0.1, buyers: 1, median: 2.0, sigma: 0.5},
    beta: {timeout: 0.0, nobid: 0.15, buyers: 2, median: 0.8, sigma: 0.35},
    gamma: {timeout: 0.08, nobid: 0.12, buyers: 1, median: 8.0, sigma: 0.3}
  };

  // mulberry32: a small deterministic PRNG (uniform in [0, 1)).
  function mulberry32(seed) {
    var a = seed >>> 0;
    return function () {
      a = (a + 0x6D2B79F5) >>> 0;
      var t = a;
      t = Math.imul(t ^ (t >>> 15), t | 1);
      t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
      return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
    };
  }

  function Market(seed, blackhole) {
    this.random = mulberry32(seed);
    this.blackhole = blackhole;
    this.log = {bids: 0, belowFloor: 0, nobids: 0, timeouts: 0, asked: 0};
  }

  Market.prototype.normal = function () { // Box-Muller
    var u = 1 - this.random();
    var v = this.random();
    return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
  };

  /** Whether a bidder times out in this auction (for all its ad units: Prebid times out bidders). */
  Market.prototype.timesOut = function (bidder) {
    var timedOut = this.random() < MARKET[bidder].timeout;
    if (timedOut) this.log.timeouts++;
    return timedOut;
  };

  /** One bidder's answer at floor f, when it does not time out: {kind: 'nobid' | 'bid', cpm}. */
  Market.prototype.answer = function (bidder, floor) {
    var m = MARKET[bidder];
    this.log.asked++;
    if (this.random() < m.nobid / (1 - m.timeout)) { this.log.nobids++; return {kind: 'nobid'}; }
    var top = 0;
    var second = 0;
    for (var i = 0; i < m.buyers; i++) {
      var value = m.median * Math.exp(m.sigma * this.normal());
      if (value > top) { second = top; top = value; } else if (value > second) { second = value; }
    }
    var cpm = top >= floor ? Math.max(second, floor) : top;
    cpm = Math.round(cpm * 10000) / 10000;
    if (cpm < floor) this.log.belowFloor++;
    this.log.bids++;
    return {kind: 'bid', cpm: cpm};
  };

  /** A Prebid bid adapter spec for ``code`` answering from ``market``. */
  function bidderSpec(code, market) {
    return {
      code: code,
      supportedMediaTypes: ['banner'],
      isBidRequestValid: function () { return true; },
      buildRequests: function (validBidRequests) {
        if (market.timesOut(code)) {
          return [{method: 'GET', url: market.blackhole + '/' + code, options: {withCredentials: false}}];
        }
        return validBidRequests.map(function (bidRequest) {
          var floor = 0;
          if (typeof bidRequest.getFloor === 'function') {
            var f = bidRequest.getFloor({currency: 'USD', mediaType: 'banner', size: '*'});
            floor = f && typeof f.floor === 'number' ? f.floor : 0;
          }
          var answer = market.answer(code, floor);
          var bids = answer.kind === 'bid' ? [{
            requestId: bidRequest.bidId, cpm: answer.cpm, currency: 'USD', width: 300, height: 250,
            ad: '<div class="ad">' + code + ' ' + answer.cpm + '</div>', ttl: 300,
            creativeId: code + '-creative', netRevenue: true, mediaType: 'banner',
            meta: {advertiserDomains: [code + '.example']}
          }] : [];
          return {
            method: 'GET',
            url: 'data:application/json,' + encodeURIComponent(JSON.stringify({bids: bids})),
            options: {withCredentials: false}
          };
        });
      },
      interpretResponse: function (serverResponse) {
        var body = serverResponse.body;
        if (typeof body === 'string') body = JSON.parse(body);
        return (body && body.bids) || [];
      }
    };
  }

  global.testMarket = {MARKET: MARKET, Market: Market, bidderSpec: bidderSpec};
})(window);
