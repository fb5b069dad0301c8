//! The on-target self-test of the adopted page tables, shared by the
//! architectures (each has a `self_test` that adopts its tables and calls
//! [`run`]).

use super::{Access, Attrs, Format, IdentityMemory, PageTable, PagingError, Tlb};
use crate::addr::{GuestPhysAddr, Order, PageCount, VirtAddr, PAGE_SIZE};
use crate::region::{RegionKind, RegionTable, ReservedUse};

/// Frames the test maps.
pub const TEST_FRAMES: u64 = 3;

fn check(ok: bool, why: &'static str) -> Result<(), PagingError> {
    if ok {
        Ok(())
    } else {
        Err(PagingError::SelfTest(why))
    }
}

/// Map RAM frames the agent owns (allocated from `table`) into the window,
/// write through the window and read back through the identity map (and the
/// other way round), check translate and the refusals, unmap, and check that
/// the window is empty again and every table frame went back to `table`.
pub fn run<F: Format, T: Tlb>(
    pt: &mut PageTable<F, IdentityMemory, T>,
    table: &mut RegionTable,
) -> Result<(), PagingError> {
    let w = pt.window();
    // The window replaces whatever the identity map had there (aarch64):
    // that must not have been RAM.
    let (start, end) = (w.start().0, w.end().0);
    check(
        !table.iter().any(|r| {
            r.kind.is_populated_ram()
                && r.range.start_addr().0 < end
                && r.range.end_addr().0 > start
        }),
        "the window hides RAM of the identity map",
    )?;
    let tables_before = table.count(RegionKind::Reserved(ReservedUse::PageTables));
    // One frame more than mapped, and the first left out: the allocator
    // hands out the lowest free frame, which may be frame 0 (x86), and the
    // identity map's address 0 is the null pointer.
    let frames = table
        .alloc_frames(
            PageCount(TEST_FRAMES + 1),
            Order::new(0).ok_or(PagingError::SelfTest("order 0"))?,
            ReservedUse::Allocated,
        )
        .map_err(|_| PagingError::SelfTest("no free RAM frames to map"))?;
    let result = exercise(pt, table, GuestPhysAddr(frames.start_addr().0 + PAGE_SIZE));
    let freed = table.free_frames(frames, ReservedUse::Allocated);
    result?;
    check(freed.is_ok(), "the test frames could not be freed")?;
    check(
        table.count(RegionKind::Reserved(ReservedUse::PageTables)) == tables_before,
        "unmapping did not free the page tables it had created",
    )
}

fn exercise<F: Format, T: Tlb>(
    pt: &mut PageTable<F, IdentityMemory, T>,
    table: &mut RegionTable,
    pa: GuestPhysAddr,
) -> Result<(), PagingError> {
    let w = pt.window();
    check(
        pt.memory().reaches(pa) && pt.memory().reaches(GuestPhysAddr(pa.0 + 2 * PAGE_SIZE)),
        "the test frames are not in the identity map",
    )?;
    // Away from the window's first page, so that no index is 0.
    let va = VirtAddr(w.start().0 + ((w.size() / 2) & !(PAGE_SIZE - 1)) + 5 * PAGE_SIZE);
    let range_va = VirtAddr(va.0 + 16 * PAGE_SIZE);
    check(
        pt.translate(va).is_none() && pt.translate(w.start()).is_none(),
        "the window is mapped before the test",
    )?;
    let ident = pa.0 as usize as *mut u64;
    let words = (PAGE_SIZE / 8) as usize;

    // Read-write, cacheable.
    pt.map_4k(va, pa, Attrs::READ_WRITE, table)?.flush();
    check(
        pt.translate(VirtAddr(va.0 + 0x123))
            == Some((GuestPhysAddr(pa.0 + 0x123), Attrs::READ_WRITE)),
        "translate disagrees with the mapping",
    )?;
    let win = va.0 as usize as *mut u64;
    for i in 0..words {
        // SAFETY: `va` maps the first test frame read-write (just mapped and
        // flushed); the frame is the test's own (allocated from the region
        // table) and nothing else refers to it.
        unsafe {
            win.add(i)
                .write_volatile(0x5a5a_0000_0000_0000 ^ (i as u64) ^ va.0)
        };
    }
    for i in 0..words {
        // SAFETY: the same frame through the identity map, which covers it
        // (checked above).
        let v = unsafe { ident.add(i).read_volatile() };
        check(
            v == 0x5a5a_0000_0000_0000 ^ (i as u64) ^ va.0,
            "a write through the window is not in the frame",
        )?;
    }
    // SAFETY: as above, through the identity map.
    unsafe { ident.add(7).write_volatile(0x1234_5678_9abc_def0) };
    // SAFETY: as above, through the window.
    let back = unsafe { win.add(7).read_volatile() };
    check(
        back == 0x1234_5678_9abc_def0,
        "a write to the frame is not seen through the window",
    )?;

    // The refusals.
    check(
        pt.map_4k(va, pa, Attrs::READ_WRITE, table).err()
            == Some(PagingError::AlreadyMapped { va, pa }),
        "mapping a mapped page again was not refused",
    )?;
    let own = VirtAddr(pa.0);
    check(
        pt.map_4k(own, pa, Attrs::READ_WRITE, table).err() == Some(PagingError::OutsideWindow(own)),
        "a mapping outside the window was not refused",
    )?;
    check(
        pt.map_4k(
            VirtAddr(va.0 + PAGE_SIZE),
            pa,
            Attrs::READ_ONLY.executable(),
            table,
        )
        .err()
            == Some(PagingError::Executable),
        "an executable mapping was not refused",
    )?;

    // A read-only range of all the test frames: each page shows its frame.
    pt.map_range(
        range_va,
        pa,
        PageCount(TEST_FRAMES),
        Attrs::READ_ONLY,
        table,
    )?
    .flush();
    for p in 0..TEST_FRAMES {
        let page = VirtAddr(range_va.0 + p * PAGE_SIZE);
        check(
            pt.translate(page).is_some_and(|(to, a)| {
                to.0 == pa.0 + p * PAGE_SIZE && a.access == Access::ReadOnly
            }),
            "translate disagrees with the range",
        )?;
        let off = (p * PAGE_SIZE / 8) as usize + 3;
        // SAFETY: test frame `p`, through the identity map.
        unsafe { ident.add(off).write_volatile(0xfeed_0000 + p) };
        // SAFETY: the same frame, mapped read-only at `page` just above;
        // only read.
        let v = unsafe { (page.0 as usize as *const u64).add(3).read_volatile() };
        check(
            v == 0xfeed_0000 + p,
            "a read-only page shows the wrong frame",
        )?;
    }

    // Unmap everything; the window is empty again.
    let (got, flush) = pt.unmap_4k(va, table)?;
    flush.flush();
    check(got == pa, "unmap returned the wrong frame")?;
    pt.unmap_range(range_va, PageCount(TEST_FRAMES), table)?
        .flush();
    check(
        pt.translate(va).is_none() && pt.translate(range_va).is_none(),
        "translate still finds an unmapped page",
    )?;
    check(
        pt.unmap_4k(va, table).err() == Some(PagingError::NotMapped(va)),
        "unmapping an unmapped page was not refused",
    )?;
    xm_info!(
        "report: paging window_start={} window_end={} va={} pa={} range_pages={=u64} self_test=pass",
        w.start(),
        w.end(),
        va,
        pa,
        TEST_FRAMES
    );
    Ok(())
}
