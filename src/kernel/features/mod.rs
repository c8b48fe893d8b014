//! What this kernel runs, found by real loads: `periscope probes --features`.
//!
//! Each kernel feature the probes use has one small program in `features.bpf.c`, loaded
//! alone, and attached or run where kernels refuse at that step. `bpftool feature probe`
//! and libbpf's type probes answer from a list of program types, which is wrong on some
//! kernels (it calls tracing unavailable where tp_btf loads); a load is the answer.

use std::mem::MaybeUninit;

use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{TracepointCategory, UprobeOpts};

mod skel {
    include!(concat!(env!("OUT_DIR"), "/features.skel.rs"));
}
use skel::{FeaturesSkel, FeaturesSkelBuilder};

/// What is done with a loaded program to see whether the kernel runs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    /// Loading is the test (iterators, cgroup and perf programs attach per target).
    Load,
    /// Attach to its section's hook, then detach.
    Attach,
    /// A classic tracepoint: attaching needs tracefs.
    AttachTracepoint,
    /// A uprobe on libc's getpid.
    AttachUprobe,
    /// A kprobe on do_nanosleep.
    AttachKprobe,
    /// Run once by BPF_PROG_TEST_RUN.
    Run,
}

/// One kernel feature and the program that tries it.
struct Feature {
    name: &'static str,
    program: &'static str,
    check: Check,
    /// Which probes use it, and for what.
    used_by: &'static str,
}

const FEATURES: &[Feature] = &[
    Feature {
        name: "tp_btf (BTF tracepoints)",
        program: "psc_feat_tp_btf",
        check: Check::Attach,
        used_by: "every probe's main hooks",
    },
    Feature {
        name: "raw_tp (raw tracepoints)",
        program: "psc_feat_raw_tp",
        check: Check::Attach,
        used_by: "-",
    },
    Feature {
        name: "classic tracepoints",
        program: "psc_feat_tracepoint",
        check: Check::AttachTracepoint,
        used_by: "syscalls: timing on per-syscall tracepoints",
    },
    Feature {
        name: "uprobes",
        program: "psc_feat_uprobe",
        check: Check::AttachUprobe,
        used_by: "http: TLS plaintext (OpenSSL)",
    },
    Feature {
        name: "kprobes",
        program: "psc_feat_kprobe",
        check: Check::AttachKprobe,
        used_by: "- (never required)",
    },
    Feature {
        name: "fentry",
        program: "psc_feat_fentry",
        check: Check::Load,
        used_by: "- (never required)",
    },
    Feature {
        name: "lsm",
        program: "psc_feat_lsm",
        check: Check::Load,
        used_by: "- (never required)",
    },
    Feature {
        name: "perf_event programs",
        program: "psc_feat_perf",
        check: Check::Load,
        used_by: "-",
    },
    Feature {
        name: "cgroup_skb programs",
        program: "psc_feat_cgroup_skb",
        check: Check::Load,
        used_by: "-",
    },
    Feature {
        name: "ring buffer",
        program: "psc_feat_ringbuf",
        check: Check::Load,
        used_by: "http: events",
    },
    Feature {
        name: "ring buffer dynptr records, from uprobes",
        program: "psc_feat_rb_dynptr",
        check: Check::Load,
        used_by: "http: TLS events",
    },
    Feature {
        name: "task storage",
        program: "psc_feat_task_st",
        check: Check::Load,
        used_by: "syscalls: timing; http: OpenSSL calls",
    },
    Feature {
        name: "socket storage",
        program: "psc_feat_sock_st",
        check: Check::Load,
        used_by: "http: connections",
    },
    Feature {
        name: "bpf_dynptr_from_skb in tp_btf",
        program: "psc_feat_skb_dynptr",
        check: Check::Load,
        used_by: "-",
    },
    Feature {
        name: "syscall programs run on demand (for_each_map_elem, spin lock)",
        program: "psc_feat_syscall",
        check: Check::Run,
        used_by: "tcp: sampler of open connections (second choice)",
    },
    Feature {
        name: "bpf_spin_lock in raw_tp",
        program: "psc_feat_raw_lock",
        check: Check::Load,
        used_by: "-",
    },
    Feature {
        name: "bpf_loop",
        program: "psc_feat_loop",
        check: Check::Load,
        used_by: "-",
    },
    Feature {
        name: "iter/task",
        program: "psc_feat_it_task",
        check: Check::Load,
        used_by: "-",
    },
    Feature {
        name: "iter/task_file",
        program: "psc_feat_it_file",
        check: Check::Load,
        used_by: "-",
    },
    Feature {
        name: "iter/tcp",
        program: "psc_feat_it_tcp",
        check: Check::Load,
        used_by: "-",
    },
    Feature {
        name: "iter/udp",
        program: "psc_feat_it_udp",
        check: Check::Load,
        used_by: "-",
    },
    Feature {
        name: "iter/unix",
        program: "psc_feat_it_unix",
        check: Check::Load,
        used_by: "-",
    },
    Feature {
        name: "iter/bpf_map",
        program: "psc_feat_it_map",
        check: Check::Load,
        used_by: "-",
    },
    Feature {
        name: "iter/bpf_map_elem",
        program: "psc_feat_it_elem",
        check: Check::Load,
        used_by: "tcp: sampler of open connections (first choice)",
    },
];

/// One feature as this kernel answered.
#[derive(Debug, Clone)]
pub struct FeatureReport {
    pub name: &'static str,
    pub used_by: &'static str,
    /// Ok: runs here. Err: the step the kernel refused and its errno.
    pub outcome: Result<(), String>,
}

/// Tries every feature; `tracefs` says whether classic tracepoints can attach.
pub fn probe(tracefs: bool) -> Vec<FeatureReport> {
    FEATURES
        .iter()
        .map(|feature| FeatureReport {
            name: feature.name,
            used_by: feature.used_by,
            // libbpf's warnings about a refusal are the answer here, not trouble.
            outcome: super::libbpf_log::capture(|| try_feature(feature, tracefs)).0,
        })
        .collect()
}

fn try_feature(feature: &Feature, tracefs: bool) -> Result<(), String> {
    let mut storage = MaybeUninit::uninit();
    let mut open = FeaturesSkelBuilder::default()
        .open(&mut storage)
        .map_err(|err| format!("opening the feature object: {err}"))?;
    for mut program in open.open_object_mut().progs_mut() {
        let wanted = program.name() == feature.program;
        program.set_autoload(wanted);
    }
    let skel = open
        .load()
        .map_err(|err| format!("{} at load", super::errno_name(&err)))?;
    let outcome = match feature.check {
        Check::Load => Ok(()),
        Check::Attach => attach_own(&skel, feature.program),
        Check::AttachTracepoint if !tracefs => {
            return Err("loads; attaching needs tracefs, which is not mounted".into())
        }
        Check::AttachTracepoint => skel
            .progs
            .psc_feat_tracepoint
            .attach_tracepoint(TracepointCategory::Sched, "sched_switch")
            .map(drop),
        Check::AttachUprobe => skel
            .progs
            .psc_feat_uprobe
            .attach_uprobe_with_opts(
                -1,
                "libc.so.6",
                0,
                UprobeOpts {
                    func_name: Some("getpid".into()),
                    ..Default::default()
                },
            )
            .map(drop),
        Check::AttachKprobe => skel
            .progs
            .psc_feat_kprobe
            .attach_kprobe(false, "do_nanosleep")
            .map(drop),
        Check::Run => skel
            .progs
            .psc_feat_syscall
            .test_run(libbpf_rs::ProgramInput::default())
            .map(drop),
    };
    outcome.map_err(|err| {
        let step = if feature.check == Check::Run {
            "run"
        } else {
            "attach"
        };
        format!("{} at {step}", super::errno_name(&err))
    })
}

fn attach_own(skel: &FeaturesSkel<'_>, program: &str) -> Result<(), libbpf_rs::Error> {
    let progs = &skel.progs;
    let prog = match program {
        "psc_feat_tp_btf" => &progs.psc_feat_tp_btf,
        _ => &progs.psc_feat_raw_tp,
    };
    prog.attach().map(drop)
}
