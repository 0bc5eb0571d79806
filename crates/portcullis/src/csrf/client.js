/*
 * Portcullis CSRF helper.
 *
 * Load it as a file, never inline, so it runs under a strict nonce CSP:
 *   <script src="/.well-known/portcullis/csrf.js" nonce="…"></script>
 *
 *   csrfFetch(url, options)           fetch() that adds X-CSRF-Token on POST/PUT/PATCH/DELETE
 *                                     to this origin, and on a 403 `csrf_token_invalid` gets a
 *                                     fresh token from /.well-known/portcullis/csrf and retries
 *                                     (once more if the cookie changed meanwhile).
 *   portcullisCsrf.fillForms(root)    puts the token in a hidden `csrf_token` input of every
 *                                     POST form under `root` (default: document) that submits
 *                                     to this origin. Forms are also filled when submitted.
 *
 * The token is read from the `__Host-csrf` cookie (or `csrf` in insecure development mode); it
 * is sent only to this page's own origin, never to another one.
 */
(function (global) {
  'use strict';

  var COOKIES = ['__Host-csrf', 'csrf'];
  var HEADER = 'X-CSRF-Token';
  var FIELD = 'csrf_token';
  var ENDPOINT = '/.well-known/portcullis/csrf';
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

  // One request for a fresh token at a time, shared by every caller waiting for it.
  var pending = null;
  function freshToken() {
    if (!pending) {
      pending = fetch(ENDPOINT, {
        method: 'GET',
        credentials: 'same-origin',
        cache: 'no-store',
        headers: { Accept: 'application/json' }
      })
        .then(function (res) {
          return res.ok ? res.json() : null;
        })
        .then(function (body) {
          return body && typeof body.token === 'string' ? body.token : null;
        })
        .catch(function () {
          return null;
        })
        .then(function (token) {
          pending = null;
          return token;
        });
    }
    return pending;
  }

  function isTokenRefusal(res) {
    if (res.status !== 403) return Promise.resolve(false);
    var type = res.headers.get('Content-Type') || '';
    if (type.indexOf('application/json') !== 0) return Promise.resolve(false);
    return res
      .clone()
      .json()
      .then(function (body) {
        return !!body && body.code === 'csrf_token_invalid';
      })
      .catch(function () {
        return false;
      });
  }

  function csrfFetch(input, options) {
    options = options || {};
    var isRequest = typeof Request !== 'undefined' && input instanceof Request;
    var url = isRequest ? input.url : String(input);
    var method = (options.method || (isRequest ? input.method : 'GET')).toUpperCase();
    if (!UNSAFE[method] || !sameOrigin(url)) {
      return fetch(input, options);
    }
    // A Request's body can be read once: keep a copy to clone for each retry.
    var spare = isRequest ? input.clone() : null;
    function again() {
      return isRequest ? spare.clone() : input;
    }

    function send(target, token) {
      var headers = new Headers(options.headers || (isRequest ? target.headers : undefined));
      if (token) headers.set(HEADER, token);
      var init = {};
      for (var k in options) {
        if (Object.prototype.hasOwnProperty.call(options, k)) init[k] = options[k];
      }
      init.headers = headers;
      init.method = method;
      if (!init.credentials) init.credentials = 'same-origin';
      return fetch(target, init);
    }

    // After a token refusal: a fresh token, then one retry. The retry sends the token the
    // cookie holds when it leaves, which is the endpoint's unless another response (a page's
    // image, another tab) set a newer one meanwhile; both are valid for the session, and only
    // the cookie's matches it. If such a response lands while the retry is in flight, the
    // cookie changes under it: one more try with the new cookie, and no further.
    function retry(res, sent, left) {
      return isTokenRefusal(res).then(function (refused) {
        if (!refused || left === 0) return res;
        var next = left === 2 ? freshToken() : Promise.resolve(null);
        return next.then(function (fresh) {
          var cookie = cookieToken();
          var token = cookie && cookie !== sent ? cookie : fresh;
          if (!token || token === sent) return res;
          return send(again(), token).then(function (res2) {
            return retry(res2, token, left - 1);
          });
        });
      });
    }

    var first = cookieToken();
    var start = first ? Promise.resolve(first) : freshToken();
    return start.then(function (token) {
      return send(isRequest ? again() : input, token).then(function (res) {
        return retry(res, token, 2);
      });
    });
  }

  function fillForm(form, token) {
    if (!token || !(form instanceof HTMLFormElement)) return false;
    // Attributes, not `form.method`/`form.action`: a field named "action" would shadow those.
    var method = (form.getAttribute('method') || 'GET').toUpperCase();
    if (!UNSAFE[method] || !sameOrigin(form.getAttribute('action') || global.location.href)) {
      return false;
    }
    var input = form.querySelector('input[name="' + FIELD + '"]');
    if (!input) {
      input = document.createElement('input');
      input.type = 'hidden';
      input.name = FIELD;
      form.appendChild(input);
    }
    input.value = token;
    return true;
  }

  // Fills the forms under `root` (default: document). Resolves to the number of forms filled.
  function fillForms(root) {
    root = root || document;
    var token = cookieToken();
    var ready = token ? Promise.resolve(token) : freshToken();
    return ready.then(function (t) {
      var forms = root instanceof HTMLFormElement ? [root] : root.querySelectorAll('form');
      var filled = 0;
      for (var i = 0; i < forms.length; i++) {
        if (fillForm(forms[i], t)) filled++;
      }
      return filled;
    });
  }

  // Forms added later, or whose token changed, get the current token as they are submitted.
  document.addEventListener(
    'submit',
    function (event) {
      fillForm(event.target, cookieToken());
    },
    true
  );

  global.csrfFetch = csrfFetch;
  global.portcullisCsrf = {
    fetch: csrfFetch,
    fillForms: fillForms,
    token: cookieToken,
    refresh: freshToken
  };
})(window);
