//! The agent's report protocol, parsed from its decoded log messages.
//!
//! One decoded message per log frame:
//!
//! - `report: <topic> key=value key=value ...` — a structured fact. Several
//!   lines may share a topic (`region`, one per memory-map entry).
//! - `verdict: PASS` / `verdict: FAIL` — the run's result.
//! - anything else (errors such as ``cmdline: unknown option `bogus` `` or
//!   `exception: ...`) is kept as a plain message with its level.

use std::collections::BTreeMap;
use std::fmt;

use crate::decode::{AgentLine, Level, Source};

/// One `report:` line: its topic and its fields in the order printed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// The topic (`xen`, `domain`, `region`, ...).
    pub topic: String,
    /// `key=value` pairs, in order.
    pub fields: Vec<(String, String)>,
}

impl Report {
    /// The value of `key`, if the report has it.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "report: {}", self.topic)?;
        for (k, v) in &self.fields {
            write!(f, " {k}={v}")?;
        }
        Ok(())
    }
}

/// The verdict an agent printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// `verdict: PASS`
    Pass,
    /// `verdict: FAIL`
    Fail,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Pass => "PASS",
            Verdict::Fail => "FAIL",
        })
    }
}

/// What one decoded message means.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// A well-formed `report:` line.
    Report(Report),
    /// A `verdict:` line.
    Verdict(Verdict),
    /// A line that starts like a report or verdict but does not parse.
    Malformed(String),
    /// Any other message.
    Other,
}

/// Classify one decoded message.
pub fn parse_message(text: &str) -> Message {
    let text = text.trim();
    if let Some(rest) = text.strip_prefix("verdict:") {
        return match rest.trim() {
            "PASS" => Message::Verdict(Verdict::Pass),
            "FAIL" => Message::Verdict(Verdict::Fail),
            other => Message::Malformed(format!("unknown verdict `{other}`")),
        };
    }
    match text.strip_prefix("report:") {
        Some(rest) => match parse_report(rest) {
            Ok(r) => Message::Report(r),
            Err(e) => Message::Malformed(e),
        },
        None => Message::Other,
    }
}

/// Parse the part after `report:`: a topic word, then `key=value` words. A
/// value may be double-quoted to hold spaces (`name="a b"`).
pub fn parse_report(rest: &str) -> Result<Report, String> {
    let words = split_words(rest)?;
    let mut it = words.into_iter();
    let topic = match it.next() {
        Some(t) if !t.contains('=') && !t.is_empty() => t,
        Some(t) => return Err(format!("report without a topic (starts with `{t}`)")),
        None => return Err("empty report".into()),
    };
    let mut fields: Vec<(String, String)> = Vec::new();
    for w in it {
        let Some((k, v)) = w.split_once('=') else {
            return Err(format!("report `{topic}`: `{w}` is not key=value"));
        };
        if k.is_empty() {
            return Err(format!("report `{topic}`: empty key in `{w}`"));
        }
        if fields.iter().any(|(have, _)| have == k) {
            return Err(format!("report `{topic}`: key `{k}` given twice"));
        }
        let v = v
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(v);
        fields.push((k.to_string(), v.to_string()));
    }
    Ok(Report { topic, fields })
}

/// Split on spaces, keeping double-quoted stretches together.
fn split_words(s: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in s.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            c if c.is_whitespace() && !quoted => {
                if !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if quoted {
        return Err(format!("unbalanced quote in `{}`", s.trim()));
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    Ok(words)
}

/// Everything one agent (one source) said, sorted out.
#[derive(Clone, Debug, Default)]
pub struct AgentLog {
    /// All decoded lines, in order.
    pub lines: Vec<(Level, String)>,
    /// Parsed reports, in order.
    pub reports: Vec<Report>,
    /// Verdicts printed (normally exactly one).
    pub verdicts: Vec<Verdict>,
    /// Report/verdict lines that did not parse.
    pub malformed: Vec<String>,
}

impl AgentLog {
    /// Add one decoded message.
    pub fn push(&mut self, level: Level, text: &str) {
        self.lines.push((level, text.to_string()));
        match parse_message(text) {
            Message::Report(r) => self.reports.push(r),
            Message::Verdict(v) => self.verdicts.push(v),
            Message::Malformed(e) => self.malformed.push(format!("{e}: `{text}`")),
            Message::Other => {}
        }
    }

    /// All reports of a topic.
    pub fn topic<'a>(&'a self, topic: &'a str) -> impl Iterator<Item = &'a Report> + 'a {
        self.reports.iter().filter(move |r| r.topic == topic)
    }

    /// The verdict: FAIL if any `verdict: FAIL` was printed (a later PASS
    /// does not undo it), else the last one printed.
    pub fn verdict(&self) -> Option<Verdict> {
        if self.verdicts.contains(&Verdict::Fail) {
            return Some(Verdict::Fail);
        }
        self.verdicts.last().copied()
    }

    /// Messages at error level.
    pub fn errors(&self) -> impl Iterator<Item = &str> {
        self.lines
            .iter()
            .filter(|(l, _)| *l == Level::Error)
            .map(|(_, t)| t.as_str())
    }
}

/// The agents' logs of one boot, by source.
#[derive(Clone, Debug, Default)]
pub struct Logs {
    /// One log per source that printed anything.
    pub by_source: BTreeMap<Source, AgentLog>,
}

impl Logs {
    /// Sort one decoded line into its source's log.
    pub fn push(&mut self, line: &AgentLine) {
        self.by_source
            .entry(line.source)
            .or_default()
            .push(line.level, &line.message);
    }

    /// The log of `source` (empty if it printed nothing).
    pub fn get(&self, source: Source) -> &AgentLog {
        static EMPTY: std::sync::OnceLock<AgentLog> = std::sync::OnceLock::new();
        self.by_source
            .get(&source)
            .unwrap_or_else(|| EMPTY.get_or_init(AgentLog::default))
    }
}

/// Parse a number as the agent prints it: decimal or `0x` hexadecimal.
pub fn parse_number(s: &str) -> Option<u64> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(&hex.replace('_', ""), 16).ok(),
        None => s.replace('_', "").parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_keep_topic_and_order() {
        let Message::Report(r) = parse_message("report: xen version=4.17 extra=.7") else {
            panic!()
        };
        assert_eq!(r.topic, "xen");
        assert_eq!(
            r.fields,
            [
                ("version".into(), "4.17".into()),
                ("extra".into(), ".7".into())
            ]
        );
        assert_eq!(r.get("extra"), Some(".7"));
        assert_eq!(r.get("nope"), None);
        assert_eq!(r.to_string(), "report: xen version=4.17 extra=.7");

        let Message::Report(r) = parse_message("report:   region start=0x0 end=0x9f000 kind=ram  ")
        else {
            panic!()
        };
        assert_eq!(r.topic, "region");
        assert_eq!(r.get("end").and_then(parse_number), Some(0x9f000));
    }

    #[test]
    fn quoted_values_and_empty_values() {
        let Message::Report(r) = parse_message(r#"report: note text="a b c" empty="#) else {
            panic!()
        };
        assert_eq!(r.get("text"), Some("a b c"));
        assert_eq!(r.get("empty"), Some(""));
    }

    #[test]
    fn verdicts_and_others() {
        assert_eq!(
            parse_message("verdict: PASS"),
            Message::Verdict(Verdict::Pass)
        );
        assert_eq!(
            parse_message("verdict: FAIL"),
            Message::Verdict(Verdict::Fail)
        );
        assert!(matches!(
            parse_message("verdict: MAYBE"),
            Message::Malformed(_)
        ));
        assert_eq!(
            parse_message("cmdline: unknown option `bogus`"),
            Message::Other
        );
        assert_eq!(parse_message("reporting for duty"), Message::Other);
    }

    #[test]
    fn malformed_reports() {
        for bad in [
            "report:",
            "report: =1",
            "report: xen version",
            "report: xen a=1 a=2",
            "report: xen =3",
            r#"report: xen a="open"#,
        ] {
            assert!(matches!(parse_message(bad), Message::Malformed(_)), "{bad}");
        }
    }

    #[test]
    fn agent_log_sorts_lines() {
        let mut log = AgentLog::default();
        log.push(
            Level::Info,
            "report: domain domid=0 source=cpuid privileged=yes",
        );
        log.push(Level::Info, "report: region start=0x0 end=0x1000 kind=ram");
        log.push(
            Level::Info,
            "report: region start=0x1000 end=0x2000 kind=reserved",
        );
        log.push(Level::Error, "cmdline: unknown option `bogus`");
        log.push(Level::Info, "report: broken");
        log.push(Level::Error, "verdict: FAIL");
        assert_eq!(log.topic("region").count(), 2);
        assert_eq!(log.verdict(), Some(Verdict::Fail));
        assert_eq!(
            log.errors().collect::<Vec<_>>(),
            ["cmdline: unknown option `bogus`", "verdict: FAIL"]
        );
        // `report: broken` has a topic and no fields: that is well-formed.
        assert!(log.malformed.is_empty());
        assert_eq!(log.lines.len(), 6);
        // A FAIL is never undone by a later PASS.
        log.push(Level::Info, "verdict: PASS");
        assert_eq!(log.verdict(), Some(Verdict::Fail));
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_number("65536"), Some(65536));
        assert_eq!(parse_number("0x10000"), Some(65536));
        assert_eq!(parse_number("0x1_0000"), Some(65536));
        assert_eq!(parse_number("yes"), None);
        assert_eq!(parse_number(""), None);
    }
}
