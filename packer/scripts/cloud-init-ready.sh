#!/bin/sh
# Makes the installed system a template for cloud-init clones (packer/proxmox-debian.pkr.hcl):
# the guest agent for Proxmox, cloud-init with Proxmox's NoCloud drive, and no per-machine state.
set -eux
export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y qemu-guest-agent cloud-init
systemctl enable qemu-guest-agent
# Proxmox hands cloud-init its config on a NoCloud/ConfigDrive CD.
echo 'datasource_list: [ NoCloud, ConfigDrive ]' > /etc/cloud/cloud.cfg.d/99-pve.cfg
# Every clone makes its own host keys and machine id.
rm -f /etc/ssh/ssh_host_*
cloud-init clean --logs
truncate -s 0 /etc/machine-id
rm -f /var/lib/dbus/machine-id
apt-get clean
