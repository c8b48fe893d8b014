//! Which BPF programs a probe needs and which only add a feature, and loading a probe
//! again without the optional programs the kernel refuses.
//!
//! Kernels differ from machine to machine and from one month to the next: a program
//! type, attach point or helper that loads on one is refused on another. Only a trusted
//! load says what a kernel runs, so a probe tries its programs for real; a refused
//! optional program costs the feature it adds, never the probe.

use std::collections::BTreeMap;

use super::super::ProbeError;
use crate::kernel::libbpf_log;
#[cfg(test)]
use crate::kernel::libbpf_log::note_libbpf_message;

/// How much a probe needs one of its programs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Without it the probe cannot run.
    Required,
    /// It adds `feature`; without it the probe runs degraded and users lose `loss`.
    /// Programs of one probe that name the same feature are alternatives, in order of
    /// preference: the first the kernel accepts is loaded, the others are not.
    Optional {
        feature: &'static str,
        loss: &'static str,
    },
}

/// One BPF program of a probe.
#[derive(Debug, Clone, Copy)]
pub struct ProgramSpec {
    /// Its name in the BPF object.
    pub name: &'static str,
    /// What it needs of the kernel: program type and attach point, helpers or kfuncs,
    /// map types.
    pub kernel_feature: &'static str,
    pub need: Need,
}

impl ProgramSpec {
    pub const fn required(name: &'static str, kernel_feature: &'static str) -> ProgramSpec {
        ProgramSpec {
            name,
            kernel_feature,
            need: Need::Required,
        }
    }

    pub const fn optional(
        name: &'static str,
        kernel_feature: &'static str,
        feature: &'static str,
        loss: &'static str,
    ) -> ProgramSpec {
        ProgramSpec {
            name,
            kernel_feature,
            need: Need::Optional { feature, loss },
        }
    }

    fn feature(&self) -> Option<&'static str> {
        match self.need {
            Need::Required => None,
            Need::Optional { feature, .. } => Some(feature),
        }
    }
}

/// When the kernel said no.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Load,
    Attach,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Load => "load",
            Stage::Attach => "attach",
        }
    }
}

/// A program the kernel refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub program: &'static str,
    pub kernel_feature: &'static str,
    pub stage: Stage,
    /// The kernel's answer: an errno name where libbpf gave one.
    pub errno: String,
    /// Refused on a test's request, not by the kernel.
    pub forced: bool,
}

/// A feature a probe runs without, because the kernel refused every program that gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Degraded {
    pub probe: &'static str,
    pub feature: &'static str,
    pub loss: &'static str,
    /// The refused programs behind it, most preferred first.
    pub refusals: Vec<Refusal>,
}

impl Degraded {
    /// One line for `periscope probes`.
    pub fn describe(&self) -> String {
        let why: Vec<String> = self
            .refusals
            .iter()
            .map(|r| format!("{} ({}): {}", r.program, r.kernel_feature, r.errno))
            .collect();
        format!(
            "without {}: {}; refused {}",
            self.feature,
            self.loss,
            why.join(", ")
        )
    }
}

/// Which programs one load attempt takes: every required one and, for each optional
/// feature, its first alternative not refused yet.
#[derive(Debug, Clone)]
pub struct Plan {
    programs: &'static [ProgramSpec],
    refused: BTreeMap<&'static str, Refusal>,
}

impl Plan {
    fn new(programs: &'static [ProgramSpec]) -> Plan {
        Plan {
            programs,
            refused: BTreeMap::new(),
        }
    }

    /// Whether this attempt loads `program`. Programs the probe did not declare load.
    pub fn loads(&self, program: &str) -> bool {
        let Some(spec) = self.programs.iter().find(|p| p.name == program) else {
            return true;
        };
        if self.refused.contains_key(spec.name) {
            return false;
        }
        match spec.feature() {
            None => true,
            Some(feature) => {
                // The first alternative of its feature that is not refused.
                self.programs
                    .iter()
                    .find(|p| p.feature() == Some(feature) && !self.refused.contains_key(p.name))
                    .is_some_and(|first| first.name == spec.name)
            }
        }
    }

    /// Whether this attempt runs without `feature` (every alternative refused).
    pub fn lacks(&self, feature: &str) -> bool {
        !self
            .programs
            .iter()
            .any(|p| p.feature() == Some(feature) && !self.refused.contains_key(p.name))
    }

    /// Sets each program's autoload as this attempt wants it.
    pub fn apply(&self, object: &mut libbpf_rs::OpenObject) {
        for mut program in object.progs_mut() {
            let name = program.name().to_string_lossy().into_owned();
            let wanted = self.loads(&name);
            program.set_autoload(wanted);
        }
    }

    /// Records that the kernel (or, when `forced`, a test) refused `spec`.
    fn refuse(&mut self, spec: &'static ProgramSpec, stage: Stage, errno: String, forced: bool) {
        self.refused.insert(
            spec.name,
            Refusal {
                program: spec.name,
                kernel_feature: spec.kernel_feature,
                stage,
                errno,
                forced,
            },
        );
    }

    fn spec(&self, name: &str) -> Option<&'static ProgramSpec> {
        self.programs.iter().find(|p| p.name == name)
    }

    fn degraded(&self, probe: &'static str) -> Vec<Degraded> {
        let mut out: Vec<Degraded> = Vec::new();
        for spec in self.programs {
            let Need::Optional { feature, loss } = spec.need else {
                continue;
            };
            if !self.lacks(feature) || out.iter().any(|d| d.feature == feature) {
                continue;
            }
            let refusals = self
                .programs
                .iter()
                .filter(|p| p.feature() == Some(feature))
                .filter_map(|p| self.refused.get(p.name).cloned())
                .collect();
            out.push(Degraded {
                probe,
                feature,
                loss,
                refusals,
            });
        }
        out
    }
}

/// Why one load attempt failed.
#[derive(Debug)]
pub enum AttemptError {
    /// Opening, configuring or loading the object; the program libbpf names in its log
    /// is the one refused.
    Load {
        what: String,
        source: libbpf_rs::Error,
    },
    /// Attaching `program` failed.
    Attach {
        program: &'static str,
        source: libbpf_rs::Error,
    },
    /// Anything else: the probe cannot run, whatever its programs.
    Other(ProbeError),
}

impl AttemptError {
    /// For `map_err` on a skeleton's load.
    pub fn load(what: &'static str) -> impl FnOnce(libbpf_rs::Error) -> AttemptError {
        move |source| AttemptError::Load {
            what: what.into(),
            source,
        }
    }

    /// For `map_err` on attaching (or first running) `program`.
    pub fn attach(program: &'static str) -> impl FnOnce(libbpf_rs::Error) -> AttemptError {
        move |source| AttemptError::Attach { program, source }
    }
}

/// Loads an opened object with the programs `plan` leaves: what every probe does
/// between setting its object up and attaching it.
pub fn load_object<O: libbpf_rs::skel::OpenSkel<'static>>(
    mut open: O,
    plan: &Plan,
    probe: &str,
) -> Result<O::Output, AttemptError> {
    plan.apply(open.open_object_mut());
    open.load().map_err(|source| AttemptError::Load {
        what: format!("loading the {probe} BPF programs"),
        source,
    })
}

impl From<ProbeError> for AttemptError {
    fn from(err: ProbeError) -> AttemptError {
        AttemptError::Other(err)
    }
}

/// Loads (and attaches) a probe with `attempt`, again and again without each optional
/// program the kernel refuses, until it runs or a required program is refused. Gives
/// the probe and the features it runs without, each logged once.
pub fn load_degrading<T>(
    probe: &'static str,
    programs: &'static [ProgramSpec],
    mut attempt: impl FnMut(&Plan) -> Result<T, AttemptError>,
) -> Result<(T, Vec<Degraded>), ProbeError> {
    let mut plan = Plan::new(programs);
    for name in forced_refusals() {
        if let Some(spec) = plan.spec(&name) {
            if spec.need == Need::Required {
                return Err(ProbeError::Refused {
                    program: spec.name,
                    kernel_feature: spec.kernel_feature,
                    stage: Stage::Load.as_str(),
                    errno: "EPERM".into(),
                });
            }
            plan.refuse(spec, Stage::Load, "EPERM".into(), true);
        }
    }
    // Every program can be refused once: the loop ends.
    for _ in 0..=programs.len() {
        let (outcome, log) = libbpf_log::capture(|| attempt(&plan));
        let (stage, program, what, source) = match outcome {
            Ok(loaded) => {
                let degraded = plan.degraded(probe);
                for r in plan.refused.values() {
                    let feature = plan.spec(r.program).and_then(ProgramSpec::feature);
                    if feature.is_some_and(|f| !plan.lacks(f)) {
                        tracing::info!(
                            probe,
                            program = r.program,
                            kernel_feature = r.kernel_feature,
                            errno = %r.errno,
                            forced_by_test = r.forced,
                            feature,
                            "the kernel refused a program; its feature runs on the next alternative"
                        );
                    }
                }
                for d in &degraded {
                    for r in &d.refusals {
                        tracing::warn!(
                            probe,
                            program = r.program,
                            kernel_feature = r.kernel_feature,
                            errno = %r.errno,
                            stage = r.stage.as_str(),
                            forced_by_test = r.forced,
                            feature = d.feature,
                            lost = d.loss,
                            "the kernel refused an optional program; the probe runs without its feature"
                        );
                    }
                }
                return Ok((loaded, degraded));
            }
            Err(AttemptError::Other(err)) => return Err(err),
            Err(AttemptError::Load { what, source }) => {
                let refused = refused_program(&log);
                (Stage::Load, refused, what, source)
            }
            Err(AttemptError::Attach { program, source }) => (
                Stage::Attach,
                Some((program.to_string(), None)),
                format!("attaching {program}"),
                source,
            ),
        };
        let Some((name, logged_errno)) = program else {
            return Err(ProbeError::Load { what, source });
        };
        let errno = logged_errno.unwrap_or_else(|| crate::kernel::errno_name(&source));
        let Some(spec) = plan.spec(&name) else {
            return Err(ProbeError::Load { what, source });
        };
        if spec.need == Need::Required || plan.refused.contains_key(spec.name) {
            return Err(ProbeError::Refused {
                program: spec.name,
                kernel_feature: spec.kernel_feature,
                stage: stage.as_str(),
                errno,
            });
        }
        tracing::debug!(probe, program = spec.name, %errno, "refused; loading the probe again without it");
        plan.refuse(spec, stage, errno, false);
    }
    Err(ProbeError::Unsupported(format!(
        "the {probe} probe did not load after refusing each of its optional programs"
    )))
}

/// The programs a test asks to treat as refused by the kernel (comma-separated names in
/// PERISCOPE_TEST_REFUSE_PROGRAMS). Read only by test builds: a release agent ignores it.
fn forced_refusals() -> Vec<String> {
    if !cfg!(debug_assertions) {
        return Vec::new();
    }
    std::env::var("PERISCOPE_TEST_REFUSE_PROGRAMS")
        .map(|list| {
            list.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

/// The program libbpf says failed to load, and the errno it gives: libbpf logs
/// "prog 'NAME': BPF program load failed: -EPERM" (or "failed to load: -EPERM").
pub fn refused_program(log: &[String]) -> Option<(String, Option<String>)> {
    log.iter().find_map(|line| {
        let rest = &line[line.find("prog '")? + "prog '".len()..];
        let end = rest.find('\'')?;
        let name = &rest[..end];
        let tail = &rest[end..];
        let marker = ["load failed: ", "failed to load: "]
            .iter()
            .find_map(|m| tail.find(m).map(|at| at + m.len()))?;
        let errno = tail[marker..]
            .trim()
            .trim_start_matches('-')
            .split(|c: char| !c.is_ascii_alphanumeric())
            .next()
            .filter(|e| e.starts_with('E') && e.len() > 1)
            .map(String::from);
        Some((name.to_string(), errno))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    static PROGRAMS: &[ProgramSpec] = &[
        ProgramSpec::required("main", "tp_btf/x"),
        ProgramSpec::optional("fast", "iter/a", "sampling", "samples"),
        ProgramSpec::optional("slow", "raw_tp run", "sampling", "samples"),
        ProgramSpec::optional("extra", "uprobe", "extra", "extras"),
    ];

    fn refuse(plan: &mut Plan, name: &'static str) {
        let spec = plan.spec(name).expect("a declared program");
        plan.refuse(spec, Stage::Load, "EPERM".into(), false);
    }

    #[test]
    fn alternatives_load_one_at_a_time_in_order() {
        let mut plan = Plan::new(PROGRAMS);
        assert!(plan.loads("main") && plan.loads("fast") && !plan.loads("slow"));
        assert!(plan.loads("extra") && plan.loads("undeclared"));
        refuse(&mut plan, "fast");
        assert!(!plan.loads("fast") && plan.loads("slow"));
        assert!(!plan.lacks("sampling"));
        assert!(plan.degraded("p").is_empty());
        refuse(&mut plan, "slow");
        assert!(plan.lacks("sampling") && !plan.loads("slow"));
        let degraded = plan.degraded("p");
        assert_eq!(degraded.len(), 1);
        assert_eq!(degraded[0].feature, "sampling");
        assert_eq!(degraded[0].refusals.len(), 2);
        assert_eq!(degraded[0].refusals[0].program, "fast");
    }

    #[test]
    fn finds_the_refused_program_in_libbpf_log() {
        let log = vec![
            "libbpf: map 'x': created".to_string(),
            "libbpf: prog 'psc_tcp_iter': BPF program load failed: -EPERM".to_string(),
            "libbpf: prog 'psc_tcp_iter': failed to load: -EPERM".to_string(),
        ];
        assert_eq!(
            refused_program(&log),
            Some(("psc_tcp_iter".into(), Some("EPERM".into())))
        );
        let old = vec!["libbpf: prog 'a': BPF program load failed: Operation not permitted".into()];
        assert_eq!(refused_program(&old), Some(("a".into(), None)));
        assert_eq!(refused_program(&["libbpf: prog 'a': relo #1".into()]), None);
    }

    #[test]
    fn a_refused_required_program_disables_the_probe() {
        let mut calls = 0;
        let result = load_degrading("p", PROGRAMS, |_plan| -> Result<(), AttemptError> {
            calls += 1;
            note_libbpf_message("libbpf: prog 'main': BPF program load failed: -EINVAL");
            Err(AttemptError::Load {
                what: "loading".into(),
                source: libbpf_rs::Error::from(std::io::Error::from_raw_os_error(22)),
            })
        });
        assert_eq!(calls, 1);
        let err = result.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            err.contains("main") && err.contains("tp_btf/x") && err.contains("EINVAL"),
            "{err}"
        );
    }

    #[test]
    fn refused_optional_programs_are_dropped_one_by_one() {
        let mut attempts = Vec::new();
        let (_, degraded) = load_degrading("p", PROGRAMS, |plan| {
            attempts.push((plan.loads("fast"), plan.loads("slow")));
            let refuse = if plan.loads("fast") {
                "fast"
            } else if plan.loads("slow") {
                "slow"
            } else {
                return Ok(());
            };
            note_libbpf_message(&format!("libbpf: prog '{refuse}': failed to load: -EPERM"));
            Err(AttemptError::Load {
                what: "loading".into(),
                source: libbpf_rs::Error::from(std::io::Error::from_raw_os_error(1)),
            })
        })
        .expect("loads without the sampler");
        assert_eq!(attempts, vec![(true, false), (false, true), (false, false)]);
        assert_eq!(degraded.len(), 1);
        assert_eq!(degraded[0].refusals.len(), 2);
    }
}
