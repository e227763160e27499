#!/bin/sh
# The last step of packer/proxmox-debian.pkr.hcl: the build user `packer` keeps no way in. Its
# password (generated for this build, never stored) is locked, the account expired (which also
# refuses SSH keys), its sudo rule and any authorized keys removed. The current SSH session ends
# with this script.
set -eux
rm -f /etc/sudoers.d/packer
rm -rf /home/packer/.ssh
passwd --lock packer
usermod --expiredate 1 --shell /usr/sbin/nologin packer
