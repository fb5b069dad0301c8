//! Xen's own view of a domain at the agent's pauses (issue 14, item 1).
//!
//! An agent started with `xen-view=SECS` stops at each point where its
//! region table and Xen's count must agree and prints
//! `report: xen-view point=P pages=N max=M input=I` (see the agent's
//! `xenview` module). The [`Viewer`] answers each pause, one at a time, by
//! typing on Xen's serial console:
//!
//! 1. `CTRL-a` three times, until Xen says `*** Serial input to Xen`;
//! 2. `q`: Xen dumps every domain's `nr_pages` and `max_pages`, read with
//!    [`QDumpParser`] until the paused domain's block is complete;
//! 3. `CTRL-a` three times, until Xen says `*** Serial input to DOMn` for
//!    the paused domain;
//! 4. `c`, which the agent reads (dom0: `CONSOLEIO_read`; a dom0less domU:
//!    its vpl011) and goes on.
//!
//! [`problems`] then compares Xen's numbers with the agent's: the table's
//! count against Xen's own counter, which the agent did not write.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::decode::{Event, Source};
use crate::report::{parse_message, parse_number, Logs, Message};
use crate::rig::{QDumpParser, XenDomainDump};

/// `CTRL-a` three times: Xen rotates its serial input (Xen, dom0, the
/// boot-time domUs).
const SWITCH: &[u8] = b"\x01\x01\x01";
/// How many rotations one target may take: Xen, DOM0, DOM1, ... DOM3.
const MAX_SWITCHES: u32 = 6;
/// How long one answer may take before the viewer gives up on it.
const ANSWER_BOUND: Duration = Duration::from_secs(60);

/// Whom Xen gives its serial input to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// Xen itself: keys are debug keys.
    Xen,
    /// Domain N.
    Dom(u32),
}

/// Xen's line announcing where serial input goes now, if `line` is one.
pub fn input_switch(line: &str) -> Option<Target> {
    let rest = line.split_once("*** Serial input to ")?.1;
    if rest.starts_with("Xen") {
        return Some(Target::Xen);
    }
    let digits: String = rest
        .strip_prefix("DOM")?
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok().map(Target::Dom)
}

/// One pause and what Xen said at it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XenView {
    /// The agent that paused.
    pub src: Source,
    /// Its `point=`.
    pub point: String,
    /// Its `pages=`: what its table accounts for.
    pub pages: Option<u64>,
    /// Its `max=`: the maximum reservation it was told.
    pub max: Option<u64>,
    /// Xen's debug-key `q` block for the domain, once read.
    pub xen: Option<XenDomainDump>,
    /// Why the pause was not answered, if it was not.
    pub problem: Option<String>,
}

impl XenView {
    /// The domain the pause belongs to (the console source's number).
    pub fn domid(&self) -> u32 {
        u32::from(self.src.0)
    }
}

enum Phase {
    Idle,
    ToXen { switches: u32 },
    Dumping(QDumpParser),
    ToDom { switches: u32 },
}

/// Answers the agents' `xen-view` pauses, one at a time.
pub struct Viewer {
    queue: VecDeque<XenView>,
    current: Option<(XenView, Instant)>,
    phase: Phase,
    input: Option<Target>,
    /// Every pause seen, answered or not, in order.
    pub views: Vec<XenView>,
}

impl Default for Viewer {
    fn default() -> Self {
        Viewer {
            queue: VecDeque::new(),
            current: None,
            phase: Phase::Idle,
            input: None,
            views: Vec::new(),
        }
    }
}

impl Viewer {
    /// Take one console line and the agent events it completed; returns what
    /// to type on the console (empty: nothing).
    pub fn line(&mut self, line: &str, events: &[Event]) -> Vec<u8> {
        let switched = input_switch(line);
        if let Some(t) = switched {
            self.input = Some(t);
        }
        for e in events {
            let Event::Agent(a) = e else { continue };
            let Message::Report(r) = parse_message(&a.message) else {
                continue;
            };
            if r.topic != "xen-view" {
                continue;
            }
            let mut v = XenView {
                src: a.source,
                point: r.get("point").unwrap_or("?").to_string(),
                pages: r.get("pages").and_then(parse_number),
                max: r.get("max").and_then(parse_number),
                xen: None,
                problem: None,
            };
            if r.get("input") == Some("none") {
                v.problem = Some("the agent has no serial input to be answered on".into());
                self.views.push(v);
            } else {
                self.queue.push_back(v);
            }
        }
        let mut out = Vec::new();
        let stale = match &self.current {
            Some((_, since)) if since.elapsed() > ANSWER_BOUND => {
                Some(format!("no answer within {} s", ANSWER_BOUND.as_secs()))
            }
            Some(_) if line.contains("Cannot send chars to Dom") => {
                Some(format!("Xen could not pass the answer on: {line}"))
            }
            _ => None,
        };
        if let Some(why) = stale {
            self.fail(&why);
        }
        let dom = self.current.as_ref().map(|(v, _)| v.domid());
        // What this line means for the pause being answered.
        enum Step {
            Wait,
            Type(&'static [u8]),
            ToXenAgain,
            Dumped(XenDomainDump),
            Answered,
            ToDomAgain,
            Fail(&'static str),
        }
        let step = match &mut self.phase {
            Phase::Idle => Step::Wait,
            Phase::ToXen { switches } => match switched {
                Some(Target::Xen) => Step::Type(b"q"),
                Some(_) if *switches >= MAX_SWITCHES => {
                    Step::Fail("serial input never reached Xen")
                }
                Some(_) => {
                    *switches += 1;
                    Step::ToXenAgain
                }
                None => Step::Wait,
            },
            Phase::Dumping(parser) => {
                parser.line(line);
                match parser.dumps.iter().find(|d| Some(d.domid) == dom) {
                    Some(block) => Step::Dumped(block.clone()),
                    None => Step::Wait,
                }
            }
            Phase::ToDom { switches } => match switched {
                Some(Target::Dom(d)) if Some(d) == dom => Step::Answered,
                Some(_) if *switches >= MAX_SWITCHES => {
                    Step::Fail("serial input never came back to the paused domain")
                }
                Some(_) => {
                    *switches += 1;
                    Step::ToDomAgain
                }
                None => Step::Wait,
            },
        };
        match step {
            Step::Wait => {}
            Step::Type(b) => {
                self.phase = Phase::Dumping(QDumpParser::default());
                out.extend_from_slice(b);
            }
            Step::ToXenAgain | Step::ToDomAgain => out.extend_from_slice(SWITCH),
            Step::Dumped(block) => {
                if let Some((v, _)) = &mut self.current {
                    v.xen = Some(block);
                }
                self.phase = Phase::ToDom { switches: 0 };
                out.extend_from_slice(SWITCH);
            }
            Step::Answered => {
                out.push(b'c');
                self.finish();
            }
            Step::Fail(why) => self.fail(why),
        }
        if matches!(self.phase, Phase::Idle) && self.current.is_none() {
            if let Some(v) = self.queue.pop_front() {
                self.current = Some((v, Instant::now()));
                if self.input == Some(Target::Xen) {
                    self.phase = Phase::Dumping(QDumpParser::default());
                    out.push(b'q');
                } else {
                    self.phase = Phase::ToXen { switches: 0 };
                    out.extend_from_slice(SWITCH);
                }
            }
        }
        out
    }

    fn fail(&mut self, why: &str) {
        if let Some((v, _)) = &mut self.current {
            v.problem = Some(why.to_string());
        }
        self.finish();
    }

    fn finish(&mut self) {
        if let Some((v, _)) = self.current.take() {
            self.views.push(v);
        }
        self.phase = Phase::Idle;
    }

    /// Everything seen, the pauses still open marked unanswered.
    pub fn finish_all(mut self) -> Vec<XenView> {
        if let Some((mut v, _)) = self.current.take() {
            v.problem
                .get_or_insert_with(|| "the run ended before the answer".into());
            self.views.push(v);
        }
        for mut v in self.queue.drain(..) {
            v.problem = Some("the run ended before the runner got to it".into());
            self.views.push(v);
        }
        self.views
    }
}

/// What is wrong between the agents' pauses and Xen's view of them:
/// unanswered pauses, and every `nr_pages` / `max_pages` that differs from
/// the agent's `pages` / `max`. With `asked` (the agents were started with
/// `xen-view=`), an agent that printed `verdict: PASS` must have paused at
/// least once, and every `xen-view` report must have been answered.
pub fn problems(views: &[XenView], logs: &Logs, asked: bool) -> Vec<String> {
    let mut out = Vec::new();
    for v in views {
        let at = format!("[{}] xen-view point={}", v.src, v.point);
        if let Some(p) = &v.problem {
            out.push(format!("{at}: {p}"));
            continue;
        }
        let Some(x) = &v.xen else {
            out.push(format!("{at}: Xen's view was not read"));
            continue;
        };
        for (key, agent) in [("nr_pages", v.pages), ("max_pages", v.max)] {
            let xen = x.fields.get(key).and_then(|s| parse_number(s));
            match (agent, xen) {
                (Some(a), Some(n)) if a == n => {}
                (a, n) => out.push(format!(
                    "{at}: Xen's {key} is {}, the agent's table says {}",
                    n.map_or("missing".into(), |n| n.to_string()),
                    a.map_or("nothing".into(), |a| a.to_string())
                )),
            }
        }
    }
    if asked {
        for (src, log) in &logs.by_source {
            let reports = log.topic("xen-view").count();
            let seen = views.iter().filter(|v| v.src == *src).count();
            if reports != seen {
                out.push(format!(
                    "[{src}] {reports} xen-view reports, {seen} seen by the runner"
                ));
            }
            if reports == 0 && log.verdict() == Some(crate::report::Verdict::Pass) {
                out.push(format!(
                    "[{src}] passed without pausing once for Xen's own view (xen-view)"
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{AgentLine, Level};

    fn agent(src: Source, m: &str) -> Vec<Event> {
        vec![Event::Agent(AgentLine {
            source: src,
            level: Level::Info,
            message: m.into(),
            timestamp: None,
        })]
    }

    const Q_D0: &[&str] = &[
        "(XEN) [   3.1] 'q' pressed -> dumping domain info (now = 3100000000)",
        "(XEN) [   3.1] General information for domain 0:",
        "(XEN) [   3.1]     refcnt=3 dying=0 pause_count=0",
        "(XEN) [   3.1]     nr_pages=40960 xenheap_pages=0 dirty_cpus={0} max_pages=65536",
        "(XEN) [   3.1] NODE affinity for domain 0: [0]",
    ];

    /// Drive a viewer through one dom0 pause; returns it and what it typed.
    fn one_pause(q: &[&str]) -> (Viewer, Vec<Vec<u8>>) {
        let mut v = Viewer::default();
        let mut typed = Vec::new();
        typed.push(v.line(
            "(XEN) [   2.0] *** Serial input to DOM0 (type 'CTRL-a' three times to switch input)",
            &[],
        ));
        typed.push(v.line(
            "",
            &agent(
                Source::D0,
                "report: xen-view point=first pages=40960 max=65536 input=console-io wait=30",
            ),
        ));
        typed.push(v.line(
            "(XEN) [   3.0] *** Serial input to Xen (type 'CTRL-a' three times to switch input)",
            &[],
        ));
        for l in q {
            typed.push(v.line(l, &[]));
        }
        typed.push(v.line(
            "(XEN) [   3.2] *** Serial input to DOM0 (type 'CTRL-a' three times to switch input)",
            &[],
        ));
        (v, typed)
    }

    #[test]
    fn answers_a_pause_through_xen() {
        let (v, typed) = one_pause(Q_D0);
        let all: Vec<u8> = typed.concat();
        assert_eq!(all, b"\x01\x01\x01q\x01\x01\x01c");
        let views = v.finish_all();
        assert_eq!(views.len(), 1);
        let x = views[0].xen.as_ref().unwrap();
        assert_eq!(x.fields["nr_pages"], "40960");
        let mut logs = Logs::default();
        logs.push(&AgentLine {
            source: Source::D0,
            level: Level::Info,
            message: "report: xen-view point=first pages=40960 max=65536 input=console-io".into(),
            timestamp: None,
        });
        assert_eq!(problems(&views, &logs, true), Vec::<String>::new());
    }

    #[test]
    fn a_count_xen_does_not_share_fails() {
        let q: Vec<String> = Q_D0.iter().map(|l| l.replace("40960", "40961")).collect();
        let q: Vec<&str> = q.iter().map(String::as_str).collect();
        let (v, _) = one_pause(&q);
        let p = problems(&v.finish_all(), &Logs::default(), false);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].contains("nr_pages is 40961"), "{p:?}");
    }

    #[test]
    fn unanswered_and_missing_pauses_fail() {
        let mut v = Viewer::default();
        v.line(
            "",
            &agent(
                Source::D1,
                "report: xen-view point=start pages=1 max=1 input=vpl011",
            ),
        );
        let views = v.finish_all();
        assert!(problems(&views, &Logs::default(), false)[0].contains("ended before"));
        // An agent that passed without one pause, when pauses were asked.
        let mut logs = Logs::default();
        logs.push(&AgentLine {
            source: Source::D0,
            level: Level::Info,
            message: "verdict: PASS".into(),
            timestamp: None,
        });
        assert!(problems(&[], &logs, true)[0].contains("without pausing"));
        assert!(problems(&[], &logs, false).is_empty());
    }

    #[test]
    fn input_switch_lines() {
        assert_eq!(
            input_switch("(XEN) [ 1.0] *** Serial input to DOM12 (type 'CTRL-a' ...)"),
            Some(Target::Dom(12))
        );
        assert_eq!(
            input_switch("(XEN) *** Serial input to Xen (type"),
            Some(Target::Xen)
        );
        assert_eq!(input_switch("(XEN) nothing"), None);
    }
}
