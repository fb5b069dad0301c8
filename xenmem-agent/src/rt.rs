//! The unikernel runtime (feature `rt`, bare-metal targets only).
//!
//! The architecture's boot glue calls [`start`] once it has a stack, a
//! Rust-ready CPU and a [`BootInfo`]; its exception vectors call
//! [`exception`]. This module owns the defmt logger (framed lines over
//! `console_io`), the panic handler and the exit paths.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, Ordering};

use crate::agent::{ExitPath, Outcome};
use crate::arch::{imp, Verdict};
use xenmem::addr::VirtAddr;
use xenmem::boot::BootInfo;
use xenmem::logframe::LineEncoder;
use xenmem::xen::{self, Hypervisor};

/// Size of the agent's heap: a static in `.bss`, so inside the image; the
/// region table records it as `Reserved(Heap)`.
///
/// Sized from measurement: the allocator's bytes in use at their peak, read
/// through a counting wrapper (not kept in the agent) in these boots. Every
/// boot scenario peaks at start-up, in the identity-map trim's plan: 145 KiB
/// on x86_64 (dom0 of 256 MiB, with ballooning, contiguous buffers, the
/// helper domain; the xl rig's domU, and its balloon service under `xl
/// mem-set` with 512 MiB), 73 KiB on aarch64 (dom0, domU, both, the xl
/// rig), 177 KiB in aarch64 dom0's foreign and grant benchmarks. The
/// largest is 1.0 MiB, in `bench=all` on the x86_64 dom0 of 1.25 GiB and in
/// the aarch64 domU's balloon benchmark: the benchmark's own lists of 65536
/// frames for its raw-hypercall baseline (two of 512 KiB). 1.5 MiB is 1.5
/// times that (both benchmark boots pass with it) and 8 times any other
/// peak; it keeps aarch64's `.bss` (this heap and 84 KiB of boot stacks and
/// tables) within 2 MiB, past which Xen may put the device tree. Beyond it
/// the library's operations fail with their out-of-memory error and leave
/// nothing half done.
pub const HEAP_SIZE: usize = 3 << 19;

#[repr(C, align(4096))]
struct HeapSpace(UnsafeCell<[u8; HEAP_SIZE]>);

// SAFETY: handed to the allocator once, in `start`, and never touched again.
unsafe impl Sync for HeapSpace {}

static HEAP_SPACE: HeapSpace = HeapSpace(UnsafeCell::new([0; HEAP_SIZE]));

#[global_allocator]
static HEAP: linked_list_allocator::LockedHeap = linked_list_allocator::LockedHeap::empty();

/// The heap's size and the bytes allocated from it now.
pub fn heap_stats() -> (usize, usize) {
    let h = HEAP.lock();
    (h.size(), h.used())
}

/// The heap's guest-physical span (the agent runs identity-mapped).
pub fn heap_span() -> xenmem::boot::PhysSpan {
    let start = HEAP_SPACE.0.get() as usize as u64;
    xenmem::boot::PhysSpan {
        start: xenmem::addr::GuestPhysAddr(start),
        end: xenmem::addr::GuestPhysAddr(start + HEAP_SIZE as u64),
    }
}

/// Run the agent and leave the machine with its verdict. Called once by the
/// architecture's boot glue.
pub fn start(boot: &BootInfo<'_>) -> ! {
    // SAFETY: called once, before anything allocates; the space is a static
    // that nothing else uses.
    unsafe { HEAP.lock().init(HEAP_SPACE.0.get().cast::<u8>(), HEAP_SIZE) };
    // How a failure ends the run is known before the agent starts, so that a
    // panic or an exception ends a toolstack domU through Xen too (the host's
    // exit devices do not reach it). The agent parses and reports the
    // command line itself.
    if let Ok(line) = crate::cmdline::as_text(boot.cmdline) {
        let exit = crate::cmdline::Options::exit_path(line);
        EXIT_BY_SHUTDOWN.store(exit == Some(ExitPath::XenShutdown), Ordering::Relaxed);
    }
    // SAFETY: the boot glue set up the hypercall interface; the agent hands
    // the library only region tables built by `agent::build_table`, which
    // record the image, heap, stacks, boot page tables and Xen's special
    // pages as reserved, so nothing it gives back or maps over is in use.
    let hv = unsafe { xen::RealXen::new() };
    let outcome = crate::agent::run(&hv, boot, Some(heap_span()));
    finish(&hv, outcome)
}

/// Whether a failure ends the run with `SCHEDOP_shutdown` (`exit=shutdown`).
static EXIT_BY_SHUTDOWN: AtomicBool = AtomicBool::new(false);

/// End a failed run the way the command line asked (panics, exceptions).
fn fail_exit() -> ! {
    let exit = if EXIT_BY_SHUTDOWN.load(Ordering::Relaxed) {
        ExitPath::XenShutdown
    } else {
        ExitPath::Host
    };
    finish(
        // SAFETY: used for the shutdown and exit calls only (nothing is
        // given back or mapped); the hypercall interface is set up.
        &unsafe { xen::RealXen::new() },
        Outcome {
            verdict: Verdict::Fail,
            exit,
            reboot: false,
        },
    )
}

fn finish(hv: &xen::RealXen, outcome: Outcome) -> ! {
    if lost_bytes() != 0 {
        // Said on the console that lost them only if it came back; the exit
        // status below carries the failure either way.
        xm_error!(
            "console: {=usize} bytes of log output were lost",
            lost_bytes()
        );
    }
    let outcome = if lost_bytes() != 0 {
        Outcome {
            verdict: Verdict::Fail,
            ..outcome
        }
    } else {
        outcome
    };
    drain_console();
    let reason = match outcome.verdict {
        Verdict::Pass if outcome.reboot => xen::ShutdownReason::Reboot,
        Verdict::Pass => xen::ShutdownReason::Poweroff,
        Verdict::Fail => xen::ShutdownReason::Crash,
    };
    match outcome.exit {
        ExitPath::Host => {
            imp::signal_host(outcome.verdict);
            // Still running: no exit device answered (a toolstack domU). A
            // halted vCPU would look like a poweroff to Xen, so say the
            // verdict through the shutdown reason instead.
            let _ = hv.shutdown(reason);
            imp::halt()
        }
        ExitPath::XenShutdown => {
            if let Err(e) = hv.shutdown(reason) {
                xm_error!("SCHEDOP_shutdown failed: {}", e);
                imp::exit_host(Verdict::Fail);
            }
            imp::halt()
        }
    }
}

/// What an architecture's exception vector saw.
#[derive(Clone, Copy, Debug)]
pub struct ExceptionReport {
    /// The vector's name (`"#PF"`, `"sync, current EL, SPx"`, ...).
    pub vector: &'static str,
    /// The vector number (x86) or the vector-table slot (aarch64).
    pub number: u32,
    /// The error code (x86) or `ESR_EL1` (aarch64).
    pub syndrome: u64,
    /// Where the CPU was.
    pub pc: VirtAddr,
    /// The faulting address, where the architecture reports one (CR2, FAR_EL1).
    pub fault_addr: Option<VirtAddr>,
}

/// Report a CPU exception and fail the run. Never returns.
pub fn exception(r: &ExceptionReport) -> ! {
    match r.fault_addr {
        Some(a) => xm_error!(
            "exception: {=str} (vector {=u32}) syndrome={=u64:#x} pc={} fault_addr={}",
            r.vector,
            r.number,
            r.syndrome,
            r.pc,
            a
        ),
        None => xm_error!(
            "exception: {=str} (vector {=u32}) syndrome={=u64:#x} pc={}",
            r.vector,
            r.number,
            r.syndrome,
            r.pc
        ),
    }
    xm_error!("verdict: FAIL");
    fail_exit()
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    xm_error!("panic: {}", defmt::Display2Format(info));
    xm_error!("verdict: FAIL");
    fail_exit()
}

// ---- the defmt logger -------------------------------------------------------

struct LoggerState {
    encoder: defmt::Encoder,
    lines: LineEncoder,
    channel: Channel,
}

/// Where log lines go.
enum Channel {
    /// Nothing written yet: try `CONSOLEIO_write` first.
    Untried,
    /// `CONSOLEIO_write` (dom0, dom0less domUs, debug builds of Xen).
    Hypercall,
    /// The PV console ring (a toolstack domU: `CONSOLEIO_write` is EPERM on
    /// a release Xen).
    Ring(xenmem::console::ConsoleRing),
    /// Neither works: lines are counted, and the count is the exit status's
    /// business (see [`lost_bytes`]).
    Nowhere,
}

/// Bytes of log output that could not be written anywhere.
static LOST: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);

/// How many bytes of log output were lost (the ring stalled, or no console
/// at all). Zero in every healthy run.
pub fn lost_bytes() -> usize {
    LOST.load(Ordering::Relaxed)
}

/// How many times a full console ring is waited for (one `SCHEDOP_yield`
/// each) before the line is counted as lost.
const RING_WAITS: u32 = 100_000;

fn ring_notify(port: u32) -> Result<(), xen::XenError> {
    xen::evtchn_send(port)
}

fn ring_wait() -> Result<(), xen::XenError> {
    // SAFETY: only SCHEDOP_yield (nothing given back or mapped).
    unsafe { xen::RealXen::new() }.yield_cpu()
}

/// The console ring named by the HVM parameters, reached through the boot
/// identity map (which covers it: x86 maps the low 4 GiB, Arm the first
/// GiB as device memory; the start-up trim keeps it because the region table
/// records it as a populated special page).
fn find_ring() -> Option<xenmem::console::ConsoleRing> {
    // SAFETY: only HVMOP_get_param (nothing given back or mapped).
    let params = xen::RingParams::console(&unsafe { xen::RealXen::new() }).ok()??;
    let addr = usize::try_from(params.gfn.0.checked_mul(xenmem::addr::PAGE_SIZE)?).ok()?;
    if addr >= imp::paging::IDENTITY.end.0 as usize {
        return None;
    }
    let page = core::ptr::NonNull::new(addr as *mut xenmem::xen::abi::XenconsInterface)?;
    // SAFETY: the toolstack's console page, identity-mapped at its own
    // address (checked against the boot map's end above); the logger is its
    // only producer in this domain.
    Some(unsafe { xenmem::console::ConsoleRing::new(page, params.port) })
}

fn emit(channel: &mut Channel, line: &[u8]) {
    if matches!(channel, Channel::Untried | Channel::Hypercall) {
        match xen::console_write(line) {
            Ok(()) => {
                *channel = Channel::Hypercall;
                return;
            }
            Err(_) => {
                *channel = match find_ring() {
                    Some(r) => Channel::Ring(r),
                    None => Channel::Nowhere,
                }
            }
        }
    }
    match channel {
        Channel::Ring(r) => {
            // Notified once per log frame, in `release` (see `kick`).
            if let Err(e) = r.push(line, &mut ring_notify, &mut ring_wait, RING_WAITS) {
                let lost = match e {
                    xenmem::console::ConsoleError::Stalled { lost, .. } => lost,
                    _ => line.len(),
                };
                LOST.fetch_add(lost, Ordering::Relaxed);
            }
        }
        _ => {
            LOST.fetch_add(line.len(), Ordering::Relaxed);
        }
    }
}

/// Where the console goes now, for the agent's report: `hypercall`,
/// `ring`, `none` or `untried`, and the ring's virtual address.
pub fn console_channel() -> (&'static str, Option<VirtAddr>) {
    // SAFETY: read on the single vCPU outside any log statement (the agent
    // calls this between its log lines), so no borrow of the state is live.
    let s = unsafe { state() };
    match &s.channel {
        Channel::Untried => ("untried", None),
        Channel::Hypercall => ("hypercall", None),
        Channel::Ring(r) => ("ring", Some(VirtAddr(r.page_addr() as u64))),
        Channel::Nowhere => ("none", None),
    }
}

/// Give the console ring its own Normal, write-back mapping: the window's
/// pinned page ([`xenmem::paging::PageTable::map_pinned`]). Until now the
/// logger wrote it through the boot identity map, which on Arm maps the
/// first GiB (where libxc puts the ring) as Device memory: uncached writes
/// beside dom0's cached view of the same page, which real hardware does
/// not keep coherent. Table frames come from `t`. Nothing to do without a
/// ring.
pub fn console_to_window(
    t: &mut xenmem::region::RegionTable,
) -> Result<Option<VirtAddr>, xenmem::paging::PagingError> {
    let (pa, port) = {
        // SAFETY: as in `console_channel`; the borrow ends here, before
        // anything below could log.
        let s = unsafe { state() };
        let Channel::Ring(r) = &s.channel else {
            return Ok(None);
        };
        (xenmem::addr::GuestPhysAddr(r.page_addr() as u64), r.port())
    };
    let va = imp::paging::page_tables()?.map_pinned(pa, xenmem::paging::Attrs::READ_WRITE, t)?;
    let page = core::ptr::NonNull::new(va.0 as usize as *mut xenmem::xen::abi::XenconsInterface)
        .ok_or(xenmem::paging::PagingError::OutsideWindow(va))?;
    // SAFETY: as in `console_channel`.
    let s = unsafe { state() };
    // SAFETY: the same console page, now mapped read-write at `va` for as
    // long as the page tables exist (pinned: nothing unmaps it); the logger
    // stays its only producer.
    s.channel = Channel::Ring(unsafe { xenmem::console::ConsoleRing::new(page, port) });
    Ok(Some(va))
}

/// Wait (bounded) until the console daemon has read everything written to
/// the ring, so that a shutdown does not cut the last lines off.
fn drain_console() {
    // SAFETY: called on the exit path, after the last log line; nothing
    // logs concurrently on the single vCPU.
    let s = unsafe { state() };
    if let Channel::Ring(r) = &s.channel {
        let _ = r.drain(&mut ring_notify, &mut ring_wait, RING_WAITS);
    }
}

struct LoggerCell(UnsafeCell<LoggerState>);

// SAFETY: the agent runs on one vCPU with interrupts off; `TAKEN` serialises
// the only users (defmt's acquire/release bracket) within it.
unsafe impl Sync for LoggerCell {}

static TAKEN: AtomicBool = AtomicBool::new(false);
static LOGGER: LoggerCell = LoggerCell(UnsafeCell::new(LoggerState {
    encoder: defmt::Encoder::new(),
    lines: LineEncoder::new(),
    channel: Channel::Untried,
}));

/// Borrow the logger state.
///
/// # Safety
/// Only between `acquire` and `release` (or from a path that owns the logger
/// because the agent is about to exit), so that no two borrows overlap.
unsafe fn state() -> &'static mut LoggerState {
    // SAFETY: the caller guarantees exclusive use (see above).
    unsafe { &mut *LOGGER.0.get() }
}

#[defmt::global_logger]
struct ConsoleLogger;

// SAFETY: acquire/release bracket every frame; write and flush are only called
// between them, as defmt's contract requires.
unsafe impl defmt::Logger for ConsoleLogger {
    fn acquire() {
        // A log from inside a log (an exception while logging) takes the
        // logger over: the interrupted frame is cut short, and the decoder
        // resynchronises at the next frame delimiter.
        TAKEN.swap(true, Ordering::Acquire);
        // SAFETY: single vCPU; we now own the logger.
        let s = unsafe { state() };
        let LoggerState {
            encoder,
            lines,
            channel,
        } = s;
        encoder.start_frame(|b| lines.push(b, &mut |l| emit(channel, l)));
    }

    unsafe fn flush() {}

    unsafe fn release() {
        // SAFETY: called after acquire, as defmt guarantees.
        let s = unsafe { state() };
        let LoggerState {
            encoder,
            lines,
            channel,
        } = s;
        let mut sink = |l: &[u8]| emit(channel, l);
        encoder.end_frame(|b| lines.push(b, &mut sink));
        lines.flush(&mut sink);
        // One notification for the whole frame.
        if let Channel::Ring(r) = channel {
            let _ = r.kick(&mut ring_notify);
        }
        TAKEN.store(false, Ordering::Release);
    }

    unsafe fn write(bytes: &[u8]) {
        // SAFETY: called between acquire and release, as defmt guarantees.
        let s = unsafe { state() };
        let LoggerState {
            encoder,
            lines,
            channel,
        } = s;
        encoder.write(bytes, |b| lines.push(b, &mut |l| emit(channel, l)));
    }
}
