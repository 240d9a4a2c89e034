#!/bin/sh
# pbxfw initramfs: mount the slot U-Boot chose (pbx.root=, read-only), give /etc and
# /var a volatile writable layer, and hand over to systemd. Anything that goes wrong
# reboots the board, so U-Boot's attempt counter can fall back to the other slot.
/bin/busybox --install -s /bin
export PATH=/bin

fail() {
    echo "pbx-initramfs: $*" >/dev/console
    echo "pbx-initramfs: rebooting so the bootloader can try the other slot" >/dev/console
    sleep 5
    reboot -f
}

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

while read -r module; do
    insmod "/lib/modules/$module" || fail "cannot load module $module"
done </etc/modules

root=""
slot=""
data=""
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        pbx.root=*) root="${arg#pbx.root=}" ;;
        pbx.slot=*) slot="${arg#pbx.slot=}" ;;
        pbx.data=*) data="${arg#pbx.data=}" ;;
    esac
done
[ -n "$root" ] || fail "no pbx.root= on the kernel command line"

# Wait up to 10 s for a block device node to appear.
wait_for() {
    tries=0
    while [ ! -b "$1" ]; do
        tries=$((tries + 1))
        [ "$tries" -le 100 ] || return 1
        sleep 0.1
    done
}

wait_for "$root" || fail "root device $root did not appear"

mount -t squashfs -o ro "$root" /newroot || fail "cannot mount $root read-only"
[ -x /newroot/sbin/init ] || fail "$root holds no /sbin/init"

# /run becomes systemd's /run: it keeps a mount that is already there.
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /newroot/run || fail "cannot mount /run"
for dir in etc var; do
    mkdir -p "/newroot/run/pbx/overlay/$dir/upper" "/newroot/run/pbx/overlay/$dir/work"
    mount -t overlay overlay \
        -o "lowerdir=/newroot/$dir,upperdir=/newroot/run/pbx/overlay/$dir/upper,workdir=/newroot/run/pbx/overlay/$dir/work" \
        "/newroot/$dir" || fail "cannot mount the volatile layer on /$dir"
done
# /data is journalled ext4: mounting replays the journal. If it cannot be mounted the
# system still boots (never brick on user data); the agent's checks report it.
if [ -n "$data" ] && ! { wait_for "$data" && mount -t ext4 -o rw,noatime,nosuid,nodev "$data" /newroot/data; }; then
    echo "pbx-initramfs: cannot mount $data on /data; booting without it" >/dev/console
fi
echo "$slot" >/newroot/run/pbx/slot
echo "$root" >/newroot/run/pbx/root-device

umount /proc /sys
mount --move /dev /newroot/dev
exec switch_root /newroot /sbin/init
