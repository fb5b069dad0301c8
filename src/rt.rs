//! The unikernel runtime (feature `rt`, bare-metal targets only).
//!
//! The architecture's boot glue calls [`start`] once it has a stack, a
//! Rust-ready CPU and a [`BootInfo`]; its exception vectors call
//! [`exception`]. This module owns the defmt logger (framed lines over
//! `console_io`), the panic handler and the exit paths.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, Ordering};

use crate::addr::VirtAddr;
use crate::agent::{ExitPath, Outcome};
use crate::arch::{imp, Verdict};
use crate::boot::BootInfo;
use crate::logframe::LineEncoder;
use crate::xen::{self, Hypervisor};

/// Size of the agent's heap: a static in `.bss`, so inside the image; the
/// region table records it as `Reserved(Heap)`.
pub const HEAP_SIZE: usize = 4 << 20;

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
pub fn heap_span() -> crate::boot::PhysSpan {
    let start = HEAP_SPACE.0.get() as usize as u64;
    crate::boot::PhysSpan {
        start: crate::addr::GuestPhysAddr(start),
        end: crate::addr::GuestPhysAddr(start + HEAP_SIZE as u64),
    }
}

/// Run the agent and leave the machine with its verdict. Called once by the
/// architecture's boot glue.
pub fn start(boot: &BootInfo<'_>) -> ! {
    // SAFETY: called once, before anything allocates; the space is a static
    // that nothing else uses.
    unsafe { HEAP.lock().init(HEAP_SPACE.0.get().cast::<u8>(), HEAP_SIZE) };
    let hv = xen::RealXen::new();
    let outcome = crate::agent::run(&hv, boot, Some(heap_span()));
    finish(&hv, outcome)
}

fn finish(hv: &xen::RealXen, outcome: Outcome) -> ! {
    match outcome.exit {
        ExitPath::Host => imp::exit_host(outcome.verdict),
        ExitPath::XenShutdown => {
            let reason = match outcome.verdict {
                Verdict::Pass => xen::ShutdownReason::Poweroff,
                Verdict::Fail => xen::ShutdownReason::Crash,
            };
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
    imp::exit_host(Verdict::Fail)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    xm_error!("panic: {}", defmt::Display2Format(info));
    xm_error!("verdict: FAIL");
    imp::exit_host(Verdict::Fail)
}

// ---- the defmt logger -------------------------------------------------------

struct LoggerState {
    encoder: defmt::Encoder,
    lines: LineEncoder,
}

struct LoggerCell(UnsafeCell<LoggerState>);

// SAFETY: the agent runs on one vCPU with interrupts off; `TAKEN` serialises
// the only users (defmt's acquire/release bracket) within it.
unsafe impl Sync for LoggerCell {}

static TAKEN: AtomicBool = AtomicBool::new(false);
static LOGGER: LoggerCell = LoggerCell(UnsafeCell::new(LoggerState {
    encoder: defmt::Encoder::new(),
    lines: LineEncoder::new(),
}));

fn console_line(line: &[u8]) {
    // A log line that Xen refuses cannot be logged either; nothing to do.
    let _ = xen::console_write(line);
}

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
        let LoggerState { encoder, lines } = s;
        encoder.start_frame(|b| lines.push(b, &mut console_line));
    }

    unsafe fn flush() {}

    unsafe fn release() {
        // SAFETY: called after acquire, as defmt guarantees.
        let s = unsafe { state() };
        let LoggerState { encoder, lines } = s;
        encoder.end_frame(|b| lines.push(b, &mut console_line));
        lines.flush(&mut console_line);
        TAKEN.store(false, Ordering::Release);
    }

    unsafe fn write(bytes: &[u8]) {
        // SAFETY: called between acquire and release, as defmt guarantees.
        let s = unsafe { state() };
        let LoggerState { encoder, lines } = s;
        encoder.write(bytes, |b| lines.push(b, &mut console_line));
    }
}
