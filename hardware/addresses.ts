/**
 * IPv4 and PCI address arithmetic the inventory's rules and the workflows' plans share. Pure.
 */

export function ipToInt(ip: string): number {
  return ip.split('.').reduce((acc, octet) => acc * 256 + Number(octet), 0);
}

export function intToIp(n: number): string {
  return [24, 16, 8, 0].map((shift) => Math.floor(n / 2 ** shift) % 256).join('.');
}

/** The first and last address of a CIDR (its network and broadcast addresses). */
export function cidrRange(cidr: string): { start: number; end: number; prefix: number } {
  const [base, bits] = cidr.split('/');
  const prefix = Number(bits);
  const size = 2 ** (32 - prefix);
  const start = ipToInt(base!) - (ipToInt(base!) % size);
  return { start, end: start + size - 1, prefix };
}

export function cidrContains(cidr: string, ip: string): boolean {
  const { start, end } = cidrRange(cidr);
  const addr = ipToInt(ip);
  return addr >= start && addr <= end;
}

export function cidrsOverlap(a: string, b: string): boolean {
  const x = cidrRange(a);
  const y = cidrRange(b);
  return x.start <= y.end && y.start <= x.end;
}

/**
 * The network of `ip` as labwright configures it on a Talos node: a VLAN's CIDR that holds it,
 * or its /24; the gateway is the network's first host.
 */
export function networkOf(
  ip: string,
  vlans: ReadonlyArray<{ cidr: string }>,
): { prefix: number; gateway: string; cidr: string } {
  const addr = ipToInt(ip);
  for (const vlan of vlans) {
    const { start, end, prefix } = cidrRange(vlan.cidr);
    if (addr >= start && addr <= end)
      return { prefix, gateway: intToIp(start + 1), cidr: `${intToIp(start)}/${prefix}` };
  }
  const start = addr - (addr % 256);
  return { prefix: 24, gateway: intToIp(start + 1), cidr: `${intToIp(start)}/24` };
}

/** `0000:01:00.0` and `01:00.0` name the same function; `01:00` names all functions of a device. */
export function normalizePci(address: string): string {
  const a = address.toLowerCase();
  return a.length <= 7 ? `0000:${a}` : a;
}

/** The device (`0000:01:00`) of a PCI address, without its function. */
export function pciSlot(address: string): string {
  return normalizePci(address).replace(/\.\d$/, '');
}
