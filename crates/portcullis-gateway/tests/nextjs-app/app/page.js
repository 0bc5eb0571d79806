import { headers } from 'next/headers';
import Counter from './counter';

// Rendered per request: Next reads the nonce from the request's Content-Security-Policy
// header (set by the gateway) and puts it on every script it emits.
export const dynamic = 'force-dynamic';

export default async function Page() {
  // Reading the request headers also keeps the page dynamic.
  const h = await headers();
  const viaGateway = h.has('content-security-policy');
  return (
    <main>
      <h1>Behind Portcullis</h1>
      <p id="via-gateway">{viaGateway ? 'csp-on-request' : 'no-csp-on-request'}</p>
      <Counter />
    </main>
  );
}
