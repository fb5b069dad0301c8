//! `cargo xtask fuzz`: the libFuzzer targets of `fuzz/`, built with plain
//! `cargo build` on the pinned stable toolchain (no nightly, no cargo-fuzz)
//! and run with a time limit each; and the smoke run of every target that
//! `cargo xtask test` makes.
//!
//! The targets are instrumented as cargo-fuzz instruments them (see
//! [`rustflags`]), minus the sanitizer, which needs nightly; overflow
//! checks and debug assertions are on. `--target <host>` keeps the flags
//! off build scripts and proc macros, which cannot link libFuzzer's hooks.
//!
//! Where things go (under the cargo target directory):
//! - `fuzz/`: the build;
//! - `fuzz-corpus/<target>/`: the working corpus, kept between runs (the
//!   committed seeds in `fuzz/corpus/<target>/` are read, never written);
//! - `fuzz-artifacts/<target>/`: inputs that crashed, timed out or ran out
//!   of memory;
//! - `fuzz-logs/<target>.log`: libFuzzer's output of the last run.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::agent;

/// The targets, in the order they run.
pub const TARGETS: &[&str] = &[
    "fdt",
    "memmap",
    "cmdline",
    "region",
    "reservation",
    "decode",
];

/// Seconds per target for `cargo xtask fuzz` without `--time`.
pub const DEFAULT_SECS: u64 = 60;

/// Seconds per target in `cargo xtask test`'s smoke run.
pub const SMOKE_SECS: u64 = 10;

/// What libFuzzer may spend on one input before it counts as a hang.
const INPUT_TIMEOUT_SECS: u64 = 20;

/// The instrumentation flags: cargo-fuzz's (`src/project.rs`: sancov with
/// inline 8-bit counters, the PC table, compare tracing and stack depth,
/// no branch folding, `--cfg fuzzing`, one codegen unit) on stable, plus
/// debug assertions and overflow checks.
pub fn rustflags() -> String {
    [
        "-Cpasses=sancov-module",
        "-Cllvm-args=-sanitizer-coverage-level=4",
        "-Cllvm-args=-sanitizer-coverage-inline-8bit-counters",
        "-Cllvm-args=-sanitizer-coverage-pc-table",
        "-Cllvm-args=-sanitizer-coverage-trace-compares",
        "-Cllvm-args=-sanitizer-coverage-stack-depth",
        "-Cllvm-args=-simplifycfg-branch-fold-threshold=0",
        "--cfg",
        "fuzzing",
        "-Cdebug-assertions",
        "-Coverflow-checks",
        "-Ccodegen-units=1",
    ]
    .join(" ")
}

/// `cargo xtask fuzz`'s options.
#[derive(Debug, PartialEq, Eq)]
pub struct FuzzArgs {
    /// Seconds per target.
    pub secs: u64,
    /// The targets to run.
    pub targets: Vec<&'static str>,
    /// `--smoke`: the smoke run of `cargo xtask test` instead.
    pub smoke: bool,
}

/// Parse `[--time SECS] [TARGET]...` or `--smoke`.
pub fn parse_args(args: &[String]) -> Result<FuzzArgs> {
    let mut secs = DEFAULT_SECS;
    let mut targets = Vec::new();
    let mut smoke = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--smoke" {
            smoke = true;
        } else if let Some(v) = crate::value("--time", a, &mut it)? {
            secs = v
                .parse()
                .ok()
                .filter(|&s| s > 0)
                .with_context(|| format!("--time {v}: not a positive number of seconds"))?;
        } else if a.starts_with('-') {
            bail!("fuzz: unknown option `{a}`");
        } else {
            let Some(t) = TARGETS.iter().find(|t| **t == a.as_str()) else {
                bail!(
                    "fuzz: unknown target `{a}` (targets: {})",
                    TARGETS.join(", ")
                );
            };
            if !targets.contains(t) {
                targets.push(*t);
            }
        }
    }
    if smoke && args.len() > 1 {
        bail!("fuzz: --smoke takes no other option");
    }
    if targets.is_empty() {
        targets = TARGETS.to_vec();
    }
    Ok(FuzzArgs {
        secs,
        targets,
        smoke,
    })
}

/// The host's target triple, from `rustc -vV`.
fn host_triple() -> Result<String> {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let out = Command::new(rustc)
        .arg("-vV")
        .output()
        .context("running rustc -vV")?;
    parse_host(&String::from_utf8_lossy(&out.stdout)).context("rustc -vV names no host")
}

fn parse_host(vv: &str) -> Option<String> {
    vv.lines()
        .find_map(|l| l.strip_prefix("host: "))
        .map(|h| h.trim().to_string())
}

fn fuzz_dir() -> PathBuf {
    agent::workspace_root().join("fuzz")
}

/// Build every target; returns the directory holding the binaries.
pub fn build() -> Result<PathBuf> {
    let host = host_triple()?;
    let target_dir = agent::target_dir().join("fuzz");
    eprintln!("xtask: building the fuzz targets ({host}, sanitizer coverage)");
    let status = agent::cargo()
        .args([
            "build",
            "--release",
            "--locked",
            "--bins",
            "--manifest-path",
        ])
        .arg(fuzz_dir().join("Cargo.toml"))
        .args(["--target", &host, "--target-dir"])
        .arg(&target_dir)
        .env("RUSTFLAGS", rustflags())
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .stdin(Stdio::null())
        .status()
        .context("running cargo build for fuzz/")?;
    if !status.success() {
        bail!(
            "building the fuzz targets failed ({status}); libfuzzer-sys compiles libFuzzer \
             and needs a C++ compiler (c++/g++)"
        );
    }
    Ok(target_dir.join(host).join("release"))
}

/// What libFuzzer's output says about a run.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Inputs run (`stat::number_of_executed_units`).
    pub execs: u64,
    /// Inputs per second (`stat::average_exec_per_sec`).
    pub per_sec: u64,
    /// Coverage counters hit (`cov:` of the last status line).
    pub cov: u64,
    /// Inputs in the corpus (`corp:` of the last status line).
    pub corpus: u64,
    /// The input that failed (`Test unit written to PATH`).
    pub artifact: Option<String>,
    /// libFuzzer's summary of a failure (`SUMMARY: libFuzzer: ...`) or the
    /// panic message.
    pub failure: Option<String>,
}

/// Read libFuzzer's output (stderr).
pub fn parse_output(text: &str) -> Stats {
    let mut s = Stats::default();
    let num = |v: &str| v.trim().parse::<u64>().unwrap_or(0);
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        if let Some(v) = line.strip_prefix("stat::number_of_executed_units:") {
            s.execs = num(v);
        } else if let Some(v) = line.strip_prefix("stat::average_exec_per_sec:") {
            s.per_sec = num(v);
        } else if let Some(i) = line.find("Test unit written to ") {
            s.artifact = Some(line[i + "Test unit written to ".len()..].trim().to_string());
        } else if let Some(v) = line.strip_prefix("SUMMARY: libFuzzer: ") {
            s.failure.get_or_insert_with(|| v.trim().to_string());
        } else if line.contains("panicked at") {
            // The location, and the message on the next line.
            let message = lines.peek().map_or("", |m| m.trim());
            s.failure = Some(format!("{} {message}", line.trim()).trim().to_string());
        }
        let field = |name: &str| {
            line.split_whitespace()
                .skip_while(|w| *w != name)
                .nth(1)
                .map(|v| num(v.split('/').next().unwrap_or("")))
        };
        if let (Some(cov), Some(corp)) = (field("cov:"), field("corp:")) {
            s.cov = cov;
            s.corpus = corp;
        }
    }
    s
}

/// One target's run.
#[derive(Debug)]
pub struct Outcome {
    /// The target.
    pub target: &'static str,
    /// Wall time, seconds.
    pub wall: f64,
    /// What libFuzzer reported.
    pub stats: Stats,
    /// Whether libFuzzer exited 0.
    pub ok: bool,
    /// Its output.
    pub log: PathBuf,
}

impl Outcome {
    /// One line for the summary.
    pub fn summary(&self) -> String {
        format!(
            "{:.0} s, {} runs ({}/s), cov {}, corpus {}",
            self.wall, self.stats.execs, self.stats.per_sec, self.stats.cov, self.stats.corpus
        )
    }

    /// Why it failed, with how to reproduce it.
    pub fn failure(&self, bin: &Path) -> Vec<String> {
        let mut why = vec![format!(
            "libFuzzer failed: {}",
            self.stats.failure.as_deref().unwrap_or("(no summary)")
        )];
        if let Some(a) = &self.stats.artifact {
            why.push(format!("reproducer: {a}"));
            why.push(format!("rerun: {} {a}", bin.join(self.target).display()));
        }
        why.push(format!("log: {}", self.log.display()));
        why
    }
}

/// Run `target` for `secs` seconds on `corpus` (written to) and the
/// committed seeds (read only).
pub fn run(bin: &Path, target: &'static str, secs: u64, corpus: &Path) -> Result<Outcome> {
    let root = agent::target_dir();
    let artifacts = root.join("fuzz-artifacts").join(target);
    let logs = root.join("fuzz-logs");
    for d in [corpus, &artifacts, &logs] {
        fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let log = logs.join(format!("{target}.log"));
    let out = fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let start = Instant::now();
    let status = Command::new(bin.join(target))
        .arg(corpus)
        .arg(fuzz_dir().join("corpus").join(target))
        .arg(format!("-max_total_time={secs}"))
        .arg(format!("-timeout={INPUT_TIMEOUT_SECS}"))
        .args(["-rss_limit_mb=2048", "-print_final_stats=1"])
        // libFuzzer joins the prefix and the file name as they are.
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .status()
        .with_context(|| format!("running {}", bin.join(target).display()))?;
    let text = fs::read_to_string(&log).unwrap_or_default();
    Ok(Outcome {
        target,
        wall: start.elapsed().as_secs_f64(),
        stats: parse_output(&text),
        ok: status.success(),
        log,
    })
}

/// `cargo xtask fuzz [--time SECS] [TARGET]...` or `--smoke`.
pub fn fuzz(args: &[String]) -> Result<ExitCode> {
    let a = parse_args(args)?;
    if a.smoke {
        let results = smoke();
        let failed = results.iter().filter(|(_, r)| r.is_err()).count();
        for (name, r) in &results {
            match r {
                Ok(detail) => println!("PASS {name}{detail}"),
                Err(why) => {
                    println!("FAIL {name}");
                    for l in why {
                        println!("  - {l}");
                    }
                }
            }
        }
        println!("{} passed, {failed} failed", results.len() - failed);
        return Ok(if failed == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }
    let bin = build()?;
    let mut failed = 0;
    for &t in &a.targets {
        eprintln!("xtask: fuzzing {t} for {} s", a.secs);
        let corpus = agent::target_dir().join("fuzz-corpus").join(t);
        let o = run(&bin, t, a.secs, &corpus)?;
        if o.ok {
            println!("PASS fuzz-{t} ({})", o.summary());
        } else {
            failed += 1;
            println!("FAIL fuzz-{t} ({})", o.summary());
            for l in o.failure(&bin) {
                println!("  - {l}");
            }
        }
    }
    println!("{} passed, {failed} failed", a.targets.len() - failed);
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `cargo xtask test`'s smoke run: every target for [`SMOKE_SECS`] from
/// its committed seeds (a fresh corpus each time). One result per target
/// (`fuzz-smoke-NAME`): the detail to print, or why it failed.
pub fn smoke() -> Vec<(String, Result<String, Vec<String>>)> {
    let name = |t: &str| format!("fuzz-smoke-{t}");
    let bin = match build() {
        Ok(b) => b,
        Err(e) => {
            return TARGETS
                .iter()
                .map(|t| (name(t), Err(vec![format!("{e:#}")])))
                .collect()
        }
    };
    TARGETS
        .iter()
        .map(|&t| {
            let corpus = agent::target_dir().join("fuzz-smoke").join(t);
            let _ = fs::remove_dir_all(&corpus);
            let r = match run(&bin, t, SMOKE_SECS, &corpus) {
                Ok(o) if o.ok && o.stats.execs > 0 => Ok(format!(" ({})", o.summary())),
                Ok(o) if o.ok => Err(vec![format!(
                    "libFuzzer ran no input; log: {}",
                    o.log.display()
                )]),
                Ok(o) => Err(o.failure(&bin)),
                Err(e) => Err(vec![format!("{e:#}")]),
            };
            (name(t), r)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn arguments() {
        assert_eq!(
            parse_args(&[]).unwrap(),
            FuzzArgs {
                secs: DEFAULT_SECS,
                targets: TARGETS.to_vec(),
                smoke: false
            }
        );
        assert_eq!(
            parse_args(&args(&["--time", "5", "region", "fdt", "region"])).unwrap(),
            FuzzArgs {
                secs: 5,
                targets: vec!["region", "fdt"],
                smoke: false
            }
        );
        assert_eq!(parse_args(&args(&["--time=7"])).unwrap().secs, 7);
        assert!(parse_args(&args(&["--smoke"])).unwrap().smoke);
        for bad in [
            &["--time", "0"][..],
            &["--time", "x"],
            &["--time"],
            &["nosuch"],
            &["--jobs", "2"],
            &["--smoke", "fdt"],
        ] {
            assert!(parse_args(&args(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn flags_are_cargo_fuzz_s_on_stable() {
        let f = rustflags();
        for want in [
            "-Cpasses=sancov-module",
            "-sanitizer-coverage-inline-8bit-counters",
            "-sanitizer-coverage-pc-table",
            "-sanitizer-coverage-trace-compares",
            "--cfg fuzzing",
            "-Coverflow-checks",
        ] {
            assert!(f.contains(want), "{want} missing from {f}");
        }
        assert!(!f.contains("-Z"), "a nightly-only flag: {f}");
    }

    #[test]
    fn host_from_rustc() {
        let vv = "rustc 1.95.0 (59807616e 2026-04-14)\nbinary: rustc\nhost: x86_64-unknown-linux-gnu\nrelease: 1.95.0\n";
        assert_eq!(parse_host(vv).as_deref(), Some("x86_64-unknown-linux-gnu"));
        assert_eq!(parse_host("rustc 1.0"), None);
    }

    #[test]
    fn libfuzzer_output() {
        let ok = "\
#2\tINITED cov: 383 ft: 770 corp: 4/9064b exec/s: 0 rss: 27Mb
#33717\tDONE   cov: 706 ft: 3243 corp: 415/619Kb lim: 7159 exec/s: 3746 rss: 29Mb
Done 33717 runs in 9 second(s)
stat::number_of_executed_units: 33717
stat::average_exec_per_sec:     3746
stat::new_units_added:          411
";
        assert_eq!(
            parse_output(ok),
            Stats {
                execs: 33717,
                per_sec: 3746,
                cov: 706,
                corpus: 415,
                artifact: None,
                failure: None
            }
        );
        let crash = "\
#4\tINITED cov: 885 ft: 1130 corp: 3/524b exec/s: 0 rss: 28Mb

thread '<unnamed>' (10451) panicked at fuzz_targets/reservation.rs:113:17:
step 18 op 9: 0x49c (ram) is not populated
==10451== ERROR: libFuzzer: deadly signal
SUMMARY: libFuzzer: deadly signal
MS: 1 InsertByte-; base unit: b38b22f8d4011bdc06fa10df74ee0740a85ae334
artifact_prefix='/t/fuzz-artifacts/reservation/'; Test unit written to /t/fuzz-artifacts/reservation/crash-ee2b
Base64: uczJ
stat::number_of_executed_units: 196
";
        let s = parse_output(crash);
        assert_eq!(
            s.artifact.as_deref(),
            Some("/t/fuzz-artifacts/reservation/crash-ee2b")
        );
        assert_eq!(
            s.failure.as_deref(),
            Some(
                "thread '<unnamed>' (10451) panicked at fuzz_targets/reservation.rs:113:17: \
                 step 18 op 9: 0x49c (ram) is not populated"
            )
        );
        assert_eq!((s.execs, s.cov, s.corpus), (196, 885, 3));
        let o = Outcome {
            target: "reservation",
            wall: 1.0,
            stats: s,
            ok: false,
            log: PathBuf::from("/t/fuzz-logs/reservation.log"),
        };
        let why = o.failure(Path::new("/b"));
        assert!(why
            .iter()
            .any(|l| l == "rerun: /b/reservation /t/fuzz-artifacts/reservation/crash-ee2b"));
    }

    /// The committed corpus has seeds for every target, and the fuzz crate
    /// names exactly these targets.
    #[test]
    fn every_target_has_seeds_and_a_binary() {
        let manifest = fs::read_to_string(fuzz_dir().join("Cargo.toml")).unwrap();
        for t in TARGETS {
            let seeds = fs::read_dir(fuzz_dir().join("corpus").join(t))
                .unwrap_or_else(|e| panic!("fuzz/corpus/{t}: {e}"))
                .count();
            assert!(seeds > 0, "no seeds for {t}");
            assert!(
                manifest.contains(&format!("name = \"{t}\"")),
                "fuzz/Cargo.toml has no [[bin]] {t}"
            );
            assert!(fuzz_dir()
                .join("fuzz_targets")
                .join(format!("{t}.rs"))
                .exists());
        }
        assert_eq!(manifest.matches("[[bin]]").count(), TARGETS.len());
    }
}
