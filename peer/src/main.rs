//! `xenmem-peer`: the dom0 side of xenmem's toolstack rig. A static Linux
//! program put into the rig's initramfs, which asks Xen itself (through
//! Linux's privcmd driver, as libxenctrl does) what the agent cannot say
//! about itself.
//!
//! ```text
//! xenmem-peer reach DOMID KIB TOLERANCE_KIB TIMEOUT_CS SINCE_CS [EVERY_MS]
//! ```
//! polls `XEN_DOMCTL_getdomaininfo` for DOMID until its `tot_pages` × 4 is
//! within TOLERANCE_KIB of KIB, at most TIMEOUT_CS centiseconds, every
//! EVERY_MS milliseconds (default 10), and prints one line:
//! `reached KIB AFTER_S POLLS` or `not-reached KIB|- AFTER_S POLLS WHY`
//! (WHY: `timeout` or `vanished`), AFTER_S counted from SINCE_CS, a
//! `/proc/uptime` reading in centiseconds (the clock of the rig's script).
//! Errors go to stderr with exit status 2.
//!
//! ```text
//! xenmem-peer grant DOMID TIMEOUT_S
//! ```
//! the dom0 side of the agent's `dom0-peer=grant`: for each round the agent
//! publishes (`data/xenmem/grant` = `ROUND PAGES FIRST_REF`), map the
//! grants as a rust-vmm vm-memory GRANT region (Linux's gntdev), check the
//! agent's pattern and write the answer, say `mapped`; unmap when the agent
//! has checked, say `unmapped`; once the agent has ended the grants, map
//! the first one again (must fail) and say how it went. One
//! `peer-grant ...` line per round on stdout.

#![deny(unsafe_op_in_unsafe_fn)]

mod evtchn;
mod foreign;
mod gntalloc;
mod grant;
mod privcmd;
mod xenbus;

use std::io;
use std::process::ExitCode;
use std::time::Duration;

use privcmd::{LockedPage, Privcmd};
use xenmem::xen::abi::{self, Domctl};

/// What one `getdomaininfo` says of a domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Info {
    tot_pages: u64,
    dying: bool,
}

/// `XEN_DOMCTL_getdomaininfo` for `domid`: `None` if there is no such
/// domain (Xen answers for the next one up, or ESRCH).
fn domain_info(pc: &Privcmd, buf: &mut LockedPage, domid: u16) -> io::Result<Option<Info>> {
    let d = Domctl::new(abi::XEN_DOMCTL_GETDOMAININFO, domid);
    let addr = buf.put(&d)?;
    // SAFETY: `addr` is a locked page holding one xen_domctl that Xen reads
    // and writes during the call.
    match unsafe { pc.hypercall(abi::op::DOMCTL as u64, [addr, 0, 0, 0, 0]) } {
        Ok(_) => {}
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Ok(None),
        Err(e) => return Err(e),
    }
    let d: Domctl = buf.get()?;
    // SAFETY: getdomaininfo fills the union's getdomaininfo member.
    let info = unsafe { d.u.getdomaininfo };
    if info.domain != domid {
        return Ok(None);
    }
    Ok(Some(Info {
        tot_pages: info.tot_pages,
        dying: info.flags & abi::XEN_DOMINF_DYING != 0,
    }))
}

/// Centiseconds since boot, as `/proc/uptime` counts them.
fn uptime_cs() -> u64 {
    uptime_ms() / 10
}

/// Milliseconds since boot (`CLOCK_BOOTTIME`, the clock of
/// `/proc/uptime`).
fn uptime_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a live timespec for the kernel to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

/// The arguments of `reach`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Reach {
    domid: u16,
    kib: u64,
    tolerance_kib: u64,
    timeout_cs: u64,
    since_cs: u64,
    every_ms: u64,
}

fn parse_reach(args: &[String]) -> Result<Reach, String> {
    let n = |i: usize, what: &str| -> Result<u64, String> {
        let a = args
            .get(i)
            .ok_or_else(|| format!("reach: missing {what}"))?;
        a.parse::<u64>()
            .map_err(|_| format!("reach: {what} `{a}` is not a number"))
    };
    if args.len() > 6 {
        return Err(format!("reach: unexpected `{}`", args[6]));
    }
    let domid = n(0, "DOMID")?;
    let domid = u16::try_from(domid)
        .ok()
        .filter(|&d| d < 0x7ff0)
        .ok_or_else(|| format!("reach: DOMID {domid} is not a domain id"))?;
    Ok(Reach {
        domid,
        kib: n(1, "KIB")?,
        tolerance_kib: n(2, "TOLERANCE_KIB")?,
        timeout_cs: n(3, "TIMEOUT_CS")?,
        since_cs: n(4, "SINCE_CS")?,
        every_ms: if args.len() > 5 {
            n(5, "EVERY_MS")?
        } else {
            10
        },
    })
}

/// After `since_cs` (centiseconds) at `now_ms`, in seconds with three
/// decimals.
fn after_s(since_cs: u64, now_ms: u64) -> String {
    let d = now_ms.saturating_sub(since_cs * 10);
    format!("{}.{:03}", d / 1000, d % 1000)
}

fn reach(r: Reach) -> io::Result<String> {
    let pc = Privcmd::open()?;
    let mut buf = LockedPage::new()?;
    let end_ms = uptime_ms() + r.timeout_cs * 10;
    let mut polls = 0u64;
    loop {
        let info = domain_info(&pc, &mut buf, r.domid)?;
        let now = uptime_ms();
        polls += 1;
        let Some(info) = info.filter(|i| !i.dying) else {
            return Ok(format!(
                "not-reached - {} {polls} vanished",
                after_s(r.since_cs, now)
            ));
        };
        let kib = info.tot_pages * 4;
        if kib.abs_diff(r.kib) < r.tolerance_kib {
            return Ok(format!(
                "reached {kib} {} {polls}",
                after_s(r.since_cs, now)
            ));
        }
        if now >= end_ms {
            return Ok(format!(
                "not-reached {kib} {} {polls} timeout",
                after_s(r.since_cs, now)
            ));
        }
        std::thread::sleep(Duration::from_millis(r.every_ms));
    }
}

/// The exchanges with the agent: `xenmem-peer CMD DOMID TIMEOUT_S`; each
/// prints its records and says whether everything went as it must.
type Exchange = fn(u16, Duration) -> std::io::Result<bool>;
const EXCHANGES: &[(&str, Exchange)] = &[
    ("grant", grant::run),
    ("grant-die", grant::die),
    ("gntalloc", gntalloc::run),
    ("gntalloc-end", gntalloc::end_mid_use),
    ("foreign", foreign::run),
    ("table", grant::table),
];

fn usage() -> ExitCode {
    eprintln!(
        "usage: xenmem-peer reach DOMID KIB TOLERANCE_KIB TIMEOUT_CS SINCE_CS [EVERY_MS]\n\
         \x20      xenmem-peer grant DOMID TIMEOUT_S\n\
         \x20      xenmem-peer gntalloc DOMID TIMEOUT_S\n\
         \x20      xenmem-peer gntalloc-end DOMID TIMEOUT_S\n\
         \x20      xenmem-peer foreign DOMID TIMEOUT_S\n\
         \x20      xenmem-peer grant-die DOMID TIMEOUT_S\n\
         \x20      xenmem-peer table DOMID TIMEOUT_S\n\
         \x20      xenmem-peer uptime-cs"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("reach") => match parse_reach(&args[1..]) {
            Ok(r) => match reach(r) {
                Ok(line) => {
                    println!("{line}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("xenmem-peer: reach: {e}");
                    ExitCode::from(2)
                }
            },
            Err(e) => {
                eprintln!("xenmem-peer: {e}");
                usage()
            }
        },
        Some(cmd) if EXCHANGES.iter().any(|(c, _)| *c == cmd) => {
            let n = |i: usize| args.get(i).and_then(|a| a.parse::<u64>().ok());
            let (Some(domid), Some(timeout)) = (n(1), n(2)) else {
                return usage();
            };
            let Ok(domid) = u16::try_from(domid) else {
                return usage();
            };
            let Some((_, run)) = EXCHANGES.iter().find(|(c, _)| *c == cmd) else {
                return usage();
            };
            match run(domid, Duration::from_secs(timeout)) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::from(1),
                Err(e) => {
                    eprintln!("xenmem-peer: {cmd}: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Some("uptime-cs") => {
            println!("{}", uptime_cs());
            ExitCode::SUCCESS
        }
        _ => usage(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn reach_arguments() {
        let r = parse_reach(&s(&["3", "131072", "1024", "12000", "500"])).unwrap();
        assert_eq!(
            r,
            Reach {
                domid: 3,
                kib: 131072,
                tolerance_kib: 1024,
                timeout_cs: 12000,
                since_cs: 500,
                every_ms: 10
            }
        );
        assert_eq!(
            parse_reach(&s(&["3", "1", "1", "1", "1", "7"]))
                .unwrap()
                .every_ms,
            7
        );
        assert!(parse_reach(&s(&["3", "1", "1", "1"])).is_err());
        assert!(parse_reach(&s(&["x", "1", "1", "1", "1"])).is_err());
        assert!(parse_reach(&s(&["70000", "1", "1", "1", "1"])).is_err());
        assert!(parse_reach(&s(&["3", "1", "1", "1", "1", "1", "1"])).is_err());
    }

    #[test]
    fn after_is_from_the_mark() {
        assert_eq!(after_s(100, 1234), "0.234");
        assert_eq!(after_s(100, 999), "0.000");
        assert_eq!(after_s(0, 61_005), "61.005");
    }

    #[test]
    fn ioctl_number_is_linuxs() {
        // 0x305000: _IOC(_IOC_NONE, 'P', 0, 48), as Linux's privcmd.h.
        assert_eq!(super::privcmd::IOCTL_PRIVCMD_HYPERCALL, 0x0030_5000);
        // 0x205004: _IOC(_IOC_NONE, 'P', 4, 32), privcmd_mmapbatch_v2.
        assert_eq!(super::privcmd::IOCTL_PRIVCMD_MMAPBATCH_V2, 0x0020_5004);
        // 0x205007: _IOC(_IOC_NONE, 'P', 7, 32), privcmd_mmap_resource.
        assert_eq!(super::privcmd::IOCTL_PRIVCMD_MMAP_RESOURCE, 0x0020_5007);
    }
}
