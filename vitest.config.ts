import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    pool: 'forks',
    // Two cores: more forks only make the peers (Temporal, kube-apiserver) slower.
    maxWorkers: 2,
    globalSetup: ['test/harness/global-setup.ts'],
    testTimeout: 120_000,
    hookTimeout: 240_000,
    reporters: ['default'],
  },
});
