# make_busybox_rootfs DIR: a minimal root from Debian's busybox-static (/bin/busybox
# and one symlink per applet), as the runtime tests build it.
# shellcheck shell=bash
make_busybox_rootfs() {
    local dir="$1"
    [ -x /bin/busybox ] || die "/bin/busybox is missing: apt-get install busybox-static"
    mkdir -p "$dir/bin" "$dir/etc" "$dir/tmp" "$dir/root" "$dir/proc" "$dir/dev" "$dir/sys"
    cp /bin/busybox "$dir/bin/busybox"
    local applet
    for applet in $(/bin/busybox --list); do
        [ "$applet" = busybox ] || ln -sf busybox "$dir/bin/$applet"
    done
    echo 'root:x:0:0:root:/root:/bin/sh' > "$dir/etc/passwd"
}
