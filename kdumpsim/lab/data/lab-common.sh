# kdumpsim lab: what both /init scripts share (sourced: busybox sh). Sets up
# busybox and the pseudo file systems, and defines say (a marker line the
# host parses, with the guest's uptime), arg (a lab_* value from the kernel
# command line) and load (insmod a driver and its dependencies, in order).
/bin/busybox mkdir -p /proc /sys /dev /tmp /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
say() { echo "LAB: $* uptime=$(cut -d' ' -f1 /proc/uptime)"; }
arg() {
    for w in $(cat /proc/cmdline); do
        case "$w" in "$1"=*) echo "${w#*=}"; return;; esac
    done
    echo "$2"
}
load() {
    while read -r m; do
        [ -n "$m" ] && insmod "/lib/lab/$m" 2>/dev/null
    done < "/lib/lab/$1.list"
}
