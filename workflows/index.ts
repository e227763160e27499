/** Every workflow the worker registers. One workflow per file; each file reads like its runbook. */
export {};
export { llmBurst } from './llm-burst.js';
export { talosBootstrap } from './talos-bootstrap.js';
export { gpuNodeJoin } from './gpu-node-join.js';
export { packerImageBuild } from './packer-image-build.js';
export { fluxBootstrap } from './flux-bootstrap.js';
export { drRestore } from './dr-restore.js';
