# A template made from another with Packer's proxmox-clone builder: clone `clone_vm` (a cloud
# image template, e.g. made with `qm importdisk` from Debian's genericcloud image), give the clone
# this build's name, boot it, shut it down and convert it to a template with a cloud-init drive.
# The tests and the simulated lab (npm start) run it against the PVE peer; on a real PVE it works
# as it is, with the same API token the activities use.
#
# communicator "none": the builder does not log in to the guest (no SSH to be had against the
# peer); a template that provisions the guest uses the ssh communicator instead, as
# proxmox-debian.pkr.hcl does. `build_seconds` is a host-side step between boot and shutdown, the
# time a real provisioning run takes.
#
# labwright passes the variables it owns as PKR_VAR_* environment variables (see activities/packer.ts).

packer {
  required_version = ">= 1.8.7"
}

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

# Build inputs of the image itself: part of the build's hash.
variable "clone_vm" {
  type    = string
  default = "debian-12-genericcloud"
}
variable "cores" {
  type    = number
  default = 2
}
variable "memory_mib" {
  type    = number
  default = 2048
}
variable "build_seconds" {
  type    = string
  default = "0"
}

source "proxmox-clone" "image" {
  proxmox_url              = var.proxmox_url
  insecure_skip_tls_verify = false
  username                 = var.proxmox_username
  token                    = var.proxmox_token
  node                     = var.proxmox_node
  task_timeout             = "5m"

  clone_vm   = var.clone_vm
  full_clone = true

  vm_id                = var.vm_id
  vm_name              = var.template_name
  template_name        = var.template_name
  template_description = "built by labwright with Packer from ${var.clone_vm}"

  cores      = var.cores
  memory     = var.memory_mib
  os         = "l26"
  qemu_agent = true

  cloud_init              = true
  cloud_init_storage_pool = var.storage_pool

  communicator = "none"
}

build {
  sources = ["source.proxmox-clone.image"]

  provisioner "shell-local" {
    inline = [
      "i=0; while [ $i -lt ${var.build_seconds} ]; do sleep 1; i=$((i + 1)); echo \"provisioning $i/${var.build_seconds}\"; done",
    ]
  }
}
