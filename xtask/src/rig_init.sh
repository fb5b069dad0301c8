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
# Centiseconds since boot (no leading zero, which $(( )) would read as octal).
cs() { read -r u _ < /proc/uptime; echo $((${u%.*} * 100 + 1${u#*.} - 100)); }
# Centiseconds as seconds with two decimals (as /proc/uptime), or tenths
# as seconds with one.
cs_s() { printf '%d.%02d' $(($1 / 100)) $(($1 % 100)); }
tenths_s() { printf '%d.%d' $(($1 / 10)) $(($1 % 10)); }
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

# xl list -l NAME -> the toolstack's own memory settings for the domain
# (b_info's max_memkb and target_memkb), key=value words
xl_list_long() {
    $XB/xl list -l "$1" 2>/dev/null | awk -F: '
        /"max_memkb"/ { v = $2; gsub(/[^0-9]/, "", v); if (m == "") m = v }
        /"target_memkb"/ { v = $2; gsub(/[^0-9]/, "", v); if (t == "") t = v }
        END { if (m != "" && t != "") print "max_memkb=" m " target_memkb=" t }'
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

# A wait for a target from the last mem-set (or from now, without one):
# sets t (now), m0 and from (where after_s counts from), end (centiseconds,
# $1 tenths from now, within the job's bound) and why (what stops it at end).
reach_window() {
    t=$(cs)
    m0=$mark
    from=mem-set
    [ -n "$m0" ] || { m0=$t; from=wait; }
    end=$((t + $1 * 10))
    why=timeout
    [ $end -gt $dl ] && { end=$dl; why=job-timeout; }
}

# Xen's own page counts of domain $1: debug key q, read back from xl dmesg.
# $2: words to put first (a step's "step=K").
xen_pages() {
    $XB/xl dmesg -c > /dev/null 2>&1
    $XB/xl debug-keys q
    $XB/xl dmesg -c > /tmp/q 2>&1
    f=$(awk -v d="$1" -f /etc/xmrig/q.awk /tmp/q)
    if [ -n "$f" ]; then
        say xen-pages ${2:+$2 }domid=$1 $f
    else
        say xen-pages-missing ${2:+$2 }domid=$1
    fi
}

# Xen's active grant entries per granting domain (debug key g, read back
# from xl dmesg), not counting the 8 reserved ones (the toolstack's console
# and xenstore rings): `gnttab-active d0=N d1=M ...` for every table Xen
# printed. $1: words to put first.
xen_grants() {
    $XB/xl dmesg -c > /dev/null 2>&1
    $XB/xl debug-keys g
    $XB/xl dmesg -c > /tmp/g 2>&1
    f=$(awk '
        /grant-table for remote d[0-9]+/ { match($0, /remote d[0-9]+/); cur = substr($0, RSTART + 8, RLENGTH - 8); seen[cur] = 1; next }
        cur != "" && /\[0x[0-9a-f]+\] / && !/\[0x00[0-7]\] / { n[cur]++ }
        END { for (d in seen) printf "d%s=%d ", d, n[d] + 0 }
    ' /tmp/g)
    say gnttab-active ${1:+$1 }$f
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

# Run "$@" bounded by what is left of the job (deadline $dl, centiseconds),
# at least 1 s.
bounded() {
    b=$(((dl - $(cs) + 99) / 100))
    [ $b -lt 1 ] && b=1
    timeout $b "$@"
}

# Text as the inside of a record's "..." value: one line, `"` as \042.
quoted() {
    q=$(printf '%s' "$1" | tr '\n\r\t' '   ')
    echo "${q//\"/\\042}"
}

# One step ($1 the kind, $2 its arguments) of job $name, domain $id; $k
# is its index. Sets ended=destroyed when the domain is gone and
# unpaused=1 when it was unpaused; $mark is the last mem-set's time.
step() {
    w="step=$k name=$name domid=$id"
    case "$1" in
        mem-set)
            t=$(cs)
            mark=$t
            if logged bounded $XB/xl mem-set $name "$2"m; then
                say mem-set $w target_mib=$2 uptime=$(cs_s $t) took_s=$(cs_s $(($(cs) - t)))
            else
                say mem-set-failed $w target_mib=$2
            fi
            ;;
        wait-mib)
            set -- $2
            reach_window $2
            while :; do
                set -- $1 $($XB/xl list $name 2>/dev/null | tail -n +2)
                now=$(cs)
                after=$(tenths_s $(((now - m0) / 10)))
                if [ "$4" = "$1" ]; then
                    say reached $w mib=$1 after_s=$after from=$from
                    break
                fi
                case "$6" in
                    "") say not-reached $w mib=$1 got_mib=- after_s=$after from=$from why=vanished; break ;;
                    *s* | *c*) say not-reached $w mib=$1 got_mib=$4 after_s=$after from=$from why=shutdown state=$6; break ;;
                esac
                if [ $now -ge $end ]; then
                    say not-reached $w mib=$1 got_mib=$4 after_s=$after from=$from why=$why
                    break
                fi
                sleep 0.2
            done
            ;;
        xen-reach)
            # Xen's count (tot_pages x 4 KiB) from XEN_DOMCTL_getdomaininfo,
            # asked every 10 ms by xenmem-peer through privcmd.
            set -- $2
            reach_window $2
            if r=$(xenmem-peer reach $id $(($1 * 1024)) 1024 $((end - t)) $m0 2> /tmp/err); then
                set -- $1 $r
                case $2 in
                    reached) say xen-reached $w mib=$1 kib=$3 after_s=$4 polls=$5 from=$from ;;
                    *)
                        [ "$6" = timeout ] || why=$6
                        say xen-not-reached $w mib=$1 kib=$3 after_s=$4 polls=$5 from=$from why=$why
                        ;;
                esac
            else
                say xen-not-reached $w mib=$1 kib=- after_s=- polls=0 from=$from why=peer-failed "what=\"$(head -n 1 /tmp/err)\""
            fi
            ;;
        wait-xs)
            set -- $2
            t=$(cs)
            end=$((t + $2 * 10))
            [ $end -gt $dl ] && end=$dl
            while :; do
                if xenstore-read "/local/domain/$id/$1" > /dev/null 2>&1; then
                    say xs-appeared $w path=$1 after_s=$(cs_s $(($(cs) - t)))
                    break
                fi
                if [ $(cs) -ge $end ]; then
                    say xs-absent $w path=$1 after_s=$(cs_s $(($(cs) - t)))
                    break
                fi
                sleep 0.1
            done
            ;;
        wait-log)
            set -- $2
            t=$(cs)
            end=$((t + $2 * 10))
            [ $end -gt $dl ] && end=$dl
            while :; do
                if grep -qF -- "$1" $LOGDIR/guest-$name.log 2> /dev/null; then
                    say log-seen $w text=$1 after_s=$(cs_s $(($(cs) - t)))
                    break
                fi
                if [ $(cs) -ge $end ]; then
                    say log-unseen $w text=$1 after_s=$(cs_s $(($(cs) - t)))
                    break
                fi
                sleep 0.2
            done
            ;;
        pages) xen_pages $id "step=$k" ;;
        grants) xen_grants "$w" ;;
        cpu)
            set -- $($XB/xl list $name 2>/dev/null | tail -n +2)
            if [ -n "$6" ]; then
                say cpu $w time_s=$6 state=$5 uptime=$(up)
            else
                say step-failed $w kind=cpu what=\"xl list $name showed nothing\"
            fi
            ;;
        sleep)
            t=$2
            [ $((t * 10)) -gt $((dl - $(cs))) ] && t=$(((dl - $(cs)) / 10))
            [ $t -gt 0 ] && sleep $(tenths_s $t)
            say slept $w s=$(tenths_s $t) uptime=$(up)
            ;;
        peer)
            # The peer's side of an exchange: each line it prints is a
            # record (its first word the kind).
            set -- $2
            t=$(cs)
            end=$((t + $2 * 10))
            [ $end -gt $dl ] && end=$dl
            b=$(((end - t + 99) / 100))
            [ $b -lt 1 ] && b=1
            # `timeout` is the backstop for a peer stuck in a system call;
            # 2 s past its own deadline, so that a peer that gave up still
            # prints its records.
            timeout $((b + 2)) xenmem-peer $1 $id $b > /tmp/peer.out 2> /tmp/err
            st=$?
            while read -r kind rest; do
                say $kind $w $rest
            done < /tmp/peer.out
            say peer-exit $w command=$1 status=$st took_s=$(cs_s $(($(cs) - t))) what=\"$(quoted "$(head -n 3 /tmp/err)")\"
            ;;
        xs-read)
            if v=$(bounded xenstore-read "/local/domain/$id/$2" 2> /tmp/err); then
                say xs $w path=$2 value=\"$(quoted "$v")\"
            else
                say xs-error $w path=$2 what=\"$(quoted "$(cat /tmp/err)")\"
            fi
            ;;
        xs-write)
            p=${2%%=*}
            v=${2#*=}
            ok=yes
            # `--`: a value such as -5 is not an option.
            logged bounded xenstore-write -- "/local/domain/$id/$p" "$v" || ok=no
            say xs-write $w path=$p value=\"$v\" ok=$ok
            ;;
        shutdown | reboot)
            # xl writes control/shutdown, then waits for the guest to
            # acknowledge (clear it): up to 5 s here, then it is left
            # running (ok=pending) and killed when the job ends.
            t=$(cs)
            $XB/xl $1 $name > /tmp/req.$k 2>&1 &
            rp=$!
            while kill -0 $rp 2> /dev/null && [ $(($(cs) - t)) -lt 500 ] && [ $(cs) -lt $dl ]; do
                sleep 0.1
            done
            if kill -0 $rp 2> /dev/null; then
                ok=pending
                reqs="$reqs $rp"
            else
                ok=yes
                wait $rp || ok=no
                while IFS= read -r l; do echo "xl: $l"; done < /tmp/req.$k
            fi
            say $1-requested $w ok=$ok took_s=$(cs_s $(($(cs) - t))) uptime=$(cs_s $t)
            ;;
        destroy)
            ok=yes
            logged bounded $XB/xl destroy $name || ok=no
            [ $ok = yes ] && ended=destroyed
            say destroyed-early $w ok=$ok uptime=$(up)
            ;;
        unpause)
            ok=yes
            logged bounded $XB/xl unpause $name || ok=no
            unpaused=1
            say unpaused $w ok=$ok uptime=$(up)
            ;;
        *) say step-failed $w kind=$1 what=unknown ;;
    esac
}

# Stop the shutdown/reboot requests still waiting for the guest.
end_requests() {
    [ -n "$reqs" ] || return
    for p in $reqs; do
        kill $p 2> /dev/null && say request-stopped name=$name domid=$id pid=$p
        wait $p
    done
    reqs=
}

# The steps of job $name from file $1, one "KIND [ARGS]" line each.
run_steps() {
    k=0
    mark=
    while IFS= read -r st <&5; do
        kind=${st%% *}
        arg=
        [ "$kind" = "$st" ] || arg=${st#* }
        if [ -n "$ended" ]; then
            say step-skipped step=$k name=$name domid=$id kind=$kind why=$ended
        elif [ $(cs) -ge $dl ]; then
            say step-skipped step=$k name=$name domid=$id kind=$kind why=job-timeout
        else
            step "$kind" "$arg"
        fi
        k=$((k + 1))
    done 5< "$1"
}

next=1
# One job: NAME MEMORY MAXMEM|- TIMEOUT_S [CFG...] | CMDLINE; its steps,
# if any, in /tmp/steps.NAME.
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
        linux=
        for e in "$@"; do [ "$e" = guest=linux ] && linux=1; done
        if [ -n "$linux" ]; then
            @CFG_LINUX@
        else
            @CFG_KERNEL@
        fi
        echo "memory=$mem"
        [ "$maxmem" = - ] || echo "maxmem=$maxmem"
        echo "vcpus=1"
        echo "cmdline=\"$cmd\""
        echo 'on_poweroff="preserve"'
        echo 'on_crash="preserve"'
        echo 'on_reboot="preserve"'
        for e in "$@"; do [ "$e" = guest=linux ] || echo "$e"; done
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
    say xl-list-long when=created name=$name domid=$id $(xl_list_long $name)
    steps=/tmp/steps.$name
    [ -f $steps ] || steps=
    unpaused=
    ended=
    # With an unpause step, the steps before it see the domain paused.
    if [ -z "$steps" ] || ! grep -qx unpause $steps; then
        logged $XB/xl unpause $name || say job-error name=$name domid=$id what=unpause
        unpaused=1
    fi
    t0=$(secs)
    dl=$(($(cs) + limit * 100))
    reqs=
    if [ -n "$steps" ]; then
        run_steps $steps
        # Not if the steps used up the job's time: it then times out.
        if [ -z "$unpaused" ] && [ -z "$ended" ] && [ $(cs) -lt $dl ]; then
            logged $XB/xl unpause $name || say job-error name=$name domid=$id what=unpause
            say unpaused name=$name domid=$id when=after-steps uptime=$(up)
        fi
    fi
    if [ -n "$ended" ]; then
        end_requests
        sleep 0.5
        : > /tmp/stop.$id
        wait $fwd
        say free-memory mib=$(freemem) when=after-destroy name=$name domid=$id
        return
    fi
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
    end_requests
    logged $XB/xl destroy $name || say destroy-failed name=$name domid=$id
    say destroyed name=$name domid=$id
    say free-memory mib=$(freemem) when=after-destroy name=$name domid=$id
}

# Each job's "+ STEP" lines (they follow its line) into /tmp/steps.NAME.
job=
while IFS= read -r line; do
    case "$line" in
        "+ "*) echo "${line#+ }" >> /tmp/steps.$job ;;
        "" | @*) ;;
        *) job=${line%% *} ;;
    esac
done < /jobs

say free-memory mib=$(freemem) when=start
while IFS= read -r line <&4; do
    case "$line" in
        "" | "+ "*) ;;
        @selftest) selftest ;;
        *) run_job "$line" ;;
    esac
done 4< /jobs
say free-memory mib=$(freemem) when=end
halt_dom0
