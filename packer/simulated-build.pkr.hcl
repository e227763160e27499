# A build that makes a Proxmox template without a hypervisor, for the tests and the simulated lab
# (fakepve). Packer runs for real: the file builder writes `template.vmid` (the artifact labwright
# reads the VMID from) and a shell-local provisioner does through the PVE API what the proxmox
# builder does: create the VM, "install" it (build_seconds of output, one line per second), and
# convert it to a template. Interrupting Packer leaves the half-made VM, as the real builder can.
#
# labwright passes the variables it owns as PKR_VAR_* environment variables (see activities/packer.ts).

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
variable "release" {
  type    = string
  default = "12"
}
variable "disk_size_gb" {
  type    = string
  default = "4"
}
variable "build_seconds" {
  type    = string
  default = "0"
}

source "file" "template" {
  content = var.vm_id
  target  = "template.vmid"
}

build {
  sources = ["source.file.template"]

  provisioner "shell-local" {
    environment_vars = [
      "PVE_URL=${var.proxmox_url}",
      "PVE_AUTH=PVEAPIToken=${var.proxmox_username}=${var.proxmox_token}",
      "VMID=${var.vm_id}",
      "NAME=${var.template_name}",
      "NODE=${var.proxmox_node}",
      "STORAGE=${var.storage_pool}",
      "DISK_GB=${var.disk_size_gb}",
      "RELEASE=${var.release}",
      "BUILD_SECONDS=${var.build_seconds}",
    ]
    script = "${path.root}/scripts/simulated-install.sh"
  }
}
