//! JSON lines: spans and metric snapshots, one JSON object per line, to standard output
//! or to a size-rotated file, for backends that are neither Prometheus nor OpenTelemetry.
//! The schema is versioned and documented in `docs/jsonl-schema.md`.

mod config;
pub use config::JsonLinesConfig;

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value as Json};
use tracing::warn;

use super::queue::SpanQueue;
use super::{ExportStats, Shutdown};
use crate::model::span::{hex, AttributeValue, Span, SpanKind};
use crate::model::{agent_labels, Family, MetricKind, Value};

/// The `schema` field of every line.
pub const SCHEMA: &str = "periscope.jsonl/v1";

/// Spans written per wake-up, at most.
const BATCH: usize = 4096;

pub struct JsonLinesSettings {
    /// `None`: standard output.
    pub path: Option<PathBuf>,
    pub max_file_bytes: u64,
    pub max_files: u32,
    pub metrics_interval: Option<Duration>,
    pub host_name: String,
    /// Permission bits of the files.
    pub file_mode: u32,
}

/// The output: standard output, or a file rotated by size.
enum Sink {
    Stdout(io::Stdout),
    File {
        path: PathBuf,
        file: BufWriter<File>,
        written: u64,
        max_bytes: u64,
        max_files: u32,
        mode: u32,
    },
}

/// Opens the output file for appending, safely in a directory others can write to: a
/// symbolic link at `path` is refused (O_NOFOLLOW), as is anything but a regular file
/// (a FIFO would block the exporter) or a file of another owner (who could read what
/// the agent writes). The file gets `mode`. `fresh`: it must be created anew (after a
/// rotation); what took its place meanwhile is removed once.
fn open_output(path: &std::path::Path, mode: u32, fresh: bool) -> io::Result<File> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
    let open = |create_new: bool| {
        let mut options = OpenOptions::new();
        options
            .append(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC);
        if create_new {
            options.create_new(true);
        } else {
            options.create(true);
        }
        options.open(path)
    };
    let file = if fresh {
        match open(true) {
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {
                // Planted between the rotation's rename and this open: unlink it (the
                // link itself, never its target) and create the file once more.
                std::fs::remove_file(path)?;
                open(true)?
            }
            other => other?,
        }
    } else {
        open(false)?
    };
    let meta = file.metadata()?;
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if !meta.file_type().is_file() || meta.uid() != euid {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} is not a regular file of the agent's own; not writing to it",
                path.display()
            ),
        ));
    }
    if meta.permissions().mode() & 0o777 != mode {
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
    }
    Ok(file)
}

impl Sink {
    fn open(settings: &JsonLinesSettings) -> io::Result<Sink> {
        match &settings.path {
            None => Ok(Sink::Stdout(io::stdout())),
            Some(path) => {
                let file = open_output(path, settings.file_mode, false)?;
                let written = file.metadata()?.len();
                Ok(Sink::File {
                    path: path.clone(),
                    file: BufWriter::new(file),
                    written,
                    max_bytes: settings.max_file_bytes,
                    max_files: settings.max_files,
                    mode: settings.file_mode,
                })
            }
        }
    }

    fn write_line(&mut self, line: &[u8]) -> io::Result<()> {
        match self {
            Sink::Stdout(out) => {
                let mut out = out.lock();
                out.write_all(line)?;
                out.write_all(b"\n")
            }
            Sink::File {
                path,
                file,
                written,
                max_bytes,
                max_files,
                mode,
            } => {
                if *written > 0 && *written + line.len() as u64 + 1 > *max_bytes {
                    file.flush()?;
                    rotate(path, *max_files)?;
                    *file = BufWriter::new(open_output(path, *mode, true)?);
                    *written = 0;
                }
                file.write_all(line)?;
                file.write_all(b"\n")?;
                *written += line.len() as u64 + 1;
                Ok(())
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Sink::Stdout(out) => out.flush(),
            Sink::File { file, .. } => file.flush(),
        }
    }
}

/// `path` -> `path.1` -> ... -> `path.<max_files>`, the oldest removed.
fn rotate(path: &std::path::Path, max_files: u32) -> io::Result<()> {
    let numbered = |n: u32| {
        let mut name = path.as_os_str().to_owned();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    };
    if max_files == 0 {
        return std::fs::remove_file(path);
    }
    let _ = std::fs::remove_file(numbered(max_files));
    for n in (1..max_files).rev() {
        let from = numbered(n);
        if from.exists() {
            std::fs::rename(&from, numbered(n + 1))?;
        }
    }
    std::fs::rename(path, numbered(1))
}

/// Runs the exporter until a stop is requested: spans as they come, a metric snapshot
/// from `snapshot` every interval. A write that fails loses what it held, counted; what
/// is still queued at the stop's deadline is counted as failed.
pub fn run(
    settings: JsonLinesSettings,
    spans: Arc<SpanQueue>,
    snapshot: impl Fn() -> Option<Vec<Family>>,
    stats: Arc<ExportStats>,
    stop: Arc<Shutdown>,
) -> io::Result<()> {
    let mut sink = Sink::open(&settings)?;
    let mut next_snapshot = settings.metrics_interval.map(|i| Instant::now() + i);
    let mut line = Vec::with_capacity(1024);
    loop {
        let stopping = stop.requested();
        if stop.deadline().is_some_and(|d| Instant::now() >= d) {
            let left = spans.pop(usize::MAX, Duration::ZERO).len() as u64;
            stats.spans_failed.fetch_add(left, Ordering::Relaxed);
            break;
        }
        let batch = spans.pop(BATCH, Duration::from_millis(200));
        let count = batch.len() as u64;
        let mut failed = false;
        for span in &batch {
            line.clear();
            if serde_json::to_writer(&mut line, &span_json(span, &settings.host_name)).is_ok()
                && sink.write_line(&line).is_err()
            {
                failed = true;
            }
        }
        // Due snapshots are written even while spans keep every batch full.
        if let (false, Some(due)) = (stopping, next_snapshot) {
            if Instant::now() >= due {
                if let Some(families) = snapshot() {
                    write_snapshot_counted(&mut sink, &families, &mut line, &stats);
                }
                next_snapshot = settings.metrics_interval.map(|i| Instant::now() + i);
            }
        }
        if sink.flush().is_err() {
            failed = true;
        }
        if failed {
            stats.failures.fetch_add(1, Ordering::Relaxed);
            stats.spans_failed.fetch_add(count, Ordering::Relaxed);
            warn!("writing JSON lines failed; the spans of this batch are lost");
        } else {
            stats.spans_sent.fetch_add(count, Ordering::Relaxed);
        }
        if stopping && spans.is_empty() {
            break;
        }
    }
    // One last snapshot: what the agent counted until it stopped.
    if next_snapshot.is_some() {
        if let Some(families) = snapshot() {
            write_snapshot_counted(&mut sink, &families, &mut line, &stats);
        }
    }
    sink.flush()
}

fn write_snapshot_counted(
    sink: &mut Sink,
    families: &[Family],
    line: &mut Vec<u8>,
    stats: &ExportStats,
) {
    match write_snapshot(sink, families, line) {
        Ok(points) => stats
            .metric_points_sent
            .fetch_add(points, Ordering::Relaxed),
        Err(_) => stats.failures.fetch_add(1, Ordering::Relaxed),
    };
}

fn unix_nanos(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

pub fn span_json(span: &Span, host_name: &str) -> Json {
    let mut attributes = Map::new();
    for (key, value) in &span.attributes {
        let value = match value {
            AttributeValue::Str(s) => Json::from(s.as_str()),
            AttributeValue::Int(i) => Json::from(*i),
        };
        attributes.insert((*key).to_string(), value);
    }
    let name = |label| agent_labels::resource_attribute(label).to_string();
    let mut resource = Map::new();
    resource.insert(
        name(agent_labels::SERVICE_NAME),
        Json::from(span.resource.service_name.as_str()),
    );
    resource.insert(
        name(agent_labels::PROCESS_PID),
        Json::from(span.resource.pid),
    );
    resource.insert(
        name(agent_labels::PROCESS_EXECUTABLE_NAME),
        Json::from(span.resource.executable_name.as_str()),
    );
    for (label, value) in &span.resource.workload {
        resource.insert(name(label), Json::from(value.as_str()));
    }
    resource.insert("host.name".into(), Json::from(host_name));
    json!({
        "schema": SCHEMA,
        "type": "span",
        "trace_id": hex(&span.trace_id),
        "span_id": hex(&span.span_id),
        "parent_span_id": span.parent_span_id.map(|id| hex(&id)),
        "trace_state": span.trace_state,
        "kind": match span.kind { SpanKind::Server => "server", SpanKind::Client => "client" },
        "name": span.name,
        "start_time_unix_nano": span.start_unix_ns,
        "end_time_unix_nano": span.end_unix_ns,
        "status": if span.error { "error" } else { "unset" },
        "attributes": attributes,
        "resource": resource,
    })
}

/// One line per series; returns how many were written.
fn write_snapshot(sink: &mut Sink, families: &[Family], line: &mut Vec<u8>) -> io::Result<u64> {
    let now = unix_nanos(SystemTime::now());
    let mut points = 0;
    for family in families {
        for json in family_json(family, now) {
            line.clear();
            serde_json::to_writer(&mut *line, &json).map_err(io::Error::other)?;
            sink.write_line(line)?;
            points += 1;
        }
    }
    Ok(points)
}

pub fn family_json(family: &Family, now_unix_nano: u64) -> Vec<Json> {
    let kind = match family.kind {
        MetricKind::Counter => "counter",
        MetricKind::Gauge => "gauge",
        MetricKind::Histogram => "histogram",
    };
    // Counters are named as Prometheus exposes them.
    let name = match family.kind {
        MetricKind::Counter => format!("{}_total", family.name),
        _ => family.name.to_string(),
    };
    family
        .series
        .iter()
        .map(|series| {
            let labels: Map<String, Json> = series
                .labels
                .iter()
                .map(|(k, v)| ((*k).to_string(), Json::from(v.as_str())))
                .collect();
            let mut object = json!({
                "schema": SCHEMA,
                "type": "metric",
                "name": name,
                "kind": kind,
                "unit": family.unit,
                "time_unix_nano": now_unix_nano,
                "start_time_unix_nano": series.created.map(unix_nanos),
                "labels": labels,
            });
            if let Json::Object(fields) = &mut object {
                match &series.value {
                    Value::Counter(v) | Value::Gauge(v) => {
                        fields.insert("value".into(), finite(*v));
                    }
                    Value::Histogram(h) => {
                        fields.insert("count".into(), Json::from(h.count));
                        fields.insert("sum".into(), finite(h.sum));
                        fields.insert(
                            "bounds".into(),
                            Json::from(h.bounds.iter().map(|b| finite(*b)).collect::<Vec<_>>()),
                        );
                        fields.insert("cumulative_counts".into(), Json::from(h.cumulative.clone()));
                        if let Some(native) = &h.native {
                            fields.insert(
                                "native".into(),
                                json!({
                                    "schema": native.schema,
                                    "zero_count": native.zero_count,
                                    "buckets": native.buckets,
                                }),
                            );
                        }
                    }
                }
            }
            object
        })
        .collect()
}

/// JSON has no NaN or infinities: they are written as strings, as Prometheus spells them.
fn finite(v: f64) -> Json {
    if v.is_finite() {
        Json::from(v)
    } else if v.is_nan() {
        Json::from("NaN")
    } else if v > 0.0 {
        Json::from("+Inf")
    } else {
        Json::from("-Inf")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("periscope-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        dir
    }

    #[test]
    fn native_buckets_are_written_beside_the_classic_ones_as_the_schema_says() {
        let mut hist = crate::model::native::KernelHistogram::default();
        for nanos in [0, 1_000_000_000, 1_000_000_001] {
            hist.record(nanos);
        }
        let mut family = Family::new("d_seconds", "D.", MetricKind::Histogram);
        family.push(
            vec![("syscall", "read".into())],
            Value::Histogram(hist.to_classic(&[1_000_000_000], &[1.0])),
        );
        let lines = family_json(&family, 1);
        assert_eq!(lines[0]["native"]["schema"], 3);
        assert_eq!(lines[0]["native"]["zero_count"], 1);
        assert_eq!(lines[0]["native"]["buckets"], json!([[0, 1], [1, 1]]));
        assert_eq!(lines[0]["cumulative_counts"], json!([2]));
        // The published schema takes the line (python3-jsonschema, from setup.sh --test).
        let dir = scratch_dir("jsonl-native");
        let path = dir.join("lines.jsonl");
        std::fs::write(&path, format!("{}\n", lines[0])).expect("write");
        let schema = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/jsonl-schema.json");
        let script = "import json, sys, jsonschema\n\
            v = jsonschema.Draft202012Validator(json.load(open(sys.argv[1])))\n\
            [v.validate(json.loads(l)) for l in open(sys.argv[2])]\n";
        let out = std::process::Command::new("python3")
            .args(["-c", script, schema])
            .arg(&path)
            .output()
            .expect("python3");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn a_spans_resource_names_the_agents_labels_as_the_conventions_do() {
        let span = Span::example(
            SpanKind::Client,
            "curl",
            vec![("k8s_pod_uid", "u".into()), ("tenant", "t".into())],
        );
        let json = span_json(&span, "h");
        let resource = json["resource"].as_object().expect("an object");
        let mut keys: Vec<&str> = resource.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "host.name",
                "k8s.pod.uid",
                "process.executable.name",
                "process.pid",
                "service.name",
                "tenant"
            ]
        );
        assert_eq!(resource["process.pid"], 7);
    }

    #[test]
    fn a_planted_symlink_is_never_followed_and_its_target_is_untouched() {
        use std::os::unix::fs::PermissionsExt;
        let dir = scratch_dir("jsonl-link");
        let target = dir.join("secret");
        std::fs::write(&target, "root's own\n").expect("target");
        let path = dir.join("out.jsonl");
        std::os::unix::fs::symlink(&target, &path).expect("plant a link");
        let err = open_output(&path, 0o640, false).expect_err("refused");
        assert_eq!(err.raw_os_error(), Some(libc::ELOOP), "{err}");
        // A FIFO would block the exporter forever: refused too.
        let fifo = dir.join("fifo.jsonl");
        let name = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).expect("path");
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0);
        assert!(open_output(&fifo, 0o640, false).is_err());
        // After a rotation, what was planted in the file's place is removed, not used.
        let rotated = dir.join("rotated.jsonl");
        std::os::unix::fs::symlink(&target, &rotated).expect("plant a link");
        let file = open_output(&rotated, 0o640, true).expect("created anew");
        drop(file);
        assert!(std::fs::symlink_metadata(&rotated).expect("file").is_file());
        assert_eq!(
            std::fs::read_to_string(&target).expect("target"),
            "root's own\n"
        );
        // A fresh file gets the configured mode, never world-readable by default.
        let mode = std::fs::metadata(&rotated)
            .expect("meta")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o640);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_existing_file_is_given_the_configured_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = scratch_dir("jsonl-mode");
        let path = dir.join("out.jsonl");
        std::fs::write(&path, "").expect("file");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).expect("chmod");
        drop(open_output(&path, 0o600, false).expect("open"));
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn files_rotate_by_size_and_keep_max_files() {
        let dir = std::env::temp_dir().join(format!("periscope-jsonl-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("out.jsonl");
        let settings = JsonLinesSettings {
            path: Some(path.clone()),
            max_file_bytes: 100,
            max_files: 2,
            metrics_interval: None,
            host_name: String::new(),
            file_mode: 0o640,
        };
        let mut sink = Sink::open(&settings).expect("open");
        // 30-byte lines (31 with the newline): three per 100-byte file.
        for i in 0..20 {
            sink.write_line(format!("{{\"line\":{i:>20}}}    ").as_bytes())
                .expect("write");
        }
        sink.flush().expect("flush");
        let read = |p: &std::path::Path| std::fs::read_to_string(p).expect("file");
        let numbered = |n: u32| dir.join(format!("out.jsonl.{n}"));
        assert!(numbered(1).exists() && numbered(2).exists());
        assert!(!numbered(3).exists(), "at most max_files rotated files");
        for file in [path.clone(), numbered(1), numbered(2)] {
            let text = read(&file);
            assert!(
                text.len() <= 100,
                "{} has {} bytes",
                file.display(),
                text.len()
            );
            for line in text.lines() {
                serde_json::from_str::<Json>(line).expect("whole lines only");
            }
        }
        // The newest lines are in the live file, the next older in .1.
        assert!(read(&path).contains(&format!("{:>20}", 19)));
        assert!(read(&numbered(1)).contains(&format!("{:>20}", 16)));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
