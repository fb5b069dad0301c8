#!/bin/sh
# /init of dom0 in the xenmem xl rig (busybox sh), written by xtask/src/rig.rs.
# Machine-readable lines start with "xmrig: " (a topic, then key=value words);
# a guest's console is forwarded as lines starting with "(dN) ".
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
export LD_LIBRARY_PATH=/lib/@TRIPLET@:/usr/lib/@TRIPLET@
XB=/usr/lib/xen-4.17/bin
LOGDIR=/var/log/xen/console

say() { echo "xmrig: $*"; }
up() { read -r u _ < /proc/uptime; echo "$u"; }
secs() { read -r u _ < /proc/uptime; echo "${u%.*}"; }
halt_dom0() { say done; sync; poweroff -f; while :; do sleep 60; done; }
fatal() { say fatal "what=\"$*\""; halt_dom0; }
# Run a command with both its streams in /tmp/out, shown as "xl: ..." lines;
# keep its status.
logged() {
    "$@" > /tmp/out 2>&1
    rc=$?
    while IFS= read -r l; do echo "xl: $l"; done < /tmp/out
    return $rc
}

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /tmp
exec < /dev/null
for m in xen-evtchn xen-privcmd xenfs xen-gntdev xen-gntalloc; do
    insmod /lib/modules/$m.ko || fatal "insmod $m"
done
mount -t xenfs xenfs /proc/xen || fatal "mount -t xenfs"
$XB/xenstored --pid-file /var/run/xenstored.pid || fatal "xenstored"
n=0
while [ ! -S /var/run/xenstored/socket ]; do
    n=$((n + 1))
    [ $n -gt 100 ] && fatal "xenstored made no socket in 10 s"
    sleep 0.1
done
logged $XB/xen-init-dom0 || fatal "xen-init-dom0"
$XB/xenconsoled --log=guest --log-dir=$LOGDIR || fatal "xenconsoled"
say ready uptime=$(up)

freemem() { $XB/xl info 2>/dev/null | awk '$1 == "free_memory" { print $3 }'; }

# xl list NAME -> key=value words
xl_list() {
    set -- $($XB/xl list "$1" 2>/dev/null | tail -n +2)
    [ -n "$5" ] && echo "name=$1 domid=$2 mem_mib=$3 vcpus=$4 state=$5 time_s=$6"
}

# Forward a console log ($2) as "(d$1) LINE" lines until the file $3 exists,
# then drain what is left and stop. Lines are written whole (awk, flushed
# per line); a line still open at a poll is joined with its rest.
forward() {
    while [ ! -e "$2" ]; do
        if [ -e "$3" ]; then
            [ -e "$2" ] || return
        fi
        sleep 0.1
    done
    exec 3< "$2"
    while :; do
        s=0
        [ -e "$3" ] && s=1
        cat <&3
        [ $s = 1 ] && break
        sleep 0.2
    done | awk -v p="(d$1) " '{ sub(/\r$/, ""); print p $0; fflush() }'
}

# Xen's own page counts of domain $1: debug key q, read back from xl dmesg.
xen_pages() {
    $XB/xl dmesg -c > /dev/null 2>&1
    $XB/xl debug-keys q
    $XB/xl dmesg -c > /tmp/q 2>&1
    f=$(awk -v d="$1" -f /etc/xmrig/q.awk /tmp/q)
    if [ -n "$f" ]; then
        say xen-pages domid=$1 $f
    else
        say xen-pages-missing domid=$1
    fi
}

reason_name() {
    case "$1" in
        0) echo poweroff ;; 1) echo reboot ;; 2) echo suspend ;; 3) echo crash ;;
        4) echo watchdog ;; 5) echo soft_reset ;; *) echo unknown ;;
    esac
}

# Check the forwarder with a fake guest log (domid 99, no domain).
selftest() {
    f=$LOGDIR/guest-xmrig-selftest.log
    rm -f /tmp/stop.99
    forward 99 $f /tmp/stop.99 &
    p=$!
    sleep 0.3
    printf 'selftest one\nselftest par' >> $f
    sleep 0.5
    printf 'tial two\n  selftest three \\ end\n' >> $f
    printf 'selftest four without newline' >> $f
    : > /tmp/stop.99
    wait $p
    say selftest domid=99 lines=4
}

next=1
# One job: NAME MEMORY MAXMEM|- TIMEOUT_S [CFG...] | CMDLINE
run_job() {
    head=${1%% | *}
    cmd=${1#* | }
    set -- $head
    name=$1 mem=$2 maxmem=$3 limit=$4
    shift 4
    cmd=${cmd//@DOMID@/$next}
    cfg=/tmp/$name.cfg
    {
        echo "name=\"$name\""
        @CFG_KERNEL@
        echo "memory=$mem"
        [ "$maxmem" = - ] || echo "maxmem=$maxmem"
        echo "vcpus=1"
        echo "cmdline=\"$cmd\""
        echo 'on_poweroff="preserve"'
        echo 'on_crash="preserve"'
        echo 'on_reboot="preserve"'
        for e in "$@"; do echo "$e"; done
    } > $cfg
    say creating name=$name predicted_domid=$next uptime=$(up)
    # Created paused, so that the toolstack's view before the guest runs
    # can be read; then unpaused.
    if ! logged $XB/xl create -p $cfg; then
        # The rover moved on if Xen made the domain before libxl failed.
        d=$(sed -n 's/.*[Dd]omain \([0-9][0-9]*\).*/\1/p' /tmp/out | tail -n 1)
        [ -n "$d" ] && next=$((d + 1))
        say create-failed name=$name next_domid=$next
        $XB/xl destroy $name > /dev/null 2>&1
        return
    fi
    id=$($XB/xl domid $name 2>/dev/null)
    if [ -z "$id" ]; then
        say create-failed name=$name next_domid=$next why=no-domid
        return
    fi
    [ "$id" = "$next" ] || say domid-mismatch name=$name predicted=$next actual=$id
    next=$((id + 1))
    rm -f /tmp/stop.$id
    forward $id $LOGDIR/guest-$name.log /tmp/stop.$id &
    fwd=$!
    say created name=$name domid=$id uptime=$(up)
    say xl-list when=created $(xl_list $name)
    logged $XB/xl unpause $name || say job-error name=$name domid=$id what=unpause
    t0=$(secs)
    timedout=
    code=-
    while :; do
        set -- $($XB/xl list -v $name 2>/dev/null | tail -n +2)
        state=$5
        code=$8
        case "$state" in
            "") say job-error name=$name domid=$id what=vanished; break ;;
            *s* | *c*) say shutdown name=$name domid=$id reason=$(reason_name $code) code=$code uptime=$(up); break ;;
        esac
        if [ $(($(secs) - t0)) -ge $limit ]; then
            say job-timeout name=$name domid=$id after_s=$limit
            timedout=1
            break
        fi
        sleep 0.3
    done
    # Let xenconsoled write the ring's last bytes, then drain and stop.
    sleep 0.5
    : > /tmp/stop.$id
    wait $fwd
    say xl-list when=shutdown $(xl_list $name)
    xen_pages $id
    logged $XB/xl destroy $name || say destroy-failed name=$name domid=$id
    say destroyed name=$name domid=$id
    say free-memory mib=$(freemem) when=after-destroy name=$name domid=$id
}

say free-memory mib=$(freemem) when=start
while IFS= read -r line <&4; do
    case "$line" in
        "") ;;
        @selftest) selftest ;;
        *) run_job "$line" ;;
    esac
done 4< /jobs
say free-memory mib=$(freemem) when=end
halt_dom0
