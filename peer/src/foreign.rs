//! `xenmem-peer foreign`: the agent's frames mapped as a rust-vmm
//! vm-memory FOREIGN region (Linux's privcmd, `IOCTL_PRIVCMD_MMAPBATCH_V2`).

use std::io;
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap, MmapXenFlags};

use crate::evtchn::Handover;
use crate::grant::{word, xen_region};
use crate::privcmd::Privcmd;

/// What the agent writes in the frames (its `FOREIGN_SEED`, src/agent.rs).
pub const SEED: u64 = 0x666f_7265_6967_6e21;
const PAGE: u64 = 4096;

/// Map `n` frames of `domid` from `gfn` as one vm-memory region.
fn map(domid: u16, gfn: u64, n: u64) -> Result<GuestMemoryMmap, String> {
    xen_region(
        "/dev/xen/privcmd",
        MmapXenFlags::FOREIGN,
        domid,
        GuestAddress(gfn * PAGE),
        n,
    )
}

fn mismatches(gm: &GuestMemoryMmap, gfn: u64, n: u64) -> io::Result<u64> {
    let mut bad = 0;
    let mut buf = [0u8; PAGE as usize];
    for j in 0..n {
        gm.read_slice(&mut buf, GuestAddress((gfn + j) * PAGE))
            .map_err(|e| io::Error::other(format!("{e}")))?;
        for (i, w) in buf.chunks_exact(8).enumerate() {
            let v = u64::from_le_bytes(w.try_into().unwrap_or([0; 8]));
            if v != word(SEED, j, i as u64) {
                bad += 1;
            }
        }
    }
    Ok(bad)
}

/// Map, read, unmap, say `1 read bad=K`; once the agent has released the
/// frames, map them again (must fail) and say how it went.
pub fn run(domid: u16, timeout: Duration) -> io::Result<bool> {
    let deadline = Instant::now() + timeout;
    let dir = format!("/local/domain/{domid}/data/xenmem");
    let ends: &[&str] = &["done", "failed"];
    let Some(mut xs) = Handover::connect(domid, &dir, deadline)? else {
        println!("peer-no-channel");
        return Ok(false);
    };
    let Some(v) = xs.wait_for(&format!("{dir}/foreign"), "1 ", &[], deadline)? else {
        println!("peer-foreign-timeout");
        return Ok(false);
    };
    let f: Vec<u64> = v
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    let (n, gfn) = match f[..] {
        [1, n, gfn] if n > 0 && n <= 4096 => (n, gfn),
        _ => {
            println!("peer-foreign-malformed value=\"{v}\"");
            return Ok(false);
        }
    };
    let t0 = Instant::now();
    let (bad, map_us) = match map(domid, gfn, n) {
        Ok(gm) => {
            let us = t0.elapsed().as_micros();
            let bad = mismatches(&gm, gfn, n)?;
            drop(gm);
            (bad, us)
        }
        Err(e) => {
            println!("peer-foreign pages={n} first_gfn={gfn:#x} map=failed what=\"{e}\"");
            xs.write(&format!("{dir}/peer"), "1 read bad=-1")?;
            return Ok(false);
        }
    };
    xs.write(&format!("{dir}/peer"), &format!("1 read bad={bad}"))?;
    let released = xs
        .wait_for(&format!("{dir}/agent"), "1 released", ends, deadline)?
        .filter(|v| !ends.contains(&v.as_str()));
    // vm-memory's answer (it maps the region; the ioctl succeeds even when
    // frames fail), then Xen's per frame, from the same ioctl made here
    // (nothing of it is read: a failed frame is not mapped, and touching
    // it would be SIGBUS).
    let vm = match map(domid, gfn, n) {
        Ok(_) => "ok",
        Err(_) => "failed",
    };
    let gfns: Vec<u64> = (gfn..gfn + n).collect();
    let errs = Privcmd::open()?.map_errors(domid, &gfns)?;
    let refused = errs.iter().filter(|&&e| e != 0).count();
    let errno = errs.iter().find(|&&e| e != 0).copied().unwrap_or(0);
    let remap = if refused == gfns.len() {
        "refused"
    } else {
        "mapped"
    };
    xs.write(&format!("{dir}/peer"), &format!("1 remap-{remap}"))?;
    println!(
        "peer-foreign pages={n} first_gfn={gfn:#x} bad_words={bad} map_us={map_us} agent_released={} vm_memory_remap={vm} frames_refused={refused} errno={errno} remap={remap}",
        if released.is_some() { "yes" } else { "no" },
    );
    let _ = xs.wait_for(&format!("{dir}/agent"), "done", &["failed"], deadline)?;
    println!("{}", xs.record());
    Ok(bad == 0 && released.is_some() && remap == "refused")
}
