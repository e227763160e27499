/**
 * Reading PVE disk values (`local-lvm:vm-201-disk-0,discard=on,size=8G`): which disk a VM boots
 * from and how big it is. Pure, shared by the Proxmox activities and the workflows.
 */

const UNITS: Record<string, number> = { K: 1024, M: 1024 ** 2, G: 1024 ** 3, T: 1024 ** 4 };

/** Bytes in a PVE size (`8G`, `512M`, `1.5T`, `4194304`), or undefined when it is not one. */
export function parseSize(text: string): number | undefined {
  const m = /^(\d+(?:\.\d+)?)([KMGT])?$/i.exec(text.trim());
  if (!m) return undefined;
  return Math.round(Number(m[1]) * (m[2] ? UNITS[m[2].toUpperCase()]! : 1));
}

/** PVE's spelling of a size: the largest unit that divides it (`64G`, `528K`). */
export function formatSize(bytes: number): string {
  for (const unit of ['T', 'G', 'M', 'K']) {
    if (bytes > 0 && bytes % UNITS[unit]! === 0) return `${bytes / UNITS[unit]!}${unit}`;
  }
  return String(bytes);
}

/** The `size=` of a disk value in bytes; undefined when the value has none. */
export function diskSizeBytes(value: string | number | undefined): number | undefined {
  if (value === undefined) return undefined;
  for (const part of String(value).split(',')) {
    const [k, v] = part.split('=');
    if (k === 'size' && v !== undefined) return parseSize(v);
  }
  return undefined;
}

const DISK_KEY = /^(ide|sata|scsi|virtio)\d+$/;

function isCdrom(value: string | number): boolean {
  const s = String(value);
  return /(^|,)media=cdrom(,|$)/.test(s) || s.split(',')[0] === 'cdrom' || s.endsWith(':cloudinit');
}

/**
 * The disk a VM boots from: the first disk of `boot: order=...`, else the first disk in PVE's
 * order (ide, sata, scsi, virtio), CD-ROMs and cloud-init drives left out. Undefined without one.
 */
export function bootDiskKey(config: Record<string, string | number>): string | undefined {
  const isDisk = (k: string): boolean => DISK_KEY.test(k) && config[k] !== undefined && !isCdrom(config[k]);
  const order = /(?:^|,)order=([^,]+)/.exec(String(config.boot ?? ''));
  const listed = order?.[1]?.split(';').find(isDisk);
  if (listed) return listed;
  const prefixes = ['ide', 'sata', 'scsi', 'virtio'];
  const keys = Object.keys(config)
    .filter(isDisk)
    .sort((a, b) => {
      const [pa, na] = [a.replace(/\d+$/, ''), Number(/\d+$/.exec(a)![0])];
      const [pb, nb] = [b.replace(/\d+$/, ''), Number(/\d+$/.exec(b)![0])];
      return prefixes.indexOf(pa) - prefixes.indexOf(pb) || na - nb;
    });
  return keys[0];
}
