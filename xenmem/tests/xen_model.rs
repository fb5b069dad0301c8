//! The Xen model (crate `xenmem-model`, a dev-dependency) seen from outside
//! the library, as an embedder's tests use it.

use xenmem::addr::{DomId, Gfn, Order, PageCount};
use xenmem::xen::{Errno, ExchangeRequest, Hypervisor, MemFlags, XenError};
use xenmem_model::{DomainConfig, Fault, Op, XenModel};

const D1: DomId = DomId(1);

fn order(n: u8) -> Order {
    Order::new(n).unwrap()
}

/// Give back `gfns` 2 MiB at a time where an extent is whole, else page by
/// page; returns the GFNs actually released.
fn balloon_down(x: &dyn Hypervisor, gfns: &[u64]) -> Vec<u64> {
    let mut released = Vec::new();
    for chunk in gfns.chunks(512) {
        let aligned = chunk.len() == 512 && chunk[0] % 512 == 0;
        if aligned && x.decrease_reservation(DomId::SELF, order(9), &[Gfn(chunk[0])]) == Ok(1) {
            released.extend_from_slice(chunk);
            continue;
        }
        let list: Vec<Gfn> = chunk.iter().copied().map(Gfn).collect();
        let done = x
            .decrease_reservation(DomId::SELF, order(0), &list)
            .unwrap();
        released.extend_from_slice(&chunk[..done]);
    }
    released
}

/// Populate `gfns` back, trying order 9 first and falling back to order 0.
fn balloon_up(x: &dyn Hypervisor, gfns: &[u64]) -> usize {
    let mut done = 0;
    for chunk in gfns.chunks(512) {
        if chunk.len() == 512 && chunk[0] % 512 == 0 {
            let mut l = [Gfn(chunk[0])];
            if x.populate_physmap(DomId::SELF, order(9), MemFlags::NONE, &mut l) == Ok(1) {
                done += 512;
                continue;
            }
        }
        let mut list: Vec<Gfn> = chunk.iter().copied().map(Gfn).collect();
        done += x
            .populate_physmap(DomId::SELF, order(0), MemFlags::NONE, &mut list)
            .unwrap();
    }
    done
}

#[test]
fn balloon_down_and_up_with_superpages_and_fallback() {
    let x = XenModel::new(1 << 16);
    x.add_domain(DomainConfig::pvh_domu(D1, 8192)).unwrap();
    let gfns: Vec<u64> = (1024..3072).collect();

    let released = balloon_down(&x, &gfns);
    assert_eq!(released, gfns);
    assert_eq!(
        x.current_reservation(DomId::SELF),
        Ok(PageCount(8192 - 2048))
    );
    x.check_conservation().unwrap();

    // Fragment the host: order 9 fails, the engine falls back to order 0.
    x.fragment(7, 0.05);
    assert_eq!(balloon_up(&x, &released), 2048);
    assert_eq!(x.current_reservation(DomId::SELF), Ok(PageCount(8192)));
    assert!(x.leaked(D1).is_empty());
    assert!(x.calls(Op::PopulatePhysmap) >= 8);
    x.check_conservation().unwrap();
}

#[test]
fn short_counts_and_refusals_reach_the_caller() {
    let x = XenModel::new(1 << 14);
    x.add_domain(DomainConfig::pvh_domu(D1, 1024)).unwrap();
    x.inject(Fault::ShortAt {
        op: Op::DecreaseReservation,
        after_extents: 2,
    });
    let list: Vec<Gfn> = (0..4).map(Gfn).collect();
    assert_eq!(x.decrease_reservation(DomId::SELF, order(0), &list), Ok(2));

    // Exchange is PV-only: a PVH guest gets EOPNOTSUPP, nothing done.
    let input = [Gfn(10), Gfn(11)];
    let mut output = [Gfn(0x8000)];
    let r = x.exchange(&mut ExchangeRequest {
        dom: DomId::SELF,
        in_order: order(0),
        input: &input,
        out_order: order(1),
        output: &mut output,
        out_flags: MemFlags::address_bits(32).unwrap(),
    });
    assert_eq!(r.exchanged, 0);
    assert_eq!(r.result, Err(XenError::Errno(Errno::EOPNOTSUPP)));
    x.check_conservation().unwrap();
}
