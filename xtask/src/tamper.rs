//! Every check can fail (issue 14, item 2), shown on every passing run.
//!
//! The broken agents of [`crate::mutants`] show that the checks catch the
//! faults an agent really makes, but they are a few dozen boots for some
//! hundreds of checks. This module covers every check, in every run: once
//! a scenario has passed, each of its checks is evaluated again on copies of
//! the run's evidence (the agents' reports, Xen's view at the pauses, the
//! xl rig's records) in which exactly what that check reads has been
//! changed — the number one page off, the text replaced, the line dropped,
//! Xen's count one page different, the peer's reading wrong. The check must
//! fail on every copy. One that still passes reads nothing of the run (a
//! topic or field no report has any more) or accepts anything, and fails the
//! scenario.
//!
//! A tampered copy is what a broken agent (or a broken Xen, or a broken
//! peer) would have shown; unlike the mutants it costs no boot. It does not
//! show that the agent *could* produce it: that is the mutants' job.

use crate::decode::{Level, Source};
use crate::report::{parse_number, AgentLog, Logs, Report, Verdict};
use crate::rig::{Record, XlJobResult, XlResult};
use crate::scenarios::{check_one, xen_pages_at, Check, Is};
use crate::xenview::XenView;
use crate::xl_scenarios::{XlCheck, XlScenario};

/// What a boot check reads: the agents' logs and Xen's view at the pauses.
#[derive(Clone)]
struct Evidence {
    logs: Logs,
    views: Vec<XenView>,
}

/// One tampered copy and what was changed.
struct Tampered<T> {
    what: String,
    copy: T,
}

/// The result of tampering with a passing run's evidence.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Tampered copies tried.
    pub copies: usize,
    /// Checks with at least one tampered copy.
    pub checks: usize,
    /// Checks that passed on a tampered copy, or for which no copy could be
    /// made: each is a check that cannot fail.
    pub unfailing: Vec<String>,
}

impl Outcome {
    /// The words for a passing test's line.
    pub fn summary(&self) -> String {
        format!(
            "{} checks each failed on tampered evidence ({} copies)",
            self.checks, self.copies
        )
    }
}

/// A number one more than `v` (or a word that is no number).
fn off_by_one(v: &str) -> String {
    match parse_number(v) {
        Some(n) if v.starts_with("0x") => format!("{:#x}", n.wrapping_add(1)),
        Some(n) => n.wrapping_add(1).to_string(),
        None => "tampered".into(),
    }
}

/// A value `is` does not accept, where one exists (`Is::Present` accepts
/// every value: the field is taken away instead).
fn wrong(is: Is, v: &str) -> Option<String> {
    Some(match is {
        Is::Num(_) => off_by_one(v),
        Is::Text("tampered") => "untampered".into(),
        Is::Text(_) | Is::AnyNum => "tampered".into(),
        Is::Version(_) => "0.0".into(),
        Is::Present => return None,
    })
}

fn set(r: &mut Report, key: &str, value: String) {
    if let Some(f) = r.fields.iter_mut().find(|(k, _)| k == key) {
        f.1 = value;
    }
}

fn log_mut(logs: &mut Logs, src: Source) -> &mut AgentLog {
    logs.by_source.entry(src).or_default()
}

/// Copies of `e` in which the reports `pick` selects (all of them, or the
/// last one that has `key`) get a value of `key` that `is` rejects, or lose
/// the key (`Is::Present`).
fn tamper_field(
    e: &Evidence,
    src: Source,
    pick: impl Fn(&Report) -> bool,
    key: &str,
    is: Is,
    what: &str,
) -> Vec<Tampered<Evidence>> {
    let mut copy = e.clone();
    let l = log_mut(&mut copy.logs, src);
    let hit: Vec<usize> = (0..l.reports.len())
        .filter(|&i| pick(&l.reports[i]) && l.reports[i].get(key).is_some())
        .collect();
    let Some(&last) = hit.last() else {
        return vec![];
    };
    let r = &mut l.reports[last];
    let desc = match r.get(key).and_then(|v| wrong(is, v)) {
        Some(w) => {
            let d = format!(
                "{what}: the last one's {key}={} made {key}={w}",
                r.get(key).unwrap_or("")
            );
            set(r, key, w);
            d
        }
        None => {
            for &i in &hit {
                l.reports[i].fields.retain(|(k, _)| k != key);
            }
            format!("{what}: {key}= taken out of all {}", hit.len())
        }
    };
    vec![Tampered { what: desc, copy }]
}

/// Copies of `e`, each changed where check `c` reads.
fn boot_copies(c: &Check, e: &Evidence) -> Vec<Tampered<Evidence>> {
    match *c {
        Check::Verdict(src, want) => {
            let mut copy = e.clone();
            let l = log_mut(&mut copy.logs, src);
            let what = match want {
                Verdict::Pass => {
                    l.push(Level::Error, "verdict: FAIL");
                    "a `verdict: FAIL` added"
                }
                Verdict::Fail => {
                    l.verdicts = vec![Verdict::Pass];
                    "the verdicts made one PASS"
                }
            };
            vec![Tampered {
                what: what.into(),
                copy,
            }]
        }
        Check::Field {
            src,
            topic,
            key,
            is,
        }
        | Check::Every {
            src,
            topic,
            key,
            is,
        } => tamper_field(
            e,
            src,
            |r| r.topic == topic,
            key,
            is,
            &format!("`report: {topic}`"),
        ),
        Check::FieldWhere {
            src,
            topic,
            when,
            key,
            is,
        } => tamper_field(
            e,
            src,
            |r| r.topic == topic && r.get(when.0) == Some(when.1),
            key,
            is,
            &format!("`report: {topic} {}={}`", when.0, when.1),
        ),
        Check::Count {
            src,
            topic,
            key,
            value,
            ..
        } => {
            let mut copy = e.clone();
            let l = log_mut(&mut copy.logs, src);
            let mut n = 0;
            for r in l.reports.iter_mut() {
                if r.topic == topic && r.get(key) == Some(value) {
                    set(r, key, "tampered".into());
                    n += 1;
                }
            }
            if n == 0 {
                return vec![];
            }
            vec![Tampered {
                what: format!("the {n} `report: {topic} {key}={value}` made {key}=tampered"),
                copy,
            }]
        }
        Check::ErrorMentions(src, text) => {
            let mut copy = e.clone();
            let l = log_mut(&mut copy.logs, src);
            let mut n = 0;
            for (level, m) in l.lines.iter_mut() {
                if *level == Level::Error && m.contains(text) {
                    *level = Level::Info;
                    n += 1;
                }
            }
            if n == 0 {
                return vec![];
            }
            vec![Tampered {
                what: format!("the {n} error(s) mentioning `{text}` made info"),
                copy,
            }]
        }
        Check::NoErrorMentions(src, text) => {
            let mut copy = e.clone();
            log_mut(&mut copy.logs, src).push(Level::Error, &format!("tampered: {text}"));
            vec![Tampered {
                what: format!("an error mentioning `{text}` added"),
                copy,
            }]
        }
        Check::Exception(src) => {
            let mut copy = e.clone();
            let l = log_mut(&mut copy.logs, src);
            let before = l.lines.len();
            l.lines.retain(|(_, m)| !m.starts_with("exception: "));
            if l.lines.len() == before {
                return vec![];
            }
            vec![Tampered {
                what: "the exception line(s) taken out".into(),
                copy,
            }]
        }
        Check::ExceptionAt { src, topic, key } => {
            let mut copy = e.clone();
            let l = log_mut(&mut copy.logs, src);
            let Some(r) = l.reports.iter_mut().find(|r| r.topic == topic) else {
                return vec![];
            };
            let Some(v) = r.get(key).map(off_by_one) else {
                return vec![];
            };
            set(r, key, v.clone());
            vec![Tampered {
                what: format!("the first `report: {topic}` {key}={v}"),
                copy,
            }]
        }
        Check::Equal { src, topic, a, b } => [a, b]
            .into_iter()
            .filter_map(|k| {
                let mut copy = e.clone();
                let l = log_mut(&mut copy.logs, src);
                let r = l.reports.iter_mut().find(|r| r.topic == topic)?;
                let v = off_by_one(r.get(k)?);
                set(r, k, v.clone());
                Some(Tampered {
                    what: format!("the first `report: {topic}` {k}={v}"),
                    copy,
                })
            })
            .collect(),
        Check::Same { a, b } => [a, b]
            .into_iter()
            .filter_map(|(src, topic, key)| {
                let mut copy = e.clone();
                let l = log_mut(&mut copy.logs, src);
                let r = l
                    .reports
                    .iter_mut()
                    .find(|r| r.topic == topic && r.get(key).is_some())?;
                let v = off_by_one(r.get(key)?);
                set(r, key, v.clone());
                Some(Tampered {
                    what: format!("[{src}] the first `report: {topic}` {key}={v}"),
                    copy,
                })
            })
            .collect(),
        Check::ImageReserved(src) => {
            let mut copy = e.clone();
            let l = log_mut(&mut copy.logs, src);
            let start = l
                .reports
                .iter()
                .find(|r| r.topic == "image")
                .and_then(|r| r.get("start"))
                .and_then(parse_number);
            let Some(start) = start else { return vec![] };
            let num = |r: &Report, k| r.get(k).and_then(parse_number);
            let Some(r) = l.reports.iter_mut().find(|r| {
                r.topic == "table-region"
                    && num(r, "start").is_some_and(|s| s <= start)
                    && num(r, "end").is_some_and(|e| start < e)
            }) else {
                return vec![];
            };
            set(r, "kind", "ram".into());
            vec![Tampered {
                what: "the table region holding the image's start made kind=ram".into(),
                copy,
            }]
        }
        Check::TableTiles(src) => {
            let mut out = Vec::new();
            let mut copy = e.clone();
            let l = log_mut(&mut copy.logs, src);
            let regions: Vec<usize> = (0..l.reports.len())
                .filter(|&i| l.reports[i].topic == "table-region")
                .collect();
            if regions.len() >= 3 {
                l.reports.remove(regions[regions.len() / 2]);
                if let Some(t) = l.reports.iter_mut().find(|r| r.topic == "table") {
                    let n = t.get("regions").and_then(parse_number).unwrap_or(1);
                    set(t, "regions", n.saturating_sub(1).to_string());
                }
                out.push(Tampered {
                    what: "a table region in the middle taken out (and the count lowered)".into(),
                    copy,
                });
            }
            let mut copy = e.clone();
            let l = log_mut(&mut copy.logs, src);
            if let Some(t) = l.reports.iter_mut().find(|r| r.topic == "table") {
                let v = t.get("regions").map(off_by_one).unwrap_or_default();
                set(t, "regions", v);
                out.push(Tampered {
                    what: "`report: table regions=` one more".into(),
                    copy,
                });
            }
            out
        }
        Check::XenPagesAt { src, point, .. } => {
            let mut copy = e.clone();
            let Some(v) = copy
                .views
                .iter_mut()
                .rev()
                .find(|v| v.src == src && v.point == point)
            else {
                return vec![];
            };
            let Some(n) = v.xen.as_mut().and_then(|x| x.fields.get_mut("nr_pages")) else {
                return vec![];
            };
            *n = off_by_one(n);
            vec![Tampered {
                what: format!("Xen's nr_pages at point {point} one page more"),
                copy,
            }]
        }
        Check::MappingsBalanced { src, kinds } => {
            let mut out = Vec::new();
            let mut copy = e.clone();
            let l = log_mut(&mut copy.logs, src);
            if let Some(i) = l
                .reports
                .iter()
                .rposition(|r| r.topic == "mapping" && r.get("state") == Some("released"))
            {
                l.reports.remove(i);
                out.push(Tampered {
                    what: "the last `report: mapping state=released` taken out".into(),
                    copy,
                });
            }
            for kind in kinds {
                let mut copy = e.clone();
                let l = log_mut(&mut copy.logs, src);
                l.reports
                    .retain(|r| !(r.topic == "mapping" && r.get("kind") == Some(kind)));
                out.push(Tampered {
                    what: format!("every `report: mapping kind={kind}` taken out"),
                    copy,
                });
            }
            out
        }
    }
}

/// Whether check `c` fails on `e`.
fn boot_fails(c: &Check, e: &Evidence) -> bool {
    if check_one(c, &e.logs).is_some() {
        return true;
    }
    match *c {
        Check::XenPagesAt { src, point, pages } => {
            !xen_pages_at(&e.views, src, point, pages).is_empty()
        }
        _ => false,
    }
}

/// Tamper with a passing boot's evidence for each of `checks`.
pub fn boot(checks: &[Check], logs: &Logs, views: &[XenView]) -> Outcome {
    let e = Evidence {
        logs: logs.clone(),
        views: views.to_vec(),
    };
    let mut out = Outcome::default();
    for c in checks {
        let copies = boot_copies(c, &e);
        if copies.is_empty() {
            out.unfailing.push(format!(
                "check {c:?} cannot fail: nothing it reads is in the run to change"
            ));
            continue;
        }
        out.checks += 1;
        for t in copies {
            out.copies += 1;
            if !boot_fails(c, &t.copy) {
                out.unfailing
                    .push(format!("check {c:?} still passes when {}", t.what));
            }
        }
    }
    out
}

// ---- the xl rig ---------------------------------------------------------

/// What an xl check reads: the job's records and the agent's log.
#[derive(Clone)]
struct XlEvidence {
    job: XlJobResult,
    log: AgentLog,
}

fn rec_set(r: &mut Record, key: &str, v: impl Into<String>) -> bool {
    match r.fields.get_mut(key) {
        Some(f) => {
            *f = v.into();
            true
        }
        None => false,
    }
}

fn rec_bump(r: &mut Record, key: &str) -> bool {
    let v = r.get(key).map(off_by_one);
    v.is_some_and(|v| rec_set(r, key, v))
}

/// A copy of `e` with `change` applied to the record `pick` finds among the
/// job's steps (`None`: nothing to change).
fn step_copy(
    e: &XlEvidence,
    what: String,
    pick: impl Fn(&Record) -> bool,
    change: impl Fn(&mut Record) -> bool,
) -> Option<Tampered<XlEvidence>> {
    let mut copy = e.clone();
    let r = copy.job.steps.iter_mut().find(|r| pick(r))?;
    change(r).then_some(Tampered { what, copy })
}

/// A copy of `e` whose agent's `topic` report (the first, or the last) has
/// `key` one more.
fn agent_copy(e: &XlEvidence, topic: &str, key: &str, last: bool) -> Option<Tampered<XlEvidence>> {
    let mut copy = e.clone();
    let mut it = copy
        .log
        .reports
        .iter_mut()
        .filter(|r| r.topic == topic && r.get(key).is_some());
    let r = if last { it.last() } else { it.next() }?;
    let v = off_by_one(r.get(key)?);
    set(r, key, v.clone());
    Some(Tampered {
        what: format!("the agent's `report: {topic}` {key}={v}"),
        copy,
    })
}

/// A copy of `e` with `change` applied to one of the job's own records.
fn job_copy(
    e: &XlEvidence,
    what: &str,
    change: impl Fn(&mut XlJobResult) -> bool,
) -> Option<Tampered<XlEvidence>> {
    let mut copy = e.clone();
    change(&mut copy.job).then_some(Tampered {
        what: what.into(),
        copy,
    })
}

fn topic_is(topic: &'static str) -> impl Fn(&Record) -> bool {
    move |r| r.topic == topic
}

fn step_is(step: usize) -> impl Fn(&Record) -> bool {
    move |r| r.get("step") == Some(step.to_string().as_str())
}

/// Copies of `e`, each changed where xl check `c` reads.
fn xl_copies(c: &XlCheck, e: &XlEvidence) -> Vec<Tampered<XlEvidence>> {
    let opt = |r: &mut Option<Record>, k: &str| r.as_mut().is_some_and(|r| rec_bump(r, k));
    let exit_not_0 = || {
        step_copy(
            e,
            "the peer's exit status made 1".into(),
            topic_is("peer-exit"),
            |r| rec_set(r, "status", "1"),
        )
    };
    let v: Vec<Option<Tampered<XlEvidence>>> = match *c {
        XlCheck::ListMib(_) => vec![job_copy(e, "xl list's MiB after shutdown one more", |j| {
            opt(&mut j.xl_list_shutdown, "mem_mib")
        })],
        XlCheck::ListMibAtStart(_) => vec![job_copy(e, "xl list's MiB when made one more", |j| {
            opt(&mut j.xl_list_created, "mem_mib")
        })],
        XlCheck::XenPagesIsLast { topic, key } => vec![
            job_copy(e, "Xen's nr_pages at the end one more", |j| {
                opt(&mut j.xen_pages, "nr_pages")
            }),
            agent_copy(e, topic, key, true),
        ],
        XlCheck::XenPages(_) => vec![job_copy(e, "Xen's nr_pages at the end one more", |j| {
            opt(&mut j.xen_pages, "nr_pages")
        })],
        XlCheck::PodBacked => vec![job_copy(e, "Xen's PoD entries one more", |j| {
            opt(&mut j.xen_pages, "pod_entries")
        })],
        XlCheck::StepPages { step, .. } => vec![step_copy(
            e,
            format!("Xen's nr_pages at step {step} one more"),
            step_is(step),
            |r| r.topic == "xen-pages" && rec_bump(r, "nr_pages"),
        )],
        XlCheck::StepPagesIsReport { step, topic, key } => vec![
            step_copy(
                e,
                format!("Xen's nr_pages at step {step} one more"),
                step_is(step),
                |r| r.topic == "xen-pages" && rec_bump(r, "nr_pages"),
            ),
            agent_copy(e, topic, key, false),
        ],
        XlCheck::Reached { step, within_s } => vec![step_copy(
            e,
            format!("step {step} reached a second after its bound"),
            step_is(step),
            |r| r.topic == "reached" && rec_set(r, "after_s", format!("{}", within_s + 1.0)),
        )],
        XlCheck::CpuFlat { to, .. } => vec![step_copy(
            e,
            format!("the CPU time at step {to} a second more"),
            step_is(to),
            |r| {
                let t = r.get("time_s").and_then(|v| v.parse::<f64>().ok());
                r.topic == "cpu" && t.is_some_and(|t| rec_set(r, "time_s", format!("{}", t + 1.0)))
            },
        )],
        XlCheck::PeerGrant(_) => {
            let last_round = |what: &str, key: &'static str, v: &'static str| {
                let mut copy = e.clone();
                let r = copy
                    .job
                    .steps
                    .iter_mut()
                    .rfind(|r| r.topic == "peer-grant")?;
                rec_set(r, key, v).then_some(Tampered {
                    what: format!("the peer's last round {what}"),
                    copy,
                })
            };
            vec![
                last_round("read a bad word", "bad_words", "1"),
                last_round("mapped again what was ended", "remap", "ok"),
                last_round("found an entry of Xen's table wrong", "table_bad", "1"),
                last_round("saw an entry freed too few", "table_freed", "0"),
                agent_copy(e, "dom0-peer-grant", "first_ref", true),
                exit_not_0(),
            ]
        }
        XlCheck::StepGrantsActive { step, dom, .. } => {
            let key = dom.or(e.job.domid).map(|d| format!("d{d}"));
            vec![key.and_then(|key| {
                step_copy(
                    e,
                    format!("Xen's active grants of {key} at step {step} one more"),
                    |r| r.topic == "gnttab-active" && step_is(step)(r),
                    |r| rec_bump(r, &key),
                )
            })]
        }
        XlCheck::PeerEndedMidUse => vec![step_copy(
            e,
            "the peer saw the agent keep its mapping".into(),
            topic_is("peer-gntalloc-end"),
            |r| rec_set(r, "agent_released", "no"),
        )],
        XlCheck::PeerKilled => vec![
            step_copy(
                e,
                "the agent's table still grants after the peer died".into(),
                topic_is("peer-table"),
                |r| rec_set(r, "granted_entries", "1"),
            ),
            step_copy(
                e,
                "the peer exited 0 instead of dying".into(),
                topic_is("peer-exit"),
                |r| rec_set(r, "status", "0"),
            ),
        ],
        XlCheck::PeerChannel => vec![
            step_copy(
                e,
                "the peer bound another port".into(),
                topic_is("peer-channel"),
                |r| rec_bump(r, "remote_port"),
            ),
            step_copy(
                e,
                "the peer received no event".into(),
                topic_is("peer-channel"),
                |r| rec_set(r, "events_received", "0"),
            ),
            step_copy(
                e,
                "Xen's event at bind was not taken apart".into(),
                topic_is("peer-channel"),
                |r| rec_set(r, "bind_event", "no"),
            ),
            {
                let mut copy = e.clone();
                let hit = copy
                    .log
                    .reports
                    .iter_mut()
                    .find(|r| r.topic == "dom0-peer-events")
                    .map(|r| set(r, "received", "0".into()))
                    .is_some();
                hit.then(|| Tampered {
                    what: "the agent received no event".into(),
                    copy,
                })
            },
        ],
        XlCheck::PeerForeign(_) => vec![
            step_copy(
                e,
                "the peer read a bad word".into(),
                topic_is("peer-foreign"),
                |r| rec_set(r, "bad_words", "1"),
            ),
            step_copy(
                e,
                "Xen mapped a frame the agent had ballooned out".into(),
                topic_is("peer-foreign"),
                |r| rec_set(r, "frames_refused", "0"),
            ),
            agent_copy(e, "dom0-peer-foreign", "first_gfn", false),
            exit_not_0(),
        ],
        XlCheck::PeerGntalloc(_) => vec![
            step_copy(
                e,
                "the peer read a bad word".into(),
                topic_is("peer-gntalloc"),
                |r| rec_set(r, "bad_words", "1"),
            ),
            step_copy(
                e,
                "the peer could not allocate again".into(),
                topic_is("peer-gntalloc"),
                |r| rec_set(r, "realloc", "failed"),
            ),
            agent_copy(e, "dom0-peer-gntalloc", "first_ref", false),
            exit_not_0(),
        ],
        XlCheck::DestroyedEarly => vec![job_copy(e, "the destroyed-early record taken out", |j| {
            let n = j.steps.len();
            j.steps.retain(|r| r.topic != "destroyed-early");
            j.steps.len() < n
        })],
        XlCheck::NothingLost => vec![job_copy(
            e,
            "xl info's free memory after destroy one MiB less",
            |j| match j.free_after_mib.as_mut() {
                Some(m) => {
                    *m = m.wrapping_sub(1);
                    true
                }
                None => false,
            },
        )],
    };
    v.into_iter().flatten().collect()
}

/// Tamper with a passing xl scenario's evidence: its agent checks, its xl
/// checks and the toolstack's maximum (`xl list -l`).
pub fn xl(s: &XlScenario, res: &XlResult) -> Outcome {
    let mut out = Outcome::default();
    let Some(job) = res.job(s.name) else {
        out.unfailing.push("no job to tamper with".into());
        return out;
    };
    let Some(domid) = job.domid else {
        out.unfailing.push("no domid to tamper with".into());
        return out;
    };
    let log = res.logs.get(Source(domid as u16)).clone();
    // The agent's own checks, as `xl_scenarios::evaluate` runs them (its
    // log under d1).
    let mut logs = Logs::default();
    logs.by_source.insert(Source::D1, log.clone());
    let agent = boot(&s.checks, &logs, &[]);
    out.copies += agent.copies;
    out.checks += agent.checks;
    out.unfailing.extend(agent.unfailing);
    let e = XlEvidence {
        job: job.clone(),
        log,
    };
    for c in &s.xl {
        let copies = xl_copies(c, &e);
        if copies.is_empty() {
            out.unfailing.push(format!(
                "xl check {c:?} cannot fail: nothing it reads is in the run to change"
            ));
            continue;
        }
        out.checks += 1;
        for t in copies {
            out.copies += 1;
            if crate::xl_scenarios::check_xl(c, &t.copy.job, &t.copy.log, res).is_none() {
                out.unfailing
                    .push(format!("xl check {c:?} still passes when {}", t.what));
            }
        }
    }
    // The toolstack's maximum, checked for every job whose agent read one.
    if !crate::xl_scenarios::max_applies(s, &e.log) {
        return out;
    }
    out.checks += 1;
    out.copies += 1;
    match job_copy(&e, "xl list -l's target_memkb one page more", |j| {
        j.xl_list_long.as_mut().is_some_and(|r| {
            let v = r.num("target_memkb").map(|k| (k + 4).to_string());
            v.is_some_and(|v| rec_set(r, "target_memkb", v))
        })
    }) {
        Some(t) if crate::xl_scenarios::max_from_toolstack(&t.copy.job, &t.copy.log).is_some() => {}
        Some(t) => out.unfailing.push(format!(
            "the toolstack-maximum check still passes when {}",
            t.what
        )),
        None => out
            .unfailing
            .push("the toolstack-maximum check cannot fail: no `xl list -l` record".into()),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rig::XenDomainDump;
    use crate::scenarios::{count, every, field, field_where, verdict};

    const D0: Source = Source::D0;

    fn log(lines: &[&str]) -> Logs {
        let mut l = AgentLog::default();
        for m in lines {
            let level = if m.starts_with("ERROR ") {
                Level::Error
            } else {
                Level::Info
            };
            l.push(level, m.trim_start_matches("ERROR "));
        }
        let mut logs = Logs::default();
        logs.by_source.insert(D0, l);
        logs
    }

    const RUN: &[&str] = &[
        "report: reservation current=8192 max=8192",
        "report: balloon phase=first current=4096",
        "report: balloon phase=then current=8192",
        "report: image start=0x40000000 end=0x40100000",
        "report: table regions=3",
        "report: table-region start=0x0 end=0x40000000 kind=mmio",
        "report: table-region start=0x40000000 end=0x40100000 kind=reserved:image",
        "report: table-region start=0x40100000 end=0x42000000 kind=ram",
        "report: accounting table_ram=8192 current=8192 unaccounted=0",
        "report: mapping kind=grant dom=1 gfn=0x1 va=0x2 state=made",
        "report: mapping kind=grant dom=1 gfn=0x1 va=0x2 state=released",
        "report: xen-view point=end pages=8192",
        "ERROR negative: refused as it should",
        "verdict: PASS",
    ];

    fn views() -> Vec<XenView> {
        vec![XenView {
            src: D0,
            point: "end".into(),
            pages: Some(8192),
            max: Some(8192),
            xen: Some(XenDomainDump {
                domid: 0,
                fields: [("nr_pages".to_string(), "8192".to_string())].into(),
            }),
            problem: None,
        }]
    }

    #[test]
    fn every_kind_of_check_fails_on_its_tampered_copy() {
        let checks = vec![
            verdict(D0, Verdict::Pass),
            field(D0, "reservation", "current", Is::Num(8192)),
            field(D0, "reservation", "max", Is::Present),
            field_where(D0, "balloon", ("phase", "first"), "current", Is::Num(4096)),
            every(D0, "accounting", "unaccounted", Is::Num(0)),
            count(D0, "table-region", ("kind", "ram"), 1),
            Check::ErrorMentions(D0, "refused"),
            Check::NoErrorMentions(D0, "leak"),
            Check::Equal {
                src: D0,
                topic: "accounting",
                a: "table_ram",
                b: "current",
            },
            Check::Same {
                a: (D0, "reservation", "current"),
                b: (D0, "accounting", "current"),
            },
            Check::TableTiles(D0),
            Check::ImageReserved(D0),
            Check::XenPagesAt {
                src: D0,
                point: "end",
                pages: 8192,
            },
            Check::MappingsBalanced {
                src: D0,
                kinds: &["grant"],
            },
        ];
        let logs = log(RUN);
        for c in &checks {
            assert!(
                !boot_fails(
                    c,
                    &Evidence {
                        logs: logs.clone(),
                        views: views()
                    }
                ),
                "{c:?}"
            );
        }
        let out = boot(&checks, &logs, &views());
        assert_eq!(out.unfailing, Vec::<String>::new());
        assert_eq!(out.checks, checks.len());
        assert!(out.copies > checks.len(), "{out:?}");
    }

    #[test]
    fn a_check_that_accepts_anything_or_reads_nothing_is_named() {
        let logs = log(RUN);
        // At least zero: no tampering can make it fail.
        let out = boot(&[count(D0, "table-region", ("kind", "ram"), 0)], &logs, &[]);
        assert_eq!(out.unfailing.len(), 1, "{out:?}");
        assert!(out.unfailing[0].contains("still passes"), "{out:?}");
        // A field no report has: nothing to change (it would fail the run
        // itself; here it shows the tampering does not invent evidence).
        let out = boot(&[count(D0, "nothing", ("k", "v"), 0)], &logs, &[]);
        assert!(out.unfailing[0].contains("cannot fail"), "{out:?}");
        // Field where `when` selects no report.
        let c = field_where(D0, "balloon", ("phase", "never"), "current", Is::AnyNum);
        assert!(boot(&[c], &logs, &[]).unfailing[0].contains("cannot fail"));
    }

    fn rec(line: &str) -> Record {
        crate::rig::parse_record(line, std::time::Duration::ZERO)
            .unwrap()
            .unwrap()
    }

    #[test]
    fn xl_checks_fail_on_their_tampered_copies() {
        let job = XlJobResult {
            name: "j".into(),
            domid: Some(3),
            xl_list_shutdown: Some(rec("xmrig: xl-list when=shutdown name=j mem_mib=64")),
            xl_list_long: Some(rec(
                "xmrig: xl-list-long when=created name=j max_memkb=65536 target_memkb=65536",
            )),
            xen_pages: Some(rec("xmrig: xen-pages name=j nr_pages=16400 pod_entries=0 pod_cachesize=0")),
            steps: vec![
                rec("xmrig: xen-pages step=0 name=j nr_pages=8192"),
                rec("xmrig: peer-foreign step=1 name=j pages=4 bad_words=0 agent_released=yes frames_refused=4 remap=refused first_gfn=0x100"),
                rec("xmrig: peer-exit step=1 name=j status=0"),
            ],
            ..Default::default()
        };
        let mut l = AgentLog::default();
        for m in [
            "report: reservation current=16400 max=16640",
            "report: dom0-peer-foreign first_gfn=0x100 pages=4",
            "report: service-reached current=16400",
        ] {
            l.push(Level::Info, m);
        }
        let e = XlEvidence { job, log: l };
        let res = XlResult {
            end: crate::rig::XlEnd::Done,
            records: vec![],
            bad_records: vec![],
            jobs: vec![],
            logs: Logs::default(),
            warnings: vec![],
            qemu_stderr: vec![],
            xen_q: vec![],
            console: Default::default(),
            dom0_ready: None,
            problems: vec![],
            log_path: Default::default(),
            elapsed: Default::default(),
        };
        let checks = [
            XlCheck::ListMib(64),
            XlCheck::XenPagesIsLast {
                topic: "service-reached",
                key: "current",
            },
            XlCheck::XenPages(16400),
            XlCheck::PodBacked,
            XlCheck::StepPages {
                step: 0,
                pages: 8192,
            },
            XlCheck::PeerForeign(4),
        ];
        for c in &checks {
            assert_eq!(
                crate::xl_scenarios::check_xl(c, &e.job, &e.log, &res),
                None,
                "{c:?}"
            );
            let copies = xl_copies(c, &e);
            assert!(!copies.is_empty(), "{c:?}");
            for t in copies {
                assert!(
                    crate::xl_scenarios::check_xl(c, &t.copy.job, &t.copy.log, &res).is_some(),
                    "{c:?} passes when {}",
                    t.what
                );
            }
        }
    }
}
