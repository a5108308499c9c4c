#!/bin/sh
# kdumpsim lab: /init of the first kernel (busybox sh).
# Loads the NIC driver, brings eth0 up so the driver posts its RX buffers,
# loads the capture kernel with `kexec -p` (kexec-tools, kexec_load path),
# prints markers the host parses, waits for the host's "go" line on the serial
# console, then runs /bin/panic-helper (pvpanic pause, then sysrq 'c').
. /lib/lab/common.sh
say "FIRST INIT"
NIC=$(arg lab_nic e1000)
CAPNIC=$(arg lab_capnic 0)
DISK=$(arg lab_disk virtio)
CAPEXTRA=$(arg lab_capextra "" | tr ',' ' ')
load pvpanic
load "$NIC"
n=0
while [ ! -e /sys/class/net/eth0 ] && [ $n -lt 100 ]; do sleep 0.1; n=$((n+1)); done
ip link set eth0 up || say "ERROR ip link set eth0 up"
say "NIC UP $(cat /sys/class/net/eth0/address)"
grep -E "System RAM|Crash kernel|Kernel (code|rodata|data|bss)" /proc/iomem | while read -r line; do echo "LAB: IOMEM $line"; done
kexec -p /boot/vmlinuz --initrd=/boot/capture.gz \
    --append="console=ttyS0 irqpoll nr_cpus=1 reset_devices labrole=capture lab_nic=$NIC lab_capnic=$CAPNIC lab_disk=$DISK $CAPEXTRA" \
    || say "ERROR kexec -p failed"
say "KEXEC LOADED $(cat /sys/kernel/kexec_crash_loaded)"
say "READY"
read -r line
say "PANIC NOW"
/bin/panic-helper
say "ERROR panic-helper returned"
while true; do sleep 1000; done
