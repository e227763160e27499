// The worker image's HEALTHCHECK: healthy while the worker polls its task queue, read from its own
// Prometheus endpoint (LABWRIGHT_METRICS_ADDRESS): the SDK's temporal_num_pollers gauge above 0.
// Plain JavaScript, no tsx: it runs every interval next to the worker. Exit 0 healthy, 1 not.
const address = (process.env.LABWRIGHT_METRICS_ADDRESS ?? '127.0.0.1:9464').replace(
  /^0\.0\.0\.0:|^\[::\]:/,
  '127.0.0.1:',
);
try {
  const res = await fetch(`http://${address}/metrics`, { signal: AbortSignal.timeout(4000) });
  const text = await res.text();
  const pollers = text
    .split('\n')
    .filter((line) => line.startsWith('temporal_num_pollers'))
    .reduce((sum, line) => sum + Number(line.trim().split(/\s+/).pop()), 0);
  if (!res.ok || !(pollers > 0)) {
    console.error(`worker not polling (metrics ${res.status}, temporal_num_pollers ${pollers})`);
    process.exit(1);
  }
} catch (err) {
  console.error(`worker metrics at ${address} do not answer: ${err.message}`);
  process.exit(1);
}
