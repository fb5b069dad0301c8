//! Mutation tests of the scenario checks (issue 14, item 2): deliberately
//! broken agents, each of which must make its scenario fail.
//!
//! Every entry names a fault the agent's `mutant` module plants (an agent
//! built with `XENMEM_MUTANT=NAME`, or one built with `XENMEM_MUTANT=runtime`
//! and given `mutant=NAME`), the boot scenario that must catch it, and a
//! piece of the failure that shows the *intended* check fired (not merely
//! some other one). `cargo xtask test` builds the runtime mutant once per
//! architecture, boots each entry's scenario with `mutant=NAME` and counts
//! `mutant-NAME` as passed only if the scenario fails that way; a mutant
//! that survives is a check that cannot fail.

use crate::boot::Arch;

/// One broken agent and the scenario that must catch it.
#[derive(Clone, Copy, Debug)]
pub struct Mutant {
    /// `XENMEM_MUTANT` or `mutant=` (the test's name is `mutant-NAME`).
    pub name: &'static str,
    /// The architecture it is built for.
    pub arch: Arch,
    /// The scenario that must fail.
    pub scenario: &'static str,
    /// Text one of the scenario's failures must contain.
    pub caught_by: &'static str,
    /// What is broken.
    pub what: &'static str,
}

/// The list.
pub fn all() -> Vec<Mutant> {
    use Arch::{Aarch64, X86_64};
    let mut v = vec![
        Mutant {
            name: "claim-off-by-one",
            arch: X86_64,
            scenario: "x86_64-balloon",
            caught_by: "Xen's nr_pages is",
            what: "the agent says its table accounts for one page more than it does",
        },
        Mutant {
            name: "skip-repopulate",
            arch: X86_64,
            scenario: "x86_64-balloon",
            caught_by: "Xen's nr_pages at point then",
            what: "the second balloon step is skipped and reported as reaching its target",
        },
        Mutant {
            name: "wrong-domid",
            arch: X86_64,
            scenario: "x86_64-dom0",
            caught_by: "report domain domid=1",
            what: "the agent reports domain id 1 for dom0",
        },
        Mutant {
            name: "table-entry-dropped",
            arch: X86_64,
            scenario: "x86_64-dom0",
            caught_by: "do not tile memory",
            what: "the table report leaves out the first RAM region",
        },
        Mutant {
            name: "verdict-forged",
            arch: X86_64,
            scenario: "x86_64-balloon-beyond-max",
            caught_by: "verdict PASS, expected FAIL",
            what: "the agent prints verdict PASS and exits as passed whatever happened",
        },
        Mutant {
            name: "no-pause",
            arch: X86_64,
            scenario: "x86_64-dom0",
            caught_by: "without pausing once",
            what: "the agent never pauses for Xen's own view",
        },
        Mutant {
            name: "pattern-not-written",
            arch: Aarch64,
            scenario: "aarch64-grant-exchange",
            caught_by: "[d0] report grant-map pattern=bad",
            what: "the domU grants dom0 a page without writing the pattern dom0 checks",
        },
        Mutant {
            name: "contig-bits-dropped",
            arch: Aarch64,
            scenario: "aarch64-highmem-contig32",
            caught_by: "contig-bits=32 but the buffer is at",
            what: "the domU populates its contiguous buffer without the 32-bit limit it reports",
        },
        Mutant {
            name: "contig-bus-gpa",
            arch: Aarch64,
            scenario: "aarch64-highmem-contig",
            caught_by: "the populate without bits came from",
            what: "the domU reports its buffer's guest-physical address as the machine address \
                   instead of the bus address Xen's grant map returned",
        },
        Mutant {
            name: "wrong-bus-address",
            arch: Aarch64,
            scenario: "aarch64-dom0-contig",
            caught_by: "contiguous",
            what: "the contiguous buffer's bus address is reported 2 MiB off",
        },
        // A domU whose own RAM reaches above 4 GiB (Arm's GUEST_RAM1).
        Mutant {
            name: "ram1-bank-unreported",
            arch: Aarch64,
            scenario: "aarch64-highmem-domu-ram1-contig",
            caught_by: "the domU's RAM banks are",
            what: "the domU leaves its RAM above 4 GiB (the second bank) out of its memory map \
                   report",
        },
        Mutant {
            name: "ram1-bus-gfn",
            arch: Aarch64,
            scenario: "aarch64-highmem-domu-ram1-contig32",
            caught_by: "contig-bits=32 but the buffer is at",
            what: "the domU with RAM above 4 GiB reports its buffer's GFN (in RAM1) as the \
                   machine address instead of the bus address Xen's grant map returned",
        },
    ];
    v.extend(boot_oracles());
    v
}

/// Mutants of the boot scenarios' checks whose oracle is not the agent's
/// own word: the peer domain's reading, Xen's answers and grant-table
/// entries, the helper's memory, the CPU's fault.
fn boot_oracles() -> Vec<Mutant> {
    use Arch::{Aarch64, X86_64};
    vec![
        Mutant {
            name: "answer-not-written",
            arch: Aarch64,
            scenario: "aarch64-grant-exchange",
            caught_by: "[d1] report grant-offer-done peer_wrote=bad",
            what: "dom0 signals its answer in the domU's granted page without writing it",
        },
        Mutant {
            name: "peer-gnttab-wrong-entry",
            arch: Aarch64,
            scenario: "aarch64-grant-exchange",
            caught_by: "[d0] `report: peer-gnttab` frame=0x0 and [d1] `report: grant-offer` gfn=",
            what: "dom0 reads the entry after the granted one in the domU's acquired grant table",
        },
        Mutant {
            name: "foreign-wrong-frame",
            arch: Aarch64,
            scenario: "aarch64-grant-exchange",
            caught_by: "[d0] report peer-foreign pattern=bad",
            what: "dom0 foreign-maps the domU frame after the one the grant entry names",
        },
        Mutant {
            name: "bad-batch-in-table",
            arch: Aarch64,
            scenario: "aarch64-grant-exchange",
            caught_by: "[d0] report grant-bad-batch first=GNTST_general_error,",
            what: "dom0's batch asks for a reference inside the domU's table where one past it \
                   was meant",
        },
        Mutant {
            name: "bad-copy-in-page",
            arch: Aarch64,
            scenario: "aarch64-grant-exchange",
            caught_by: "[d0] report grant-bad-copy first=GNTST_bad_page,",
            what: "dom0's copy segment meant to run past the granted page ends inside it",
        },
        Mutant {
            name: "grant-copy-wrong-ref",
            arch: X86_64,
            scenario: "x86_64-grant-self",
            caught_by: "[d0] report grant-self copy_before=",
            what: "the copy through the agent's own grant names the next, never issued, reference",
        },
        Mutant {
            name: "helper-grants-reversed",
            arch: X86_64,
            scenario: "x86_64-helper-domain",
            caught_by: "[d0] report helper-grants pattern=bad",
            what: "the helper's seeded grants are mapped in reverse order",
        },
        Mutant {
            name: "neg-gnttab-default",
            arch: X86_64,
            scenario: "x86_64-negative",
            caught_by: "[d0] a `report: neg-acquire` has size=64,",
            what: "the negative run's helper is created with Xen's default grant-table size, \
                   not negative-gnttab=40",
        },
        Mutant {
            name: "xsa277-repopulated",
            arch: X86_64,
            scenario: "x86_64-negative",
            caught_by: "[d0] a `report: neg-xsa277` has results=1,1,1,",
            what: "the frame is populated again before each repeated decrease",
        },
        Mutant {
            name: "xsa231-no-node",
            arch: X86_64,
            scenario: "x86_64-negative",
            caught_by: "[d0] a `report: neg-xsa231` has zero=0,",
            what: "the XSA-231 sweep populates without the node bits it sweeps",
        },
        Mutant {
            name: "trim-skipped",
            arch: X86_64,
            scenario: "x86_64-unpopulated-fault",
            caught_by: "[d0] exception at fault_addr=?,",
            what: "the start-up trim of the identity map is skipped (and its walker check ignored)",
        },
        Mutant {
            name: "image-end-early",
            arch: X86_64,
            scenario: "x86_64-dom0",
            caught_by: "[d0] `report: image` start=0x100000 end=",
            what: "the image's span (reported, and reserved in the table) ends a page early",
        },
        Mutant {
            name: "domu-says-reboot",
            arch: Aarch64,
            scenario: "aarch64-both",
            caught_by: "[d0] report peer shutdown=reboot,",
            what: "the domU leaves through Xen saying reboot instead of poweroff",
        },
        Mutant {
            name: "gnttab-kept",
            arch: Aarch64,
            scenario: "aarch64-grant-exchange",
            caught_by: "[d0] 1 mapping(s) never released, first [\"gnttab\"",
            what: "dom0 keeps the domU's acquired grant-table frame mapped and does not list it \
                   released (a check of the agent's own mapping lines)",
        },
    ]
}

// ---------------------------------------------------------------------------
// Mutants the xl rig's checks must catch (`xl_scenarios.rs`): `scenario`
// names an xl scenario. `cargo xtask test` makes one more rig boot per
// architecture for them, each mutant a domU of its own booted from its own
// image (`rig::AgentVariant`), named `mutant-NAME`, and checked as that
// scenario is.

/// The broken agents the xl rig must catch.
pub fn xl() -> Vec<Mutant> {
    use Arch::{Aarch64, X86_64};
    vec![
        Mutant {
            name: "max-misread",
            arch: X86_64,
            scenario: "x86_64-xl-survey",
            caught_by: "so Xen's maximum is",
            what: "the agent reports a maximum reservation one page above the one Xen gave it",
        },
        Mutant {
            name: "service-stops-short",
            arch: X86_64,
            scenario: "x86_64-xl-mem-set",
            // The first `xl mem-set` (64 MiB): Xen's count after `xl list`
            // showed it (`xl list` rounds 16 pages above down to the MiB).
            caught_by: "step 6: Xen's nr_pages is",
            what: "the balloon service stops 16 pages above a lower target and reports it \
                   reached, holding the target",
        },
        Mutant {
            name: "peer-ref-misreported",
            arch: X86_64,
            scenario: "x86_64-xl-peer-grant",
            caught_by: "round 1: the peer mapped ref",
            what: "the agent reports a grant reference one above the one dom0 was given and \
                   mapped",
        },
        Mutant {
            name: "peer-gfn-off-by-one",
            arch: Aarch64,
            scenario: "aarch64-xl-peer-foreign",
            caught_by: "the peer's bad_words= is",
            what: "the agent tells dom0 (and reports) a first GFN one page past its pattern",
        },
        Mutant {
            name: "peer-events-unsent",
            arch: Aarch64,
            scenario: "aarch64-xl-peer-ended-mid-use",
            // dom0's count, Xen's event at bind left out; the peer waits
            // for the agent's last event until its deadline (60 s).
            caught_by: "events not both ways",
            what: "the agent writes its hand-overs to xenstore without the event that should \
                   follow each, and still counts them sent",
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The agent's source files `files`, one after the other.
    fn agent_sources(files: &[&str]) -> String {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../xenmem-agent/src");
        files
            .iter()
            .map(|f| std::fs::read_to_string(dir.join(f)).unwrap())
            .collect()
    }

    /// `m`'s scenario exists for its architecture (`arch`: the scenario's),
    /// it is planted in `agent_src`, and its name is new to `names`.
    fn listed_and_planted(
        m: &Mutant,
        arch: Option<Arch>,
        agent_src: &str,
        names: &mut Vec<&'static str>,
    ) {
        assert_eq!(arch, Some(m.arch), "{m:?}");
        assert!(
            agent_src.contains(&format!("mutant::is(\"{}\")", m.name)),
            "mutant {} is planted nowhere in the agent",
            m.name
        );
        assert!(!names.contains(&m.name), "{m:?}");
        names.push(m.name);
    }

    #[test]
    fn every_xl_mutant_names_an_xl_scenario_of_its_arch_and_is_planted() {
        let scenarios = crate::xl_scenarios::all();
        let agent_src = agent_sources(&["agent.rs", "service.rs"]);
        let bare: Vec<&str> = all().iter().map(|m| m.name).collect();
        let mut names = Vec::new();
        for m in xl() {
            let s = scenarios.iter().find(|s| s.name == m.scenario);
            listed_and_planted(&m, s.map(|s| s.arch), &agent_src, &mut names);
            assert!(!bare.contains(&m.name), "{m:?}");
            // Its job, renamed, still passes the rig's checks of a job.
            let mut j = s.unwrap().job();
            j.name = format!("mutant-{}", m.name);
            j.extra_cfg.push(crate::rig::variant_cfg(
                m.arch,
                crate::agent::RUNTIME_MUTANT,
            ));
            j.agent_opts.push(format!("mutant={}", m.name));
            crate::rig::check_job(&j).unwrap();
        }
    }

    #[test]
    fn every_mutant_names_a_scenario_of_its_arch_and_is_planted() {
        let scenarios: Vec<_> = crate::scenarios::all()
            .into_iter()
            .chain(crate::highmem::scenarios())
            .collect();
        let agent_src = agent_sources(&["agent.rs", "xenview.rs", "negative.rs"]);
        let mut names = Vec::new();
        for m in all() {
            let s = scenarios.iter().find(|s| s.name == m.scenario);
            listed_and_planted(&m, s.map(|s| s.arch), &agent_src, &mut names);
        }
    }
}
