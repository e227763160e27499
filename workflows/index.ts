/** Every workflow the worker registers. One workflow per file; each file reads like its runbook. */
export {};
