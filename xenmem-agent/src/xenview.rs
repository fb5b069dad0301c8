//! Pauses for Xen's own view of this domain.
//!
//! With `xen-view=SECS` on its command line, the agent stops at each point
//! where its region table and Xen's page count must agree, says what its
//! table accounts for —
//!
//! ```text
//! report: xen-view point=first pages=40960 max=65536 input=console-io
//! ```
//!
//! — and then waits, changing nothing, until a character arrives on its
//! serial input (or SECS seconds pass). The runner answers it only after it
//! has asked Xen itself: `CTRL-a` three times switches Xen's serial input to
//! Xen, debug key `q` dumps every domain's `nr_pages` and `max_pages`, and
//! `CTRL-a` again brings input back to this domain for the answer. The runner
//! then compares Xen's numbers with `pages` and `max`: the table against
//! Xen's own counter, not against the agent's reading of it.
//!
//! Serial input reaches the hardware domain through `CONSOLEIO_read`, and a
//! dom0less domU through its virtual PL011 (`vpl011` in its device-tree
//! node: Xen then gives the guest an `arm,sbsa-uart` node); a domain with
//! neither says `input=none` and does not wait.

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use xenmem::addr::PageCount;
use xenmem::boot::{BootInfo, Firmware};
use xenmem::xen::Hypervisor;
use xenmem::xm_error;
use xenmem::xm_info;

/// Where this domain's serial input comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Input {
    /// None: the agent reports and goes on.
    None,
    /// `CONSOLEIO_read` (the hardware domain).
    ConsoleIo,
    /// A PL011 / SBSA UART's registers at this guest-physical address.
    Pl011(u64),
}

impl Input {
    fn name(self) -> &'static str {
        match self {
            Input::None => "none",
            Input::ConsoleIo => "console-io",
            Input::Pl011(_) => "vpl011",
        }
    }
}

/// Where the agent reads the PL011's registers: its guest-physical address
/// while the boot map covers device space, then the window page
/// `map_uart` maps it at (0: no UART).
static UART_VA: AtomicU64 = AtomicU64::new(0);

/// Seconds to wait at each pause; 0: no pauses.
static WAIT_SECS: AtomicU32 = AtomicU32::new(0);
/// The [`Input`], encoded: 0 none, 1 console-io, else a PL011 base.
static INPUT: AtomicU64 = AtomicU64::new(0);

/// The highest PL011 base the agent reaches: the Arm boot page tables map
/// `0..0x3800_0000` as device memory (see `arch::aarch64::mmu`).
const DEVICE_WINDOW_END: u64 = 0x3800_0000;

/// Turn the pauses on: wait up to `secs` at each, reading `input`.
pub fn enable(secs: u32, input: Input) {
    INPUT.store(
        match input {
            Input::None => 0,
            Input::ConsoleIo => 1,
            Input::Pl011(b) => b,
        },
        Ordering::Relaxed,
    );
    if let Input::Pl011(b) = input {
        UART_VA.store(b, Ordering::Relaxed);
    }
    WAIT_SECS.store(secs, Ordering::Relaxed);
}

/// The mapping window the agent's [`VaSpace`](xenmem::mapping::VaSpace)s
/// hand out: `pt`'s, less its last page while `map_uart` keeps the UART
/// there.
pub fn window(pt: &impl xenmem::mapping::MapTarget) -> xenmem::paging::Window {
    let w = pt.window();
    if UART_VA.load(Ordering::Relaxed) == w.end().0.wrapping_sub(xenmem::addr::PAGE_SIZE) {
        xenmem::paging::Window::new(w.start(), w.size() - xenmem::addr::PAGE_SIZE).unwrap_or(w)
    } else {
        w
    }
}

/// Once the identity map is trimmed to the guest's memory (device space
/// gone), map the vpl011's register page at the mapping window's last page
/// (device memory, read-write) and read it there; new page tables come from
/// `frames`. Nothing to do without a PL011 input.
#[cfg(target_os = "none")]
pub fn map_uart<F, M, T>(
    pt: &mut xenmem::paging::PageTable<F, M, T>,
    frames: &mut impl xenmem::paging::FrameSource,
) -> Result<(), xenmem::paging::PagingError>
where
    F: xenmem::paging::Format,
    M: xenmem::paging::TableMemory,
    T: xenmem::paging::Tlb,
{
    use xenmem::addr::{GuestPhysAddr, VirtAddr, PAGE_SIZE};
    use xenmem::paging::{Attrs, MemoryType};
    let Input::Pl011(pa) = input() else {
        return Ok(());
    };
    let va = VirtAddr(pt.window().end().0 - PAGE_SIZE);
    pt.map_4k(
        va,
        GuestPhysAddr(pa),
        Attrs::READ_WRITE.with_memory(MemoryType::Device),
        frames,
    )?
    .flush();
    UART_VA.store(va.0, Ordering::Relaxed);
    Ok(())
}

fn input() -> Input {
    match INPUT.load(Ordering::Relaxed) {
        0 => Input::None,
        1 => Input::ConsoleIo,
        b => Input::Pl011(b),
    }
}

/// Where this domain's serial input comes from: `CONSOLEIO_read` for the
/// hardware domain, else the device tree's `arm,sbsa-uart` (a vpl011) if it
/// lies where the agent maps devices, else none.
pub fn input_for(privileged: bool, boot: &BootInfo<'_>) -> Input {
    if privileged {
        return Input::ConsoleIo;
    }
    let Firmware::DeviceTree(blob) = boot.firmware else {
        return Input::None;
    };
    match sbsa_uart(blob) {
        Some(base) if base < DEVICE_WINDOW_END && base % 4096 == 0 && base != 0 => {
            Input::Pl011(base)
        }
        _ => Input::None,
    }
}

/// The `reg` base of the first node compatible with `arm,sbsa-uart` (Xen
/// writes it with two address cells, as its guest device trees have).
fn sbsa_uart(blob: &[u8]) -> Option<u64> {
    use xenmem::fdt::{Event, Fdt};
    let fdt = Fdt::new(blob).ok()?;
    // Per open node: (is an sbsa-uart, its reg base).
    let mut stack: [(bool, Option<u64>); 16] = [(false, None); 16];
    let mut depth = 0usize;
    let mut found = None;
    let _ = fdt.walk(|_, ev| {
        match ev {
            Event::Begin(_) => {
                if let Some(slot) = stack.get_mut(depth) {
                    *slot = (false, None);
                }
                depth += 1;
            }
            Event::Prop(name, value) => {
                if let Some(slot) = depth.checked_sub(1).and_then(|d| stack.get_mut(d)) {
                    if name == "compatible"
                        && value
                            .split(|&b| b == 0)
                            .any(|c| c == b"arm,sbsa-uart" || c == b"arm,pl011")
                    {
                        slot.0 = true;
                    }
                    if name == "reg" {
                        slot.1 = xenmem::fdt::read_cells(value, 2);
                    }
                }
            }
            Event::End => {
                if let Some((true, Some(base))) =
                    depth.checked_sub(1).and_then(|d| stack.get(d)).copied()
                {
                    found = found.or(Some(base));
                }
                depth = depth.saturating_sub(1);
            }
        }
        Ok(())
    });
    found
}

/// Read and drop whatever is waiting on `input`; whether anything was.
fn drain(input: Input) -> bool {
    let mut any = false;
    match input {
        Input::None => {}
        Input::ConsoleIo => {
            let mut buf = [0u8; 32];
            while let Ok(n) = xenmem::xen::console_read(&mut buf) {
                if n == 0 {
                    break;
                }
                any = true;
            }
        }
        Input::Pl011(_) => {
            let regs = UART_VA.load(Ordering::Relaxed);
            // A bounded number of reads: the FIFO is 32 deep.
            for _ in 0..64 {
                if !pl011_read(regs) {
                    break;
                }
                any = true;
            }
        }
    }
    any
}

/// One character from the PL011 whose registers the agent reaches at
/// `base` (identity-mapped device space, or the window page of
/// `map_uart`), if its receive FIFO holds one.
#[cfg(all(target_os = "none", target_arch = "aarch64"))]
fn pl011_read(base: u64) -> bool {
    const UARTDR: u64 = 0x00;
    const UARTFR: u64 = 0x18;
    const RXFE: u32 = 1 << 4;
    // SAFETY: `base` is where the agent maps a UART's register page as
    // device memory: its guest-physical address below DEVICE_WINDOW_END
    // (checked in input_for) in the boot map, or the window page map_uart
    // mapped (which the VaSpaces never hand out, see `window`); these are
    // aligned 32-bit register reads with no effect on memory.
    let fr = unsafe { ((base + UARTFR) as *const u32).read_volatile() };
    if fr & RXFE != 0 {
        return false;
    }
    // SAFETY: as above; reading UARTDR pops the character.
    let _ = unsafe { ((base + UARTDR) as *const u32).read_volatile() };
    true
}

#[cfg(not(all(target_os = "none", target_arch = "aarch64")))]
fn pl011_read(_: u64) -> bool {
    false
}

/// If pauses are on: report `xen-view point=… pages=… max=…` (what the
/// table accounts for and the maximum reservation the agent was told) and
/// wait for the runner's answer. Returns whether the pause was answered
/// (`true` too when pauses are off or there is no input to wait on).
pub fn pause(hv: &impl Hypervisor, point: &str, pages: PageCount, max: PageCount) -> bool {
    let secs = WAIT_SECS.load(Ordering::Relaxed);
    // The mutant never pauses (and so is never seen by Xen).
    if secs == 0 || crate::mutant::is("no-pause") {
        return true;
    }
    let input = input();
    // A stale answer must not release this pause.
    drain(input);
    xm_info!(
        "report: xen-view point={=str} pages={} max={} input={=str} wait={=u32}",
        point,
        pages,
        max,
        input.name(),
        secs
    );
    if input == Input::None {
        return true;
    }
    let clock = match xenmem::timer::system() {
        Ok(c) => c,
        Err(why) => {
            xm_error!("xen-view: no clock to bound the wait ({=str})", why);
            return false;
        }
    };
    let start = xenmem::timer::now();
    let limit = u64::from(secs).saturating_mul(clock.frequency());
    while xenmem::timer::now().wrapping_sub(start) < limit {
        if drain(input) {
            return true;
        }
        let _ = hv.yield_cpu();
    }
    xm_error!(
        "xen-view: no answer within {=u32} s at point {=str}",
        secs,
        point
    );
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A flattened device tree of `nodes`: (name, [(prop, value)]), each a
    /// child of the root.
    /// A node's name and its properties.
    type Node<'a> = (&'a str, &'a [(&'a str, &'a [u8])]);

    fn tree(nodes: &[Node<'_>]) -> alloc::vec::Vec<u8> {
        use alloc::vec::Vec;
        fn be(v: &mut Vec<u8>, x: u32) {
            v.extend_from_slice(&x.to_be_bytes());
        }
        fn name(v: &mut Vec<u8>, n: &str) {
            v.extend_from_slice(n.as_bytes());
            v.push(0);
            while v.len() % 4 != 0 {
                v.push(0);
            }
        }
        let mut strings: Vec<u8> = Vec::new();
        let mut st: Vec<u8> = Vec::new();
        let mut prop = |st: &mut Vec<u8>, p: &str, val: &[u8]| {
            let off = strings.len() as u32;
            strings.extend_from_slice(p.as_bytes());
            strings.push(0);
            be(st, 3);
            be(st, val.len() as u32);
            be(st, off);
            st.extend_from_slice(val);
            while st.len() % 4 != 0 {
                st.push(0);
            }
        };
        be(&mut st, 1);
        name(&mut st, "");
        prop(&mut st, "#address-cells", &2u32.to_be_bytes());
        for (n, props) in nodes {
            be(&mut st, 1);
            name(&mut st, n);
            for (p, v) in *props {
                prop(&mut st, p, v);
            }
            be(&mut st, 2);
        }
        be(&mut st, 2);
        be(&mut st, 9);
        let off_rsv = 40u32;
        let off_struct = off_rsv + 16;
        let off_strings = off_struct + st.len() as u32;
        let total = off_strings + strings.len() as u32;
        let mut b = Vec::new();
        for x in [
            0xd00d_feed,
            total,
            off_struct,
            off_strings,
            off_rsv,
            17,
            16,
            0,
            strings.len() as u32,
            st.len() as u32,
        ] {
            be(&mut b, x);
        }
        b.extend_from_slice(&[0; 16]);
        b.extend_from_slice(&st);
        b.extend_from_slice(&strings);
        b
    }

    #[test]
    fn finds_the_guest_uart() {
        let reg = [0u8, 0, 0, 0, 0x22, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10, 0];
        let uart = tree(&[
            ("memory@40000000", &[("device_type", b"memory\0")]),
            (
                "sbsa-uart@22000000",
                &[("compatible", b"arm,sbsa-uart\0"), ("reg", &reg)],
            ),
        ]);
        assert_eq!(sbsa_uart(&uart), Some(0x2200_0000));
        let other = tree(&[(
            "serial@22000000",
            &[("compatible", b"ns16550a\0"), ("reg", &reg)],
        )]);
        assert_eq!(sbsa_uart(&other), None);
        // Xen 4.17's dom0less domU tree without `vpl011` has none.
        let xen = include_bytes!("../../xenmem/tests/data/xen-4.17-arm64-domu.dtb");
        assert_eq!(sbsa_uart(xen), None);
        assert_eq!(sbsa_uart(b"not a tree"), None);
    }

    #[test]
    fn off_by_default() {
        let xen = xenmem_model::XenModel::new(16);
        assert!(pause(&xen, "start", PageCount(1), PageCount(1)));
    }
}
