#!/bin/sh
# kdumpsim lab: /init of the capture kernel (busybox sh).
# Optionally loads the NIC driver (its probe resets the device), loads the
# dump disk's driver, copies /proc/vmcore to the raw disk with dd, and prints
# markers the host parses (and timestamps) on the serial console.
. /lib/lab/common.sh
say "CAPTURE INIT"
NIC=$(arg lab_nic e1000)
CAPNIC=$(arg lab_capnic 0)
DISK=$(arg lab_disk virtio)
say "VMCORE SIZE $(stat -c %s /proc/vmcore)"
if [ "$CAPNIC" = 1 ]; then
    say "LOADING $NIC"
    load "$NIC"
    say "CAPNIC LOADED $NIC"
fi
case "$DISK" in
    virtio) say "LOADING virtio-blk"; load virtio-blk; DEV=/dev/vda ;;
    ide) say "LOADING ide"; load ide; DEV=/dev/sda ;;
    *) say "ERROR unknown disk $DISK"; DEV=/dev/null ;;
esac
n=0
while [ ! -b "$DEV" ] && [ $n -lt 300 ]; do sleep 0.1; n=$((n+1)); done
[ -b "$DEV" ] || say "ERROR no disk $DEV"
say "DUMP START $DEV"
dd if=/proc/vmcore of="$DEV" bs=1M conv=fsync
say "DUMP END rc=$?"
sync
say "CAPTURE DONE"
while true; do sleep 1000; done
