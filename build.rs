//! Compiles every `src/probes/<name>/<name>.bpf.c` (and the benchmark floor in
//! `src/kernel/floor/`, the feature checks in `src/kernel/features/`) into a libbpf
//! skeleton in `OUT_DIR`.

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
    program_dirs.push(PathBuf::from("src/kernel/floor"));
    program_dirs.push(PathBuf::from("src/kernel/features"));
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
        build_skeleton(
            &clang,
            &source,
            &probe_dir,
            &out_dir.join(format!("{name}.skel.rs")),
        );
    }
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
