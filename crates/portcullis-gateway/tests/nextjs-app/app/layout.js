export const metadata = {
  title: 'Portcullis Next.js test app',
};

export default function RootLayout({ children }) {
  return (
    <html lang="en">
      <body>{children}</body>
    </html>
  );
}
