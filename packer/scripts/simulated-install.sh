#!/bin/sh
# Stands in for an OS install on Proxmox (see packer/simulated-build.pkr.hcl): creates VM $VMID
# through the PVE API, "installs" for $BUILD_SECONDS seconds, converts it to a template.
# The API is verified with $SSL_CERT_FILE when labwright sets it (the host's caFile).
set -eu

api() {
  if [ -n "${SSL_CERT_FILE:-}" ]; then
    curl -sS --fail-with-body --cacert "$SSL_CERT_FILE" -H "Authorization: $PVE_AUTH" "$@"
  else
    curl -sS --fail-with-body -H "Authorization: $PVE_AUTH" "$@"
  fi
}

# Waits for a PVE task (its UPID is in the JSON answer on stdin) and fails on its error.
wait_task() {
  upid=$(sed -n 's/.*"data": *"\(UPID:[^"]*\)".*/\1/p')
  [ -n "$upid" ] || { echo "no task id in the answer" >&2; exit 1; }
  while :; do
    status=$(api "$PVE_URL/nodes/$NODE/tasks/$upid/status")
    case "$status" in
      *'"stopped"'*)
        case "$status" in
          *'"exitstatus": "OK"'* | *'"exitstatus":"OK"'*) return 0 ;;
          *) echo "task $upid failed: $status" >&2; exit 1 ;;
        esac ;;
    esac
    sleep 0.2
  done
}

echo "creating VM $VMID ($NAME) on $NODE, ${DISK_GB}G on $STORAGE"
api -X POST "$PVE_URL/nodes/$NODE/qemu" \
  --data-urlencode "vmid=$VMID" --data-urlencode "name=$NAME" \
  --data-urlencode "scsi0=$STORAGE:$DISK_GB" --data-urlencode "net0=virtio,bridge=vmbr0" \
  --data-urlencode "agent=1" --data-urlencode "ostype=l26" | wait_task

echo "installing Debian $RELEASE"
i=0
while [ "$i" -lt "$BUILD_SECONDS" ]; do
  sleep 1
  i=$((i + 1))
  echo "install progress $i/$BUILD_SECONDS"
done

echo "converting VM $VMID to a template"
api -X POST "$PVE_URL/nodes/$NODE/qemu/$VMID/template" | wait_task
echo "template $VMID ready"
