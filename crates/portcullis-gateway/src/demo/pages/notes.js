/* The notes page: lists the caller's notes and adds one with csrfFetch. */
(function () {
  'use strict';

  var who = document.getElementById('who');
  var form = document.getElementById('new-note');
  var list = document.getElementById('notes');
  var status = document.getElementById('status');
  var logout = document.getElementById('logout');

  function read(res) {
    return res
      .json()
      .catch(function () {
        return null;
      })
      .then(function (body) {
        return { res: res, body: body };
      });
  }

  // Notes are user input: they go in as text, never as markup.
  function show(notes) {
    list.replaceChildren();
    notes.forEach(function (note) {
      var li = document.createElement('li');
      li.textContent = note.text;
      list.appendChild(li);
    });
  }

  function say(text, isError) {
    status.textContent = text;
    status.className = isError ? 'error' : 'hint';
  }

  // What the gateway answered, from its JSON error body.
  function refusal(r) {
    var text = r.res.status + ' ' + ((r.body && r.body.error) || r.res.statusText);
    if (r.body && r.body.code) text += ' (' + r.body.code + ')';
    if (r.body && r.body.retry_after) text += '; retry in ' + r.body.retry_after + ' s';
    return text;
  }

  function signedOut() {
    who.replaceChildren('Not logged in. ');
    var a = document.createElement('a');
    a.href = '/login';
    a.textContent = 'Log in';
    who.appendChild(a);
  }

  function load() {
    fetch('/api/user/notes', { credentials: 'same-origin', headers: { Accept: 'application/json' } })
      .then(read)
      .then(function (r) {
        if (r.res.status === 401) return signedOut();
        if (!r.res.ok) return say(refusal(r), true);
        who.textContent = 'Logged in as ' + r.body.user + '.';
        form.hidden = false;
        logout.hidden = false;
        show(r.body.notes);
      })
      .catch(function (e) {
        say('Request failed: ' + e, true);
      });
  }

  form.addEventListener('submit', function (event) {
    event.preventDefault();
    var input = form.elements.text;
    csrfFetch('/api/user/notes', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', Accept: 'application/json' },
      body: JSON.stringify({ text: input.value })
    })
      .then(read)
      .then(function (r) {
        if (!r.res.ok) return say(refusal(r), true);
        input.value = '';
        show(r.body.notes);
        var left = r.res.headers.get('RateLimit');
        say('Saved.' + (left ? ' RateLimit: ' + left : ''), false);
      })
      .catch(function (e) {
        say('Request failed: ' + e, true);
      });
  });

  load();
})();
