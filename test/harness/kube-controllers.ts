/**
 * The controllers the test kube-apiserver lacks (kubelet, Flux, VolSync, the Job controller),
 * played by writing what they would write. They live in sim/kube-controllers.ts, since the
 * simulated lab plays them too; tests import them from here as before.
 */
export * from '../../sim/kube-controllers.js';
export * from '../../sim/volume-lab.js';
