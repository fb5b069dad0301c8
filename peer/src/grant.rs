//! `xenmem-peer grant`: map the agent's grants with rust-vmm's vm-memory
//! (a Xen GRANT region, through Linux's `/dev/xen/gntdev`).

use std::fs::OpenOptions;
use std::io;
use std::time::{Duration, Instant};

use vm_memory::{
    Bytes, FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap, MmapRange, MmapRegion,
    MmapXenFlags,
};

use crate::xenbus::Xenbus;

/// What the agent writes in the pages it grants, and what dom0 writes
/// back: word `i` of page `j` is `seed ^ (j << 20) ^ i` (the agent's
/// `GRANT_OFFER_SEED` / `GRANT_ANSWER_SEED`, src/agent.rs).
pub const OFFER_SEED: u64 = 0x6772_616e_745f_6f66;
/// See [`OFFER_SEED`].
pub const ANSWER_SEED: u64 = 0x6772_616e_745f_616e;
/// vm-memory's mark of a grant address (`XEN_GRANT_ADDR_OFF`): the rest
/// is the first reference × the page size.
const GRANT_ADDR: u64 = 1 << 63;
const PAGE: u64 = 4096;
/// What the agent writes to `agent` when it stops.
const AGENT_ENDS: &[&str] = &["done", "failed"];

/// The word `i` of page `j` for `seed`.
pub fn word(seed: u64, j: u64, i: u64) -> u64 {
    seed ^ (j << 20) ^ i
}

/// Map `n` consecutive grant references of `domid` from `first` as one
/// vm-memory region.
fn map(domid: u16, first: u32, n: u64) -> Result<GuestMemoryMmap, String> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/xen/gntdev")
        .map_err(|e| format!("/dev/xen/gntdev: {e}"))?;
    let addr = GuestAddress(GRANT_ADDR | (u64::from(first) * PAGE));
    let size = usize::try_from(n * PAGE).map_err(|_| "size".to_string())?;
    let range = MmapRange::new(
        size,
        Some(FileOffset::new(f, 0)),
        addr,
        MmapXenFlags::GRANT.bits(),
        u32::from(domid),
    );
    let region = MmapRegion::<()>::from_range(range).map_err(|e| format!("{e}"))?;
    let r = GuestRegionMmap::new(region, addr).map_err(|e| format!("{e}"))?;
    GuestMemoryMmap::from_regions(vec![r]).map_err(|e| format!("{e}"))
}

/// Words of the region's `n` pages that differ from `seed`'s pattern.
fn mismatches(gm: &GuestMemoryMmap, base: GuestAddress, n: u64, seed: u64) -> io::Result<u64> {
    let mut bad = 0;
    let mut buf = [0u8; PAGE as usize];
    for j in 0..n {
        gm.read_slice(&mut buf, GuestAddress(base.0 + j * PAGE))
            .map_err(|e| io::Error::other(format!("{e}")))?;
        for (i, w) in buf.chunks_exact(8).enumerate() {
            let v = u64::from_le_bytes(w.try_into().unwrap_or([0; 8]));
            if v != word(seed, j, i as u64) {
                bad += 1;
            }
        }
    }
    Ok(bad)
}

fn fill(gm: &GuestMemoryMmap, base: GuestAddress, n: u64, seed: u64) -> io::Result<()> {
    let mut buf = [0u8; PAGE as usize];
    for j in 0..n {
        for (i, w) in buf.chunks_exact_mut(8).enumerate() {
            w.copy_from_slice(&word(seed, j, i as u64).to_le_bytes());
        }
        gm.write_slice(&buf, GuestAddress(base.0 + j * PAGE))
            .map_err(|e| io::Error::other(format!("{e}")))?;
    }
    Ok(())
}

/// Serve the agent's rounds until it says `done`; `Ok(true)` if every
/// round went as it must.
pub fn run(domid: u16, timeout: Duration) -> io::Result<bool> {
    let deadline = Instant::now() + timeout;
    let dir = format!("/local/domain/{domid}/data/xenmem");
    let mut xs = Xenbus::open()?;
    xs.watch(&format!("{dir}/grant"), "grant")?;
    xs.watch(&format!("{dir}/agent"), "agent")?;
    let mut all_ok = true;
    for round in 1u64.. {
        // The agent's next round, or its end.
        let v = loop {
            if let Some(v) = xs.read(&format!("{dir}/agent"))? {
                if v == "done" {
                    return Ok(all_ok);
                }
                if v == "failed" {
                    println!("peer-grant-agent-failed round={round}");
                    return Ok(false);
                }
            }
            if let Some(v) = xs.read(&format!("{dir}/grant"))? {
                if v.starts_with(&format!("{round} ")) {
                    break v;
                }
            }
            if Instant::now() >= deadline {
                println!("peer-grant-timeout round={round}");
                return Ok(false);
            }
            xs.next_event()?;
        };
        let f: Vec<u64> = v
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        let (n, first) = match f[..] {
            [_, n, first] if n > 0 && first <= u64::from(u32::MAX) => (n, first as u32),
            _ => {
                println!("peer-grant-malformed round={round} value=\"{v}\"");
                return Ok(false);
            }
        };
        let base = GuestAddress(GRANT_ADDR | (u64::from(first) * PAGE));
        let t0 = Instant::now();
        let gm = match map(domid, first, n) {
            Ok(g) => g,
            Err(e) => {
                println!(
                    "peer-grant round={round} pages={n} first_ref={first} map=failed what=\"{e}\""
                );
                xs.write(&format!("{dir}/peer"), &format!("{round} map-failed"))?;
                return Ok(false);
            }
        };
        let map_us = t0.elapsed().as_micros();
        let bad = mismatches(&gm, base, n, OFFER_SEED)?;
        fill(&gm, base, n, ANSWER_SEED)?;
        xs.write(&format!("{dir}/peer"), &format!("{round} mapped bad={bad}"))?;
        let checked = xs
            .wait_for(
                &format!("{dir}/agent"),
                &format!("{round} checked"),
                AGENT_ENDS,
                deadline,
            )?
            .filter(|v| !AGENT_ENDS.contains(&v.as_str()));
        let t1 = Instant::now();
        drop(gm);
        let unmap_us = t1.elapsed().as_micros();
        xs.write(&format!("{dir}/peer"), &format!("{round} unmapped"))?;
        let ended = xs
            .wait_for(
                &format!("{dir}/agent"),
                &format!("{round} ended"),
                AGENT_ENDS,
                deadline,
            )?
            .filter(|v| !AGENT_ENDS.contains(&v.as_str()));
        // The first reference again, now that the agent has ended it.
        let remap = match map(domid, first, 1) {
            Ok(_) => "mapped",
            Err(_) => "refused",
        };
        xs.write(&format!("{dir}/peer"), &format!("{round} remap-{remap}"))?;
        let ok = bad == 0 && checked.is_some() && ended.is_some() && remap == "refused";
        all_ok &= ok;
        println!(
            "peer-grant round={round} pages={n} first_ref={first} bad_words={bad} map_us={map_us} unmap_us={unmap_us} agent_checked={} agent_ended={} remap={remap}",
            if checked.is_some() { "yes" } else { "no" },
            if ended.is_some() { "yes" } else { "no" },
        );
    }
    Ok(all_ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pattern_is_the_agents() {
        // src/agent.rs: round_seed(seed, j) ^ i, with the same seeds.
        assert_eq!(word(OFFER_SEED, 0, 0), 0x6772_616e_745f_6f66);
        assert_eq!(
            word(ANSWER_SEED, 2, 5),
            0x6772_616e_745f_616e ^ (2 << 20) ^ 5
        );
    }
}
