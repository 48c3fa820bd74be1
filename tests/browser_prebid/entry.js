// The Prebid.js of the browser test: core + the Price Floors Module, from npm (no CDN).
// Test bidders register through the public pbjs.registerBidAdapter (see market.js).
import pbjs from 'prebid.js';
import 'prebid.js/modules/priceFloors';

pbjs.processQueue();
