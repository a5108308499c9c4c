/*
 * panic-helper: the first kernel's trigger for one lab kdump cycle.
 *
 * 1. Writes 1 (PVPANIC_PANICKED) to the pvpanic I/O port 0x505, so that QEMU,
 *    started with `-device pvpanic -action panic=pause`, pauses the guest
 *    right here and the host can take the "truth" RAM image
 *    (QEMU docs/specs/pvpanic.rst: bit 0 = guest panicked, ISA port 0x505).
 * 2. After the host's `cont`, writes 'c' to /proc/sysrq-trigger, which makes
 *    the kernel crash (drivers/tty/sysrq.c sysrq_handle_crash -> panic())
 *    and, with a capture kernel loaded by `kexec -p`, jump to it
 *    (kernel/panic.c panic() -> __crash_kexec()).
 *
 * Written for kdumpsim's lab; built static so it runs from the initramfs.
 */
#include <fcntl.h>
#include <stdio.h>
#include <sys/io.h>
#include <unistd.h>

#define PVPANIC_PORT 0x505
#define PVPANIC_PANICKED 0x1

int main(void)
{
    int fd;

    if (ioperm(PVPANIC_PORT, 1, 1) != 0) {
        perror("panic-helper: ioperm");
        return 1;
    }
    fd = open("/proc/sysrq-trigger", O_WRONLY);
    if (fd < 0) {
        perror("panic-helper: open /proc/sysrq-trigger");
        return 1;
    }
    /* The VM pauses on this write until the host says `cont`. */
    outb(PVPANIC_PANICKED, PVPANIC_PORT);
    if (write(fd, "c", 1) != 1)
        perror("panic-helper: write sysrq-trigger");
    /* Not reached when the crash path works. */
    return 1;
}
