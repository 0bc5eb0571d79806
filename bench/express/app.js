'use strict';
// The Express side of bench/run.sh: the security stack a Node team reaches for — helmet 8,
// express-rate-limit 8 and csrf-csrf 4 — in front of the same `{"ok":true}` body as
// bench_upstream, configured like bench/portcullis.toml.tmpl:
//   - helmet's defaults (CSP without nonces: helmet has none);
//   - a method allowlist (GET, HEAD, POST; 405 otherwise) and a 1 MiB body limit;
//   - a global rate limit so high it never triggers, and 1 per minute on /api/limited;
//   - /api/user/**: a bearer JWT (HS256 or RS256, checked with node:crypto — no JWT package
//     in this stack) and csrf-csrf's double-submit token on unsafe methods (GET untouched).
// One Node process, as `node app.js` runs it (no cluster).
//
//   PORT=3002 BENCH_JWT_SECRET=… BENCH_CSRF_SECRET=… [BENCH_JWT_PUBLIC_KEY=PEM] node app.js

const crypto = require('node:crypto');
const express = require('express');
const helmet = require('helmet');
const { rateLimit } = require('express-rate-limit');
const { doubleCsrf } = require('csrf-csrf');
const cookieParser = require('cookie-parser');

const port = Number(process.env.PORT || 3002);
const jwtSecret = process.env.BENCH_JWT_SECRET;
const csrfSecret = process.env.BENCH_CSRF_SECRET;
const publicKey = process.env.BENCH_JWT_PUBLIC_KEY
  ? crypto.createPublicKey(process.env.BENCH_JWT_PUBLIC_KEY)
  : null;
if (!jwtSecret || !csrfSecret) {
  console.error('app.js: set BENCH_JWT_SECRET and BENCH_CSRF_SECRET');
  process.exit(2);
}
// What `portcullis token` puts in iss and aud, so one token works on every target.
const ISSUER = 'portcullis';
const BODY = { ok: true };
const ALLOWED = new Set(['GET', 'HEAD', 'POST']);

/** The claims of a valid token, or null: signature, then exp/nbf (60 s leeway), iss, aud, sub. */
function verifyJwt(token) {
  const parts = token.split('.');
  if (parts.length !== 3) return null;
  let header;
  let claims;
  try {
    header = JSON.parse(Buffer.from(parts[0], 'base64url').toString('utf8'));
    claims = JSON.parse(Buffer.from(parts[1], 'base64url').toString('utf8'));
  } catch {
    return null;
  }
  const input = `${parts[0]}.${parts[1]}`;
  const sig = Buffer.from(parts[2], 'base64url');
  let valid = false;
  if (header.alg === 'HS256') {
    const mac = crypto.createHmac('sha256', jwtSecret).update(input).digest();
    valid = mac.length === sig.length && crypto.timingSafeEqual(mac, sig);
  } else if (header.alg === 'RS256' && publicKey) {
    valid = crypto.verify('RSA-SHA256', Buffer.from(input), publicKey, sig);
  }
  if (!valid || claims === null || typeof claims !== 'object') return null;
  const now = Math.floor(Date.now() / 1000);
  if (typeof claims.exp !== 'number' || claims.exp + 60 < now) return null;
  if (claims.nbf !== undefined && (typeof claims.nbf !== 'number' || claims.nbf - 60 > now)) {
    return null;
  }
  const aud = Array.isArray(claims.aud) ? claims.aud : [claims.aud];
  if (claims.iss !== ISSUER || !aud.includes(ISSUER) || typeof claims.sub !== 'string') {
    return null;
  }
  return claims;
}

function authenticate(req, res, next) {
  const h = req.get('authorization') || '';
  const claims = h.startsWith('Bearer ') ? verifyJwt(h.slice(7)) : null;
  if (!claims) {
    res.status(401).json({ error: 'authentication required', code: 'unauthenticated' });
    return;
  }
  req.user = claims.sub;
  next();
}

const { doubleCsrfProtection, generateCsrfToken } = doubleCsrf({
  getSecret: () => csrfSecret,
  // A real app binds the token to its session id; the bench has no sessions.
  getSessionIdentifier: (req) => req.ip,
  // The default `__Host-` name needs HTTPS; the bench is plain HTTP on loopback.
  cookieName: 'csrf',
  cookieOptions: { sameSite: 'strict', secure: false, path: '/' },
});

const app = express();
app.use(helmet());
app.use((req, res, next) => {
  if (ALLOWED.has(req.method)) return next();
  res.set('Allow', 'GET, HEAD, POST').status(405).json({ error: 'method not allowed' });
});
app.use(
  rateLimit({
    windowMs: 1000,
    limit: 10_000_000,
    standardHeaders: 'draft-8',
    legacyHeaders: false,
    skip: (req) => req.path === '/api/limited',
  }),
);
app.get(
  '/api/limited',
  rateLimit({ windowMs: 60_000, limit: 1, standardHeaders: 'draft-8', legacyHeaders: false }),
  (req, res) => res.json(BODY),
);
app.use(cookieParser());
app.use(express.raw({ type: '*/*', limit: '1mb' }));
app.get('/api/csrf-token', (req, res) => res.json({ token: generateCsrfToken(req, res) }));
app.use('/api/user', authenticate, doubleCsrfProtection);
app.use((req, res) => res.json(BODY));

app.listen(port, '127.0.0.1', () => {
  console.error(`express listening on http://127.0.0.1:${port}`);
});
