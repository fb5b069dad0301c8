//! `xenmem-peer grant`: map the agent's grants with rust-vmm's vm-memory
//! (a Xen GRANT region, through Linux's `/dev/xen/gntdev`).

use std::fs::OpenOptions;
use std::io;
use std::time::{Duration, Instant};

use vm_memory::{
    Bytes, FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap, MmapRange, MmapRegion,
    MmapXenFlags,
};

use crate::evtchn::Handover;
use crate::privcmd::Privcmd;

/// `GTF_permit_access`, `GTF_readonly`, `GTF_reading`, `GTF_writing` of a
/// v1 grant entry's flags.
const GTF_PERMIT_ACCESS: u16 = 1;
const GTF_READONLY: u16 = 1 << 2;
const GTF_READING: u16 = 1 << 3;
const GTF_WRITING: u16 = 1 << 4;

/// A v1 grant entry (`struct grant_entry_v1`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Entry {
    /// `flags`.
    pub flags: u16,
    /// `domid`: who may use it.
    pub domid: u16,
    /// `frame`: the granted frame.
    pub frame: u32,
}

/// A copy of the first frames of a domain's grant table, as Xen has it.
struct Table(Vec<u8>);

impl Table {
    /// The frames holding references up to `first + n` (512 v1 entries a
    /// frame), acquired through privcmd.
    fn of(pc: &Privcmd, domid: u16, first: u32, n: u64) -> io::Result<Table> {
        let last = u64::from(first) + n.max(1) - 1;
        pc.grant_table(domid, last / 512 + 1).map(Table)
    }

    fn entry(&self, r: u32) -> Entry {
        let o = r as usize * 8;
        let b = |i: usize| self.0.get(o + i).copied().unwrap_or(0);
        Entry {
            flags: u16::from_le_bytes([b(0), b(1)]),
            domid: u16::from_le_bytes([b(2), b(3)]),
            frame: u32::from_le_bytes([b(4), b(5), b(6), b(7)]),
        }
    }
}

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
    let addr = GuestAddress(GRANT_ADDR | (u64::from(first) * PAGE));
    xen_region("/dev/xen/gntdev", MmapXenFlags::GRANT, domid, addr, n)
}

/// One vm-memory region of `n` pages at `addr` of `domid`, of Xen kind
/// `flags` (GRANT through gntdev, FOREIGN through privcmd: `dev`), as
/// vm-memory's own documentation builds one.
pub fn xen_region(
    dev: &str,
    flags: MmapXenFlags,
    domid: u16,
    addr: GuestAddress,
    n: u64,
) -> Result<GuestMemoryMmap, String> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(dev)
        .map_err(|e| format!("{dev}: {e}"))?;
    let size = usize::try_from(n * PAGE).map_err(|_| "size".to_string())?;
    let range = MmapRange::new(
        size,
        Some(FileOffset::new(f, 0)),
        addr,
        flags.bits(),
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
    let Some(mut xs) = Handover::connect(domid, &dir, deadline)? else {
        println!("peer-no-channel");
        return Ok(false);
    };
    let pc = Privcmd::open()?;
    let mut all_ok = true;
    for round in 1u64.. {
        // The agent's next round, or its end.
        let v = loop {
            if let Some(v) = xs.read(&format!("{dir}/agent"))? {
                if v == "done" {
                    println!("{}", xs.record());
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
            xs.next(deadline)?;
        };
        let f: Vec<u64> = v
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        let (n, first, gfn) = match f[..] {
            [_, n, first, gfn] if n > 0 && n <= 4096 && first <= u64::from(u32::MAX) => {
                (n, first as u32, gfn)
            }
            _ => {
                println!("peer-grant-malformed round={round} value=\"{v}\"");
                return Ok(false);
            }
        };
        let base = GuestAddress(GRANT_ADDR | (u64::from(first) * PAGE));
        // Xen's copy of the agent's table (acquire_resource): the entries
        // say what the agent said it granted.
        let table = Table::of(&pc, domid, first, n)?;
        let table_bad = (0..n)
            .filter(|&j| {
                let e = table.entry(first + j as u32);
                e.flags & (GTF_PERMIT_ACCESS | GTF_READONLY) != GTF_PERMIT_ACCESS
                    || e.domid != 0
                    || u64::from(e.frame) != gfn + j
            })
            .count();
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
        // While mapped: Xen marks every entry in use.
        let busy = Table::of(&pc, domid, first, n)?;
        let in_use = (0..n)
            .filter(|&j| busy.entry(first + j as u32).flags & (GTF_READING | GTF_WRITING) != 0)
            .count();
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
        // Ended: the entries are free again in the table.
        let after = Table::of(&pc, domid, first, n)?;
        let freed = (0..n)
            .filter(|&j| after.entry(first + j as u32).flags == 0)
            .count();
        // The first reference again, now that the agent has ended it.
        let remap = match map(domid, first, 1) {
            Ok(_) => "mapped",
            Err(_) => "refused",
        };
        // And a reference the agent never granted (past this round's).
        let never = first.saturating_add(n as u32 + 100);
        let never_granted = match map(domid, never, 1) {
            Ok(_) => "mapped",
            Err(_) => "refused",
        };
        xs.write(&format!("{dir}/peer"), &format!("{round} remap-{remap}"))?;
        let n_us = n as usize;
        let ok = bad == 0
            && checked.is_some()
            && ended.is_some()
            && remap == "refused"
            && never_granted == "refused"
            && table_bad == 0
            && in_use == n_us
            && freed == n_us;
        all_ok &= ok;
        println!(
            "peer-grant round={round} pages={n} first_ref={first} bad_words={bad} map_us={map_us} unmap_us={unmap_us} agent_checked={} agent_ended={} remap={remap} never_granted_ref={never} never_granted={never_granted} table_bad={table_bad} table_in_use={in_use} table_freed={freed}",
            if checked.is_some() { "yes" } else { "no" },
            if ended.is_some() { "yes" } else { "no" },
        );
    }
    Ok(all_ok)
}

/// `xenmem-peer grant-die`: map the agent's one round of grants, check
/// them, say `1 mapped bad=K`, and die by SIGKILL with them mapped (no
/// destructor runs; Linux tears the gntdev mappings down with the process).
pub fn die(domid: u16, timeout: Duration) -> io::Result<bool> {
    let deadline = Instant::now() + timeout;
    let dir = format!("/local/domain/{domid}/data/xenmem");
    let Some(mut xs) = Handover::connect(domid, &dir, deadline)? else {
        println!("peer-no-channel");
        return Ok(false);
    };
    let Some(v) = xs.wait_for(&format!("{dir}/grant"), "1 ", AGENT_ENDS, deadline)? else {
        println!("peer-grant-die-timeout");
        return Ok(false);
    };
    let f: Vec<u64> = v
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    let (n, first) = match f[..] {
        [1, n, first, _] if n > 0 && n <= 4096 && first <= u64::from(u32::MAX) => (n, first as u32),
        _ => {
            println!("peer-grant-die-malformed value=\"{v}\"");
            return Ok(false);
        }
    };
    let gm = map(domid, first, n).map_err(io::Error::other)?;
    let base = GuestAddress(GRANT_ADDR | (u64::from(first) * PAGE));
    let bad = mismatches(&gm, base, n, OFFER_SEED)?;
    xs.write(&format!("{dir}/peer"), &format!("1 mapped bad={bad}"))?;
    // Dies only once the agent has tried to end a grant under the mapping.
    let checked = xs
        .wait_for(&format!("{dir}/agent"), "1 checked", AGENT_ENDS, deadline)?
        .filter(|v| !AGENT_ENDS.contains(&v.as_str()));
    println!(
        "peer-grant-die pages={n} first_ref={first} bad_words={bad} agent_checked={} then=sigkill",
        if checked.is_some() { "yes" } else { "no" }
    );
    // SAFETY: raise has no memory effects; the process ends here.
    unsafe { libc::raise(libc::SIGKILL) };
    drop(gm);
    Ok(false)
}

/// `xenmem-peer table`: read the first frame of `domid`'s grant table as
/// Xen has it (acquire_resource) and count the entries past the 8
/// reserved ones that still grant anything: `peer-table granted_entries=K`.
pub fn table(domid: u16, _timeout: Duration) -> io::Result<bool> {
    let pc = Privcmd::open()?;
    let t = Table::of(&pc, domid, 0, 512)?;
    let granted = (8..512u32).filter(|&r| t.entry(r).flags != 0).count();
    println!("peer-table frames=1 granted_entries={granted}");
    Ok(true)
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
