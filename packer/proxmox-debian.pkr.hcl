# Debian golden template on Proxmox VE, built by the `packerImageBuild` workflow:
#
#   labwright start packerImageBuild --input debian-12.json
#
# labwright sets vm_id, template_name, proxmox_url, proxmox_username, proxmox_token,
# proxmox_node and storage_pool (PKR_VAR_* environment variables) and SSL_CERT_FILE to the
# host's caFile, so TLS is verified against the lab's CA (insecure_skip_tls_verify stays false).
#
# Written for the `proxmox` builder compiled into Debian's packer 1.6.6. That builder logs in
# with username/password only: its `token` option arrived in Packer 1.7. With 1.6.6 the inventory
# secret must hold `user@realm!...=password`-style credentials of a PVE user, not an API token;
# with the HashiCorp proxmox plugin (packer >= 1.7) switch to `token = var.proxmox_token`.
# The preseed file is served from http/ by Packer's HTTP server during the install.

variable "vm_id" {
  type = string
}
variable "template_name" {
  type = string
}
variable "proxmox_url" {
  type = string
}
variable "proxmox_username" {
  type = string
}
variable "proxmox_token" {
  type      = string
  sensitive = true
}
variable "proxmox_node" {
  type = string
}
variable "storage_pool" {
  type = string
}

variable "iso_file" {
  type    = string
  default = "local:iso/debian-12.8.0-amd64-netinst.iso"
}
variable "bridge" {
  type    = string
  default = "vmbr0"
}
variable "disk_size" {
  type    = string
  default = "16G"
}
variable "cores" {
  type    = number
  default = 2
}
variable "memory_mib" {
  type    = number
  default = 2048
}
variable "ssh_username" {
  type    = string
  default = "packer"
}
variable "ssh_password" {
  type      = string
  default   = "packer"
  sensitive = true
}

source "proxmox" "debian" {
  proxmox_url              = var.proxmox_url
  insecure_skip_tls_verify = false
  username                 = var.proxmox_username
  password                 = var.proxmox_token
  node                     = var.proxmox_node

  vm_id                = var.vm_id
  vm_name              = var.template_name
  template_name        = var.template_name
  template_description = "Debian 12, built by labwright with Packer"

  iso_file    = var.iso_file
  unmount_iso = true
  os          = "l26"
  cores       = var.cores
  memory      = var.memory_mib
  qemu_agent  = true

  scsi_controller = "virtio-scsi-single"
  disks {
    type              = "scsi"
    disk_size         = var.disk_size
    storage_pool      = var.storage_pool
    storage_pool_type = "lvm-thin"
    format            = "raw"
  }
  network_adapters {
    model  = "virtio"
    bridge = var.bridge
  }

  http_directory = "${path.root}/http"
  boot_wait      = "5s"
  boot_command = [
    "<esc><wait>",
    "auto url=http://{{ .HTTPIP }}:{{ .HTTPPort }}/debian-preseed.cfg ",
    "hostname=debian domain=lab ",
    "<enter>"
  ]

  ssh_username = var.ssh_username
  ssh_password = var.ssh_password
  ssh_timeout  = "30m"
}

build {
  sources = ["source.proxmox.debian"]

  provisioner "shell" {
    execute_command = "echo '${var.ssh_password}' | sudo -S sh -eux '{{ .Path }}'"
    inline = [
      "apt-get update",
      "apt-get install -y qemu-guest-agent cloud-init",
      "systemctl enable qemu-guest-agent",
      "cloud-init clean",
      "truncate -s 0 /etc/machine-id",
    ]
  }
}
