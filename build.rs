//! Compiles every `src/probes/<name>/<name>.bpf.c` (and the benchmark floor in
//! `src/kernel/floor/`, the feature checks in `src/kernel/features/`, the shared headers'
//! constants in `src/model/layout/`) into a libbpf
//! skeleton in `OUT_DIR`, and lists every probe's end-to-end tests
//! (`src/probes/<name>/e2e.rs`) for `tests/probes.rs`, so that a probe's tests live in
//! its folder.

use std::env;
use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};

use libbpf_cargo::SkeletonBuilder;

fn main() {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let clang = env::var("PERISCOPE_CLANG").unwrap_or_else(|_| "clang-19".to_string());
    println!("cargo:rerun-if-env-changed=PERISCOPE_CLANG");

    for header in fs::read_dir("bpf").expect("bpf/ holds the shared BPF headers") {
        let header = header.expect("readable bpf/ entry").path();
        println!("cargo:rerun-if-changed={}", header.display());
    }

    // Each probe folder, plus the empty "floor" programs benchmarks compare against.
    let mut program_dirs: Vec<PathBuf> = fs::read_dir("src/probes")
        .expect("src/probes exists")
        .map(|entry| entry.expect("readable src/probes entry").path())
        .filter(|path| path.is_dir())
        .collect();
    // A new probe folder or test file is seen (cargo scans the folder for changes).
    println!("cargo:rerun-if-changed=src/probes");
    write_e2e_list(&program_dirs, &out_dir.join("probe_e2e.rs"));
    program_dirs.push(PathBuf::from("src/kernel/floor"));
    program_dirs.push(PathBuf::from("src/kernel/features"));
    program_dirs.push(PathBuf::from("src/model/layout"));
    for probe_dir in program_dirs {
        let name = probe_dir
            .file_name()
            .and_then(OsStr::to_str)
            .expect("probe folder names are UTF-8")
            .to_string();
        for file in fs::read_dir(&probe_dir).expect("readable probe folder") {
            let file = file.expect("readable probe file").path();
            if file.extension().is_some_and(|ext| ext == "h") {
                println!("cargo:rerun-if-changed={}", file.display());
            }
        }
        let source = probe_dir.join(format!("{name}.bpf.c"));
        if !source.exists() {
            continue;
        }
        println!("cargo:rerun-if-changed={}", source.display());
        let output = out_dir.join(format!("{name}.skel.rs"));
        // Any change under src/probes reruns this script; only changed programs compile.
        if is_newer_than_inputs(&output, &probe_dir) {
            continue;
        }
        build_skeleton(&clang, &source, &probe_dir, &output);
    }
}

/// One `mod` per probe folder holding an `e2e.rs`, by absolute path.
fn write_e2e_list(probe_dirs: &[PathBuf], output: &Path) {
    let mut list = String::new();
    let mut dirs = probe_dirs.to_vec();
    dirs.sort();
    for dir in dirs {
        let tests = dir.join("e2e.rs");
        let Some(name) = dir.file_name().and_then(OsStr::to_str) else {
            continue;
        };
        if tests.exists() {
            let path = fs::canonicalize(&tests).expect("the e2e.rs just found resolves");
            list.push_str(&format!(
                "#[path = {:?}]\nmod {name};\n",
                path.display().to_string()
            ));
        }
    }
    // Written only when it changes, so that the tests are not rebuilt for nothing.
    if fs::read_to_string(output).ok().as_deref() != Some(list.as_str()) {
        fs::write(output, list).expect("OUT_DIR is writable");
    }
}

/// Whether `output` was written after every file that could go into it: the C sources
/// and headers of the probe folder and of bpf/, and this script with its flags.
fn is_newer_than_inputs(output: &Path, probe_dir: &Path) -> bool {
    let Ok(built) = fs::metadata(output).and_then(|m| m.modified()) else {
        return false;
    };
    let inputs = [probe_dir, Path::new("bpf")]
        .into_iter()
        .filter_map(|dir| fs::read_dir(dir).ok())
        .flatten()
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "c" || ext == "h"))
        .chain([PathBuf::from("build.rs")]);
    let mut newest = None;
    for input in inputs {
        match fs::metadata(&input).and_then(|m| m.modified()) {
            Ok(modified) => newest = newest.max(Some(modified)),
            Err(_) => return false,
        }
    }
    newest.is_some_and(|newest| newest < built)
}

fn build_skeleton(clang: &str, source: &Path, probe_dir: &Path, output: &Path) {
    let result = SkeletonBuilder::new()
        .source(source)
        .clang(clang)
        .clang_args([
            OsStr::new("-I"),
            OsStr::new("bpf"),
            OsStr::new("-I"),
            probe_dir.as_os_str(),
            OsStr::new("-Wall"),
            OsStr::new("-Werror"),
        ])
        .build_and_generate(output);
    if let Err(err) = result {
        panic!(
            "building the BPF skeleton for {} failed (is {clang} installed? run scripts/setup.sh): {err:#}",
            source.display()
        );
    }
}
