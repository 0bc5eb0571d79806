/*
 * A minimal CSRF helper, served by the demo app at /static/csrf.js until the gateway serves
 * its own at /.well-known/portcullis/csrf.js (portcullis::csrf::CLIENT_JS), which also
 * fetches a fresh token and retries once after a `csrf_token_invalid` refusal.
 *
 *   csrfFetch(url, options)   fetch() that adds X-CSRF-Token on POST/PUT/PATCH/DELETE to this
 *                             origin, read from the `__Host-csrf` (or, in insecure development
 *                             mode, `csrf`) cookie the gateway sets.
 */
(function (global) {
  'use strict';

  var COOKIES = ['__Host-csrf', 'csrf'];
  var UNSAFE = { POST: true, PUT: true, PATCH: true, DELETE: true };

  function cookieToken() {
    var pairs = document.cookie ? document.cookie.split(';') : [];
    for (var n = 0; n < COOKIES.length; n++) {
      for (var i = 0; i < pairs.length; i++) {
        var pair = pairs[i].trim();
        var eq = pair.indexOf('=');
        if (eq > 0 && pair.slice(0, eq) === COOKIES[n] && eq < pair.length - 1) {
          return pair.slice(eq + 1);
        }
      }
    }
    return null;
  }

  function sameOrigin(url) {
    try {
      return new URL(url, global.location.href).origin === global.location.origin;
    } catch (e) {
      return false;
    }
  }

  global.csrfFetch = function (url, options) {
    options = options || {};
    var method = (options.method || 'GET').toUpperCase();
    var init = {};
    for (var k in options) {
      if (Object.prototype.hasOwnProperty.call(options, k)) init[k] = options[k];
    }
    var headers = new Headers(options.headers || {});
    var token = cookieToken();
    // The token goes to this origin only, never to another one.
    if (UNSAFE[method] && token && sameOrigin(url)) headers.set('X-CSRF-Token', token);
    init.headers = headers;
    init.method = method;
    if (!init.credentials) init.credentials = 'same-origin';
    return fetch(url, init);
  };
})(window);
