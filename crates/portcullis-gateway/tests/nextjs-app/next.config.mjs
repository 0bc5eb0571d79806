/** @type {import('next').NextConfig} */
const nextConfig = {
  // The gateway removes the banner anyway; this keeps the upstream quiet too.
  poweredByHeader: false,
};

export default nextConfig;
