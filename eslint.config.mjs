import tseslint from 'typescript-eslint';
import prettier from 'eslint-config-prettier';

const nodeBuiltins = [
  'fs',
  'child_process',
  'net',
  'http',
  'https',
  'crypto',
  'os',
  'path',
  'url',
  'dns',
  'tls',
  'stream',
  'util',
  'worker_threads',
  'process',
  'timers',
];

/** Workflow code runs in Temporal's deterministic sandbox: no I/O, no clocks or randomness of its own. */
const workflowSandbox = {
  'no-restricted-imports': [
    'error',
    {
      paths: nodeBuiltins.map((name) => ({ name, message: 'workflow code may not use Node built-ins' })),
      patterns: [
        { group: ['node:*'], message: 'workflow code may not use Node built-ins' },
        {
          group: ['@temporalio/*', '!@temporalio/workflow', '!@temporalio/common'],
          message: 'workflow code imports only @temporalio/workflow (and @temporalio/common types)',
        },
        {
          group: ['@aws-sdk/*', '@kubernetes/*', 'proxmox-api', 'yaml', 'undici'],
          message: 'API clients belong in activities/',
        },
        { group: ['**/activities/*', '!**/activities/*.js'], message: 'import activities as types only' },
        {
          group: ['**/lib/*', '**/workers/*', '**/clients/*', '**/sim/*', '**/hardware/load*'],
          message: 'Node-side code is not allowed in workflows',
        },
      ],
    },
  ],
  'no-restricted-globals': [
    'error',
    { name: 'setTimeout', message: 'use sleep() from @temporalio/workflow' },
    { name: 'setInterval', message: 'use sleep() from @temporalio/workflow' },
    { name: 'process', message: 'workflow code has no process' },
  ],
  'no-restricted-properties': [
    'error',
    { object: 'Math', property: 'random', message: 'use uuid4() or a seeded value from the workflow' },
  ],
};

export default tseslint.config(
  { ignores: ['node_modules/**', '.cache/**', '.labwright/**', 'test/kube/**', 'dist/**', '**/*.json'] },
  ...tseslint.configs.recommended,
  {
    languageOptions: { parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname } },
    rules: {
      '@typescript-eslint/no-floating-promises': 'error',
      '@typescript-eslint/no-misused-promises': 'error',
      '@typescript-eslint/await-thenable': 'error',
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
    },
  },
  {
    files: ['workflows/**/*.ts', 'common/**/*.ts', 'hardware/schema.ts', 'test/fixtures/workflows/**/*.ts'],
    rules: workflowSandbox,
  },
  { files: ['**/*.mjs'], ...tseslint.configs.disableTypeChecked },
  prettier,
);
