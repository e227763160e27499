/** The peers of the simulated lab, in start order. Each system adds its own starter here. */
import { ec2SimPeer } from './ec2.js';
import { fluxDrSimPeer } from './flux-dr.js';
import type { PeerStarter } from './index.js';
import { kubeSimPeer } from './kube.js';
import { proxmoxPeer } from './proxmox.js';
import { talosPeer } from './talos.js';

export const SIMULATED_PEERS: PeerStarter[] = [proxmoxPeer, ec2SimPeer, kubeSimPeer, talosPeer, fluxDrSimPeer];
