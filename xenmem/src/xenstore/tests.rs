//! Host tests of the xenstore client against [`model::XsModel`].

use super::model::XsModel;
use super::ring::trace::{self, Access};
use super::wire::*;
use super::*;
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::ToString;
use alloc::vec;
use core::cell::{Cell, RefCell};
use proptest::prelude::*;

/// The model and what the client did to it.
struct Env {
    m: RefCell<XsModel>,
    notifies: Cell<u32>,
    waits: Cell<u32>,
}

fn env(domid: u16, start: u32) -> Env {
    Env {
        m: RefCell::new(XsModel::new(domid, start)),
        notifies: Cell::new(0),
        waits: Cell::new(0),
    }
}

/// A notify or wait closure.
trait Cb: FnMut(u32) -> Result<(), XenError> {}
impl<F: FnMut(u32) -> Result<(), XenError>> Cb for F {}

type Io<'a> = (
    Box<dyn FnMut(u32) -> Result<(), XenError> + 'a>,
    Box<dyn FnMut(u32) -> Result<(), XenError> + 'a>,
);

/// A client whose wait runs one step of the model.
fn client(e: &Env, max_waits: u32) -> XsClient<impl Cb + '_, impl Cb + '_> {
    let page = e.m.borrow().page();
    let notify = move |port| {
        assert_eq!(port, 9);
        e.notifies.set(e.notifies.get() + 1);
        e.m.borrow_mut().notify();
        Ok(())
    };
    let wait = move |port| {
        assert_eq!(port, 9);
        e.waits.set(e.waits.get() + 1);
        e.m.borrow_mut().step();
        Ok(())
    };
    // SAFETY: the model owns the page and outlives the client in every test.
    unsafe { XsClient::new(page, 9, notify, wait, max_waits) }
}

fn boxed_client<'a>(e: &'a Env, io: Io<'a>) -> XsClient<impl Cb + 'a, impl Cb + 'a> {
    let (n, w) = io;
    let page = e.m.borrow().page();
    // SAFETY: as in `client`.
    unsafe { XsClient::new(page, 9, n, w, 5) }
}

fn ev(path: &str, token: &str) -> WatchEvent {
    WatchEvent {
        path: path.into(),
        token: token.into(),
    }
}

// ---------------------------------------------------------------- wire

#[test]
fn header_bytes_round_trip() {
    let h = XsdSockmsg {
        type_: msg_type::WATCH_EVENT,
        req_id: 0x01020304,
        tx_id: 7,
        len: 4096,
    };
    let b = h.to_bytes();
    assert_eq!(&b[..4], &15u32.to_ne_bytes());
    assert_eq!(&b[12..], &4096u32.to_ne_bytes());
    assert_eq!(XsdSockmsg::from_bytes(&b), h);
    assert_eq!(mask_xenstore_idx(u32::MAX), 1023);
    assert_eq!(mask_xenstore_idx(1024), 0);
}

#[test]
fn error_names() {
    assert_eq!(XsErrno::from_payload(b"ENOENT\0"), XsErrno::ENOENT);
    assert_eq!(XsErrno::from_payload(b"EAGAIN"), XsErrno::EAGAIN);
    assert_eq!(XsErrno::from_payload(b"EQUOTA\0"), XsErrno::EQUOTA);
    assert_eq!(XsErrno::from_payload(b"ENOENTX\0"), XsErrno::Unknown);
    assert_eq!(XsErrno::from_payload(b""), XsErrno::Unknown);
    assert_eq!(XsErrno::E2BIG.name(), "E2BIG");
    assert_eq!(XsErrno::Unknown.name(), "?");
}

#[test]
fn strings_of_a_payload() {
    fn v(p: &[u8]) -> Vec<&[u8]> {
        wire::split_strings(p).collect()
    }
    assert!(v(b"").is_empty());
    assert_eq!(v(b"a\0bc\0"), [&b"a"[..], b"bc"]);
    assert_eq!(v(b"a\0bc"), [&b"a"[..], b"bc"]);
    assert_eq!(v(b"\0"), [&b""[..]]);
}

#[test]
fn decimal_values() {
    assert_eq!(parse_u64(b"0"), Ok(0));
    assert_eq!(parse_u64(b"65536"), Ok(65536));
    assert_eq!(parse_u64(b"18446744073709551615"), Ok(u64::MAX));
    assert_eq!(
        parse_u64(b"18446744073709551616"),
        Err(ParseError::Overflow)
    );
    assert_eq!(
        parse_u64(b"99999999999999999999999"),
        Err(ParseError::Overflow)
    );
    assert_eq!(parse_u64(b""), Err(ParseError::Empty));
    for bad in [
        &b"-1"[..],
        b"+1",
        b" 1",
        b"1 ",
        b"1\0",
        b"0x10",
        b"1.5",
        b"abc",
        b"\n",
    ] {
        assert_eq!(parse_u64(bad), Err(ParseError::NotDecimal), "{bad:?}");
    }
}

#[test]
fn store_params() {
    assert_eq!(crate::xen::RingParams::from_values(0, 1), Ok(None));
    assert_eq!(
        crate::xen::RingParams::from_values(0xfeffc, 1),
        Ok(Some(crate::xen::RingParams {
            gfn: crate::addr::Gfn(0xfeffc),
            port: 1
        }))
    );
    assert!(crate::xen::RingParams::from_values(1, 1 << 32).is_err());
}

// ---------------------------------------------------------------- basics

#[test]
fn read_write_directory_rm() {
    let e = env(5, 0);
    let mut c = client(&e, 10);
    assert_eq!(c.domid(), Ok(DomId(5)));
    assert_eq!(c.domain_path(DomId(5)).unwrap(), "/local/domain/5");
    assert_eq!(c.read_u64("memory/target"), Ok(65536));
    assert_eq!(
        c.read_string("/local/domain/5/name").unwrap(),
        "xenmem-agent"
    );
    c.write("data/a", b"1").unwrap();
    c.write("/local/domain/5/data/b", b"two").unwrap();
    c.mkdir("data/c/d").unwrap();
    assert_eq!(c.read("data/b").unwrap(), b"two");
    assert_eq!(c.read("data/c").unwrap(), b"");
    assert_eq!(c.directory("data").unwrap(), ["a", "b", "c"]);
    assert_eq!(c.directory("data/a").unwrap(), Vec::<String>::new());
    c.rm("data/c").unwrap();
    assert_eq!(c.read("data/c/d"), Err(XsError::Server(XsErrno::ENOENT)));
    assert_eq!(c.directory("data").unwrap(), ["a", "b"]);
    // Removing what is not there is fine if its parent is.
    c.rm("data/zz").unwrap();
    assert_eq!(c.rm("nope/zz"), Err(XsError::Server(XsErrno::ENOENT)));
    assert_eq!(c.read("nope"), Err(XsError::Server(XsErrno::ENOENT)));
    assert_eq!(
        c.read_u64("name"),
        Err(XsError::Parse(ParseError::NotDecimal))
    );
    assert_eq!(e.m.borrow().value("data/a"), Some(&b"1"[..]));
    // Every request's reply was consumed and the daemon told so.
    let (rc, rp, sc, sp) = e.m.borrow().indices();
    assert_eq!((rc, sc), (rp, sp));
    assert!(e.notifies.get() > 0);
    assert!(!e.m.borrow().killed);
}

#[test]
fn long_messages_stream_through_wrapping_rings_in_pieces() {
    for (start, rsp_chunk, req_chunk) in [
        (u32::MAX - 10, 7, 5),
        (u32::MAX - 1500, 1, 1000),
        (u32::MAX, 0, 0),
        (0, 333, 17),
    ] {
        let e = env(3, start);
        e.m.borrow_mut().faults.rsp_chunk = rsp_chunk;
        e.m.borrow_mut().faults.req_chunk = req_chunk;
        let mut c = client(&e, 3);
        // 4096 bytes of payload in all: four rings' worth.
        let path = "data/long";
        let value: Vec<u8> = (0..4096 - path.len() - 1)
            .map(|i| b'a' + (i % 26) as u8)
            .collect();
        c.write(path, &value).unwrap();
        assert_eq!(c.read(path).unwrap(), value);
        for i in 0..50 {
            c.write(&format!("data/n{i:02}"), b"x").unwrap();
        }
        let names = c.directory("data").unwrap();
        assert_eq!(names.len(), 51);
        assert_eq!(names[0], "long");
        let (rc, rp, sc, sp) = e.m.borrow().indices();
        assert_eq!((rc, sc), (rp, sp));
        assert!(rp < start || start == 0, "the indices wrapped");
    }
}

#[test]
fn xenstored_is_notified_of_requests_and_of_room_for_replies() {
    // A daemon that looks at the ring only when notified, and a reply four
    // times the ring: the client must notify after publishing its request
    // and after each piece it takes out.
    let e = env(3, u32::MAX - 7);
    e.m.borrow_mut().faults.only_when_notified = true;
    let mut c = client(&e, 2);
    let value = vec![b'n'; 4000];
    c.write("data/v", &value).unwrap();
    assert_eq!(c.read("data/v").unwrap(), value);
    c.watch("data", "t").unwrap();
    assert_eq!(c.next_event(), Ok(Some(ev("data", "t"))));
}

#[test]
fn bad_input_is_refused_before_anything_is_sent() {
    let e = env(1, 0);
    let mut c = client(&e, 3);
    let long_abs = format!("/{}", "a".repeat(XENSTORE_ABS_PATH_MAX));
    let long_rel = "a".repeat(XENSTORE_REL_PATH_MAX + 1);
    for p in ["", "a\0b", &long_abs, &long_rel] {
        assert_eq!(c.read(p), Err(XsError::InvalidPath));
        assert_eq!(c.write(p, b"v"), Err(XsError::InvalidPath));
        assert_eq!(c.watch(p, "t"), Err(XsError::InvalidPath));
    }
    assert_eq!(c.write("a", b"v\0w"), Err(XsError::InvalidValue));
    assert_eq!(c.watch("a", "t\0"), Err(XsError::InvalidValue));
    let big = vec![b'v'; 4096];
    assert_eq!(c.write("a", &big), Err(XsError::TooLong { len: 4098 }));
    // Exactly at the limit goes through.
    c.write("a", &big[..4094]).unwrap();
    assert_eq!(e.m.borrow().requests.len(), 1);
    assert!(!e.m.borrow().killed);
}

#[test]
fn the_largest_relative_and_absolute_paths_pass() {
    let e = env(1, 0);
    let mut c = client(&e, 3);
    let rel = "a".repeat(XENSTORE_REL_PATH_MAX);
    assert_eq!(c.read(&rel), Err(XsError::Server(XsErrno::ENOENT)));
    let abs = format!("/{}", "a".repeat(XENSTORE_ABS_PATH_MAX - 1));
    assert_eq!(c.read(&abs), Err(XsError::Server(XsErrno::ENOENT)));
}

// ---------------------------------------------------------------- errors from xenstored

#[test]
fn error_replies_are_typed() {
    let e = env(1, 0);
    let mut c = client(&e, 3);
    e.m.borrow_mut().faults.error_next = Some("EACCES");
    assert_eq!(c.read("domid"), Err(XsError::Server(XsErrno::EACCES)));
    e.m.borrow_mut().faults.error_next = Some("EWHATEVER");
    assert_eq!(c.write("x", b"1"), Err(XsError::Server(XsErrno::Unknown)));
    // The stream is in step: the next request gets its own reply.
    assert_eq!(c.read_u64("domid"), Ok(1));
}

#[test]
fn a_reply_of_another_type_is_an_error_and_the_stream_stays_in_step() {
    let e = env(1, 0);
    let mut c = client(&e, 3);
    e.m.borrow_mut().faults.type_next = Some(msg_type::READ);
    assert_eq!(
        c.write("x", b"1"),
        Err(XsError::UnexpectedReply {
            expected: msg_type::WRITE,
            got: msg_type::READ
        })
    );
    assert_eq!(c.read("x").unwrap(), b"1");
}

#[test]
fn a_reply_for_an_unknown_request_is_an_error_and_the_stream_stays_in_step() {
    let e = env(1, 0);
    let mut c = client(&e, 3);
    e.m.borrow_mut().faults.req_id_next = Some(999);
    assert_eq!(
        c.read("domid"),
        Err(XsError::UnknownReqId {
            req_id: 999,
            type_: msg_type::READ
        })
    );
    assert_eq!(c.read_u64("domid"), Ok(1));
    // A stray reply with nothing outstanding.
    e.m.borrow_mut().inject_message(msg_type::READ, 4242, b"x");
    e.m.borrow_mut().step();
    assert_eq!(
        c.poll_event(),
        Err(XsError::UnknownReqId {
            req_id: 4242,
            type_: msg_type::READ
        })
    );
    assert_eq!(c.poll_event(), Ok(None));
}

#[test]
fn an_oversized_message_is_skipped() {
    let e = env(1, 0);
    e.m.borrow_mut().faults.rsp_chunk = 100;
    let mut c = client(&e, 5);
    e.m.borrow_mut()
        .inject_message(msg_type::READ, 77, &vec![b'z'; 5000]);
    assert_eq!(
        c.read("domid"),
        Err(XsError::Oversized {
            req_id: 77,
            len: 5000
        })
    );
    // The rest of it is discarded as it comes; then the stream is in step
    // (the reply to the abandoned read is dropped).
    assert_eq!(c.read_u64("domid"), Ok(1));
    assert_eq!(c.read("name").unwrap(), b"xenmem-agent");
    // An oversized watch event is dropped and counted, no error.
    e.m.borrow_mut()
        .inject_message(msg_type::WATCH_EVENT, 0, &vec![b'z'; 4097]);
    assert_eq!(c.read_u64("domid"), Ok(1));
    assert_eq!(c.dropped_events(), 1);
    assert_eq!(c.poll_event(), Ok(None));
}

#[test]
fn malformed_replies() {
    let e = env(1, 0);
    let mut c = client(&e, 3);
    e.m.borrow_mut().external_write("bin", &[0xff, 0xfe]);
    assert_eq!(
        c.read_string("bin"),
        Err(XsError::Malformed("value is not UTF-8"))
    );
    e.m.borrow_mut().external_write("dir/\u{e9}", b"");
    assert_eq!(c.directory("dir").unwrap(), ["\u{e9}"]);
    e.m.borrow_mut().external_write("domid", b"32752");
    assert!(matches!(c.domid(), Err(XsError::Malformed(_))));
    e.m.borrow_mut().external_write("domid", b"-3");
    assert_eq!(c.domid(), Err(XsError::Parse(ParseError::NotDecimal)));
    e.m.borrow_mut().external_write("domid", b"");
    assert_eq!(c.domid(), Err(XsError::Parse(ParseError::Empty)));
    e.m.borrow_mut()
        .external_write("memory/target", b"99999999999999999999");
    assert_eq!(
        c.read_u64("memory/target"),
        Err(XsError::Parse(ParseError::Overflow))
    );
}

// ---------------------------------------------------------------- the ring

#[test]
fn a_silent_daemon_is_an_error_not_a_hang_and_its_late_reply_is_dropped() {
    let e = env(1, 0);
    let mut c = client(&e, 4);
    e.m.borrow_mut().faults.silent = true;
    assert_eq!(c.read("domid"), Err(XsError::Stalled { waits: 4 }));
    assert_eq!(e.waits.get(), 4);
    // A request larger than the ring stalls half-sent; the rest goes out
    // first when xenstored comes back.
    let value = vec![b'q'; 3000];
    assert_eq!(c.write("big", &value), Err(XsError::Stalled { waits: 4 }));
    e.m.borrow_mut().faults.silent = false;
    assert_eq!(c.read("name").unwrap(), b"xenmem-agent");
    assert_eq!(e.m.borrow().value("big"), Some(&value[..]));
    assert_eq!(c.read_u64("domid"), Ok(1));
    assert!(!e.m.borrow().killed);
    // Waiting for events: none for max_waits waits is `None`.
    e.waits.set(0);
    assert_eq!(c.next_event(), Ok(None));
    assert_eq!(e.waits.get(), 4);
}

#[test]
fn corrupt_reply_indices_consume_nothing() {
    let e = env(1, 100);
    let mut c = client(&e, 3);
    e.m.borrow_mut().set_rsp_prod(100 + 2000);
    assert_eq!(
        c.read("domid"),
        Err(XsError::Corrupt(CorruptIndices {
            ring: Ring::Rsp,
            cons: 100,
            prod: 2100
        }))
    );
    let (_, _, rsp_cons, _) = e.m.borrow().indices();
    assert_eq!(rsp_cons, 100);
    assert_eq!(
        c.poll_event(),
        Err(XsError::Corrupt(CorruptIndices {
            ring: Ring::Rsp,
            cons: 100,
            prod: 2100
        }))
    );
}

#[test]
fn corrupt_request_indices_write_nothing() {
    let e = env(1, 100);
    let mut c = client(&e, 3);
    e.m.borrow_mut().set_req_cons(100 + 5);
    assert_eq!(
        c.write("a", b"b"),
        Err(XsError::Corrupt(CorruptIndices {
            ring: Ring::Req,
            cons: 105,
            prod: 100
        }))
    );
    let (_, req_prod, _, _) = e.m.borrow().indices();
    assert_eq!(req_prod, 100);
    // SAFETY: the page is the model's and alive.
    let req = unsafe { &(*e.m.borrow().page().as_ptr()).req };
    assert!(req.iter().all(|&b| b == 0));
}

#[test]
fn a_ring_error_reported_by_xenstored_ends_the_wait() {
    let e = env(1, 0);
    let mut c = client(&e, 3);
    e.m.borrow_mut().faults.silent = true;
    e.m.borrow_mut().set_error(XENSTORE_SERVER_FEATURE_ERROR, 2);
    assert_eq!(c.read("domid"), Err(XsError::ServerReported(2)));
    assert_eq!(e.waits.get(), 0);
    // Without the feature bit the field means nothing.
    e.m.borrow_mut().set_error(0, 2);
    assert_eq!(c.read("domid"), Err(XsError::Stalled { waits: 3 }));
}

#[test]
fn notify_and_wait_errors_are_reported() {
    let e = env(1, 0);
    let mut c = boxed_client(
        &e,
        (
            Box::new(|_| Err(XenError::Contract("notify"))),
            Box::new(|_| Ok(())),
        ),
    );
    assert_eq!(
        c.read("domid"),
        Err(XsError::Xen(XenError::Contract("notify")))
    );
    drop(c);
    let e = env(1, 0);
    let mut c = boxed_client(
        &e,
        (
            Box::new(|_| Ok(())),
            Box::new(|_| Err(XenError::Contract("wait"))),
        ),
    );
    assert_eq!(
        c.read("domid"),
        Err(XsError::Xen(XenError::Contract("wait")))
    );
}

#[test]
fn request_ids_skip_zero_when_they_wrap() {
    let e = env(1, 0);
    let mut c = client(&e, 3);
    c.next_req_id = u32::MAX;
    c.read("domid").unwrap();
    c.read("domid").unwrap();
    let ids: Vec<u32> =
        e.m.borrow()
            .requests
            .iter()
            .map(|(h, _)| h.req_id)
            .collect();
    assert_eq!(ids, [u32::MAX, 1]);
}

/// Check that every ring access has the barriers of `xs_wire.h`'s users:
/// indices read, barrier, data, barrier, index published.
fn assert_barriers(log: &[Access]) {
    assert!(!log.is_empty());
    let mut i = 0;
    let mut data_ops = 0;
    while i < log.len() {
        assert_eq!(
            &log[i..i + 3],
            [Access::LoadCons, Access::LoadProd, Access::Fence],
            "at {i}: {log:?}"
        );
        i += 3;
        let data = log[i..]
            .iter()
            .take_while(|a| matches!(a, Access::LoadData | Access::StoreData))
            .count();
        i += data;
        if data > 0 {
            data_ops += 1;
            assert_eq!(
                &log[i..i + 2],
                [Access::Fence, Access::StoreIdx],
                "at {i}: {log:?}"
            );
            i += 2;
        }
    }
    assert!(data_ops >= 2);
}

#[test]
fn barriers_sit_between_indices_and_data() {
    let e = env(1, u32::MAX - 3);
    e.m.borrow_mut().faults.rsp_chunk = 5;
    let mut c = client(&e, 3);
    let log = trace::capture(|| {
        c.write("data/x", &[b'y'; 2000]).unwrap();
        assert_eq!(c.read("data/x").unwrap().len(), 2000);
    });
    assert_barriers(&log);
    assert!(log.contains(&Access::LoadData) && log.contains(&Access::StoreData));
}

// ---------------------------------------------------------------- watches

#[test]
fn watches_fire_once_when_set_and_on_changes_below() {
    let e = env(2, u32::MAX - 50);
    let mut c = client(&e, 3);
    c.watch("memory/target", "balloon").unwrap();
    c.watch("/local/domain/2/data", "abs").unwrap();
    assert_eq!(c.next_event(), Ok(Some(ev("memory/target", "balloon"))));
    assert_eq!(c.poll_event(), Ok(Some(ev("/local/domain/2/data", "abs"))));
    assert_eq!(c.poll_event(), Ok(None));

    // Another client changes the target: the event comes without a request.
    e.m.borrow_mut().external_write("memory/target", b"32768");
    assert_eq!(c.poll_event(), Ok(None), "not in the ring before a step");
    assert_eq!(c.next_event(), Ok(Some(ev("memory/target", "balloon"))));
    assert_eq!(c.read_u64("memory/target"), Ok(32768));

    // Our own write under a watch: xenstored sends the event before the
    // reply, in the middle of the request; it is queued.
    c.write("data/k", b"v").unwrap();
    assert_eq!(
        c.poll_event(),
        Ok(Some(ev("/local/domain/2/data/k", "abs")))
    );

    // Removing a parent fires with the watch's own path.
    e.m.borrow_mut().external_rm("/local/domain/2/memory");
    assert_eq!(c.next_event(), Ok(Some(ev("memory/target", "balloon"))));

    c.unwatch("memory/target", "balloon").unwrap();
    e.m.borrow_mut().external_write("memory/target", b"1");
    assert_eq!(c.next_event(), Ok(None));
    assert_eq!(
        c.unwatch("memory/target", "balloon"),
        Err(XsError::Server(XsErrno::ENOENT))
    );
    assert_eq!(c.dropped_events(), 0);
}

#[test]
fn an_event_between_request_and_reply_is_queued() {
    let e = env(2, 0);
    e.m.borrow_mut().faults.rsp_chunk = 3;
    let mut c = client(&e, 3);
    e.m.borrow_mut().faults.event_before_next_reply = Some(("memory/target".into(), "t".into()));
    assert_eq!(c.read_u64("memory/target"), Ok(65536));
    e.m.borrow_mut().faults.event_before_next_reply = Some(("x".into(), "u".into()));
    c.transaction(3, |t| t.write("y", b"1")).unwrap();
    assert_eq!(c.poll_event(), Ok(Some(ev("memory/target", "t"))));
    assert_eq!(c.poll_event(), Ok(Some(ev("x", "u"))));
    assert_eq!(c.poll_event(), Ok(None));
}

#[test]
fn event_queue_is_bounded_and_drops_malformed_events() {
    let e = env(2, 0);
    let mut c = client(&e, 3);
    {
        let mut m = e.m.borrow_mut();
        m.inject_message(msg_type::WATCH_EVENT, 0, b"only-a-path\0");
        m.inject_message(msg_type::WATCH_EVENT, 0, b"\0tok\0");
        m.inject_message(msg_type::WATCH_EVENT, 0, b"\xff\0tok\0");
        for i in 0..MAX_QUEUED_EVENTS + 10 {
            m.inject_message(msg_type::WATCH_EVENT, 0, format!("p{i}\0t\0").as_bytes());
        }
        // The same event again right behind itself: kept once.
        m.inject_message(msg_type::WATCH_EVENT, 0, b"p137\0t\0");
    }
    assert_eq!(c.read_u64("domid"), Ok(2));
    assert_eq!(c.dropped_events(), 3 + 10);
    assert_eq!(c.poll_event(), Ok(Some(ev("p10", "t"))));
    let rest = core::iter::from_fn(|| c.poll_event().unwrap()).count();
    assert_eq!(rest, MAX_QUEUED_EVENTS - 1);
}

// ---------------------------------------------------------------- transactions

#[test]
fn transactions_commit_abort_and_conflict() {
    let e = env(4, 0);
    let mut c = client(&e, 3);
    let tx = c.transaction_start().unwrap();
    assert_ne!(tx, TxId::NONE);
    c.in_transaction(tx).write("t/a", b"1").unwrap();
    assert_eq!(c.in_transaction(tx).read("t/a").unwrap(), b"1");
    assert_eq!(c.read("t/a"), Err(XsError::Server(XsErrno::ENOENT)));
    c.transaction_end(tx, true).unwrap();
    assert_eq!(c.read("t/a").unwrap(), b"1");

    let tx = c.transaction_start().unwrap();
    c.in_transaction(tx).rm("t/a").unwrap();
    c.transaction_end(tx, false).unwrap();
    assert_eq!(c.read("t/a").unwrap(), b"1");

    // Another client writes meanwhile: the commit says EAGAIN.
    let tx = c.transaction_start().unwrap();
    c.in_transaction(tx).write("t/b", b"2").unwrap();
    e.m.borrow_mut().external_write("elsewhere", b"x");
    assert_eq!(
        c.transaction_end(tx, true),
        Err(XsError::Server(XsErrno::EAGAIN))
    );
    assert_eq!(c.read("t/b"), Err(XsError::Server(XsErrno::ENOENT)));
    assert_eq!(
        c.transaction_end(tx, true),
        Err(XsError::Server(XsErrno::ENOENT)),
        "a transaction ends once"
    );
}

#[test]
fn the_transaction_helper_retries_on_eagain_a_bounded_number_of_times() {
    let e = env(4, 0);
    let mut c = client(&e, 3);
    let attempts = Cell::new(0);
    let v = c
        .transaction(5, |t| {
            attempts.set(attempts.get() + 1);
            let n = t.read_u64("memory/target")?;
            t.write("memory/seen", n.to_string().as_bytes())?;
            if attempts.get() < 3 {
                e.m.borrow_mut().external_write("memory/target", b"4096");
            }
            Ok(n)
        })
        .unwrap();
    assert_eq!((attempts.get(), v), (3, 4096));
    assert_eq!(c.read("memory/seen").unwrap(), b"4096");

    attempts.set(0);
    let r = c.transaction(4, |t| {
        attempts.set(attempts.get() + 1);
        e.m.borrow_mut().external_write("noise", b"x");
        t.write("memory/seen", b"0")
    });
    assert_eq!(r, Err(XsError::Contended { attempts: 4 }));
    assert_eq!(attempts.get(), 4);
    assert_eq!(c.read("memory/seen").unwrap(), b"4096");

    // Another error ends the transaction uncommitted at once.
    attempts.set(0);
    let r = c.transaction(4, |t| {
        attempts.set(attempts.get() + 1);
        t.write("memory/seen", b"1")?;
        t.read("missing")
    });
    assert_eq!(r, Err(XsError::Server(XsErrno::ENOENT)));
    assert_eq!(attempts.get(), 1);
    assert_eq!(c.read("memory/seen").unwrap(), b"4096");
    // The body's EAGAIN also starts again.
    attempts.set(0);
    let r = c.transaction(3, |t| {
        attempts.set(attempts.get() + 1);
        if attempts.get() == 1 {
            e.m.borrow_mut().faults.error_next = Some("EAGAIN");
        }
        t.read_u64("memory/target")
    });
    assert_eq!(r, Ok(4096));
    assert_eq!(attempts.get(), 2);
}

#[test]
fn watches_fire_for_transactions_only_when_committed() {
    let e = env(4, 0);
    let mut c = client(&e, 3);
    c.watch("t", "w").unwrap();
    assert_eq!(c.next_event(), Ok(Some(ev("t", "w"))));
    let tx = c.transaction_start().unwrap();
    c.in_transaction(tx).write("t/a", b"1").unwrap();
    assert_eq!(c.next_event(), Ok(None));
    c.transaction_end(tx, true).unwrap();
    assert_eq!(c.next_event(), Ok(Some(ev("t/a", "w"))));
}

// ---------------------------------------------------------------- properties

#[derive(Clone, Debug)]
enum Op {
    Write(u8, u16),
    Read(u8),
    Rm(u8),
    Dir,
    External(u8, u16),
    Tx(u8, u16, bool),
    Event,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..6u8, 0..3000u16).prop_map(|(k, n)| Op::Write(k, n)),
        (0..6u8).prop_map(Op::Read),
        (0..6u8).prop_map(Op::Rm),
        Just(Op::Dir),
        (0..6u8, 0..200u16).prop_map(|(k, n)| Op::External(k, n)),
        (0..6u8, 0..500u16, any::<bool>()).prop_map(|(k, n, c)| Op::Tx(k, n, c)),
        Just(Op::Event),
    ]
}

fn value(k: u8, n: u16) -> Vec<u8> {
    (0..n)
        .map(|i| b'a' + ((i as u8).wrapping_add(k) % 26))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Random requests, changes by another client and watch events, with
    /// replies in random pieces through rings whose indices start anywhere:
    /// every reply equals a plain map's answer, and the watch events come
    /// in the order of the changes, none lost.
    #[test]
    fn interleavings_match_a_reference(
        start in prop_oneof![Just(u32::MAX - 2000), any::<u32>(), Just(0u32)],
        rsp_chunk in prop_oneof![Just(0usize), 1..64usize, 64..1100usize],
        req_chunk in prop_oneof![Just(0usize), 1..64usize, 64..1100usize],
        ops in proptest::collection::vec(op(), 1..40),
        only_when_notified in any::<bool>(),
    ) {
        let e = env(7, start);
        e.m.borrow_mut().faults.only_when_notified = only_when_notified;
        e.m.borrow_mut().faults.rsp_chunk = rsp_chunk;
        e.m.borrow_mut().faults.req_chunk = req_chunk;
        let mut c = client(&e, 4);
        let mut reference: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        let mut expected_events = vec![ev("d", "w")];
        let mut got_events = Vec::new();
        c.mkdir("d").unwrap();
        c.watch("d", "w").unwrap();
        let key = |k: u8| format!("d/k{k}");
        for op in ops {
            match op {
                Op::Write(k, n) => {
                    c.write(&key(k), &value(k, n)).unwrap();
                    reference.insert(key(k), value(k, n));
                    expected_events.push(ev(&key(k), "w"));
                }
                Op::Read(k) => {
                    let r = c.read(&key(k));
                    match reference.get(&key(k)) {
                        Some(v) => prop_assert_eq!(r.unwrap(), v.clone()),
                        None => prop_assert_eq!(r, Err(XsError::Server(XsErrno::ENOENT))),
                    }
                }
                Op::Rm(k) => {
                    c.rm(&key(k)).unwrap();
                    if reference.remove(&key(k)).is_some() {
                        expected_events.push(ev(&key(k), "w"));
                    }
                }
                Op::Dir => {
                    let want: Vec<String> = reference.keys().map(|k| k[2..].to_string()).collect();
                    prop_assert_eq!(c.directory("d").unwrap(), want);
                }
                Op::External(k, n) => {
                    e.m.borrow_mut().external_write(&key(k), &value(k, n));
                    reference.insert(key(k), value(k, n));
                    expected_events.push(ev(&key(k), "w"));
                }
                Op::Tx(k, n, conflict) => {
                    let tx = c.transaction_start().unwrap();
                    c.in_transaction(tx).write(&key(k), &value(k, n)).unwrap();
                    if conflict {
                        e.m.borrow_mut().external_write("d/other", b"o");
                        reference.insert("d/other".into(), b"o".to_vec());
                        expected_events.push(ev("d/other", "w"));
                        prop_assert_eq!(c.transaction_end(tx, true), Err(XsError::Server(XsErrno::EAGAIN)));
                    } else {
                        c.transaction_end(tx, true).unwrap();
                        reference.insert(key(k), value(k, n));
                        expected_events.push(ev(&key(k), "w"));
                    }
                }
                Op::Event => {
                    if let Some(ev) = c.poll_event().unwrap() {
                        got_events.push(ev);
                    }
                }
            }
        }
        while let Some(ev) = c.next_event().unwrap() {
            got_events.push(ev);
        }
        // Identical events queued back to back are kept once.
        expected_events.dedup();
        got_events.dedup();
        prop_assert_eq!(got_events, expected_events);
        prop_assert_eq!(c.dropped_events(), 0);
        prop_assert!(!e.m.borrow().killed);
        let (rc, rp, sc, sp) = e.m.borrow().indices();
        prop_assert_eq!((rc, sc), (rp, sp));
    }

    /// Any bytes at all in the reply ring: the client never panics, and
    /// once xenstored behaves again a request after the garbage works.
    #[test]
    fn garbage_never_panics(
        garbage in proptest::collection::vec(any::<u8>(), 0..3000),
        chunk in 1..200usize,
    ) {
        let e = env(7, u32::MAX - 100);
        e.m.borrow_mut().faults.rsp_chunk = chunk;
        let mut c = client(&e, 3);
        e.m.borrow_mut().inject(&garbage);
        let _ = c.read("domid");
        let _ = c.poll_event();
        let _ = c.next_event();
    }
}
