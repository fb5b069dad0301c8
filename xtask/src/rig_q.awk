# Domain d's part of Xen's debug-key q output (xl dmesg) as key=value words:
# from "General information for domain d:" up to its "NODE affinity" or
# "VCPU information" line, every key=value word except on the XenPage and
# DomPage lines; the words of the PoD line are prefixed pod_.
/General information for domain / {
    blk = (index($0, "for domain " d ":") > 0)
    next
}
/NODE affinity|VCPU information/ { blk = 0 }
blk && !/Page / {
    pod = ($0 ~ /PoD/)
    for (i = 1; i <= NF; i++)
        if ($i ~ /^[A-Za-z_]+=[^=]*$/)
            out = out (out == "" ? "" : " ") (pod ? "pod_" : "") $i
}
END { if (out != "") print out }
