//! Periscope's command line.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use periscope::agent;
use periscope::config::Config;
use periscope::probes::BUILT_IN;

#[derive(Parser)]
#[command(
    name = "periscope",
    version,
    about = "eBPF observability agent: kernel-aggregated metrics for Prometheus"
)]
struct Cli {
    /// Log level or filter (error, warn, info, debug, trace, or a tracing filter); RUST_LOG overrides it.
    #[arg(long, global = true, default_value = "info")]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load the probes and serve metrics until SIGINT or SIGTERM.
    Run {
        /// YAML configuration file; without it, the embedded defaults are used.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Web configuration (TLS, basic auth) in the Prometheus exporter-toolkit format;
        /// overrides prometheus.web_config_file.
        #[arg(long = "web.config.file")]
        web_config_file: Option<PathBuf>,
    },
    /// List the built-in probes: whether this kernel runs them and how they attach.
    Probes {
        /// YAML configuration file, for the probes' settings.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Also list the kernel features the probes use, each tried by a real load.
        #[arg(long)]
        features: bool,
    },
    /// Attach floor programs until SIGINT/SIGTERM: empty ones on the syscall or socket hooks,
    /// or ones that only copy socket bytes; the least any tracer of that kind pays on this
    /// kernel, for benchmarks.
    #[command(hide = true)]
    Floor {
        /// Which hooks: every syscall, the socket hooks of the http probe, or those hooks
        /// copying the first bytes of every TCP read and write.
        #[arg(long, value_enum, default_value = "syscalls")]
        hooks: periscope::kernel::floor::FloorHooks,
    },
    /// Sample the CPU stacks of every process (or one) for a while and write the profile.
    Profile {
        /// How long to sample.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Only this process.
        #[arg(long, conflicts_with = "container")]
        pid: Option<u32>,
        /// Only the processes of this container (its id, or the start of it).
        #[arg(long)]
        container: Option<String>,
        /// Samples per second on each CPU.
        #[arg(long, default_value_t = 99, value_parser = clap::value_parser!(u64).range(1..=10_000))]
        frequency: u64,
        /// folded: one line per stack, for flame-graph tools; pprof: gzip-compressed
        /// profile.proto, for `go tool pprof`, Pyroscope and Grafana; svg: a flame graph.
        #[arg(long, value_enum, default_value = "folded")]
        format: ProfileFormat,
        /// Where to write it.
        #[arg(long, short)]
        output: PathBuf,
    },
    /// Print the embedded default configuration, every key documented.
    DefaultConfig,
    /// Validate a configuration file and exit non-zero on the first error.
    CheckConfig {
        /// The YAML file to check.
        file: PathBuf,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ProfileFormat {
    Folded,
    Pprof,
    Svg,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log_level);
    match dispatch(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("periscope: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(level: &str) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    agent::route_libbpf_logs();
}

fn load_config(path: Option<&PathBuf>) -> Result<Config> {
    match path {
        Some(path) => Ok(Config::load(path)?),
        None => Ok(Config::embedded_default()),
    }
}

fn dispatch(command: Command) -> Result<()> {
    match command {
        Command::Run {
            config,
            web_config_file,
        } => {
            let mut config = load_config(config.as_ref())?;
            if let Some(web) = web_config_file {
                config.prometheus.web_config_file = web.display().to_string();
            }
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            runtime.block_on(agent::run(config))
        }
        Command::Probes { config, features } => {
            let config = load_config(config.as_ref())?;
            list_probes(&config, features)
        }
        Command::Floor { hooks } => {
            agent::check_kernel()?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            runtime.block_on(async {
                let mut signals = agent::Signals::install()?;
                let _floor = periscope::kernel::floor::Floor::attach(hooks)
                    .context("attaching the empty floor programs")?;
                println!("periscope: floor programs attached to {}", hooks.describe());
                signals.recv().await;
                Ok(())
            })
        }
        Command::Profile {
            seconds,
            pid,
            container,
            frequency,
            format,
            output,
        } => profile(
            seconds,
            Target { pid, container },
            frequency,
            format,
            &output,
        ),
        Command::DefaultConfig => {
            print!("{}", *periscope::config::DEFAULT_CONFIG_YAML);
            Ok(())
        }
        Command::CheckConfig { file } => {
            Config::load(&file)?;
            println!("{}: valid", file.display());
            Ok(())
        }
    }
}

/// What `periscope profile` samples: one process, one container's, or every one.
struct Target {
    pid: Option<u32>,
    container: Option<String>,
}

fn profile(
    seconds: u64,
    target: Target,
    frequency_hz: u64,
    format: ProfileFormat,
    output: &std::path::Path,
) -> Result<()> {
    use periscope::export::profile::{flamegraph, pprof};
    use periscope::probes::profile::finish;
    use periscope::probes::profile::sampler::{Sampler, SamplerOptions};

    agent::check_kernel()?;
    let Target { pid, container } = target;
    if let Some(pid) = pid {
        anyhow::ensure!(
            std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "no process {pid}"
        );
    }
    let cgroup = container
        .as_deref()
        .map(periscope::probes::profile::container_cgroup)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let options = SamplerOptions {
        frequency_hz,
        pid,
        cgroup,
        max_stacks: 16_384,
        max_counts: 16_384,
        attach: true,
    };
    let start = std::time::SystemTime::now();
    let sampler = Sampler::start(&options).context("starting the CPU sampler")?;
    println!(
        "periscope: sampling {} at {frequency_hz} Hz on {} CPUs for {seconds} s",
        match (pid, &container) {
            (Some(p), _) => format!("process {p}"),
            (None, Some(id)) => format!("the processes of container {id}"),
            (None, None) => "every process".to_string(),
        },
        sampler.cpus()
    );
    std::thread::sleep(std::time::Duration::from_secs(seconds));
    let sampled = std::time::Instant::now();
    let profile = finish(sampler, start, frequency_hz);
    let processes: std::collections::HashSet<u32> = profile.stacks.iter().map(|s| s.pid).collect();
    println!(
        "periscope: symbolized the stacks of {} processes in {} ms ({} addresses without a symbol)",
        processes.len(),
        sampled.elapsed().as_millis(),
        profile.losses.unsymbolized
    );
    let bytes = match format {
        ProfileFormat::Folded => profile.folded().into_bytes(),
        ProfileFormat::Pprof => pprof::encode(&profile).context("compressing the profile")?,
        ProfileFormat::Svg => flamegraph::svg(&profile).into_bytes(),
    };
    std::fs::write(output, bytes).with_context(|| format!("writing {}", output.display()))?;
    println!(
        "periscope: {} samples of {} processes, {} distinct stacks; wrote {}",
        profile.samples(),
        processes.len(),
        profile.stacks.len(),
        output.display()
    );
    let losses = profile.losses;
    if losses.truncated > 0 {
        println!(
            "periscope: {} samples have user stacks cut short (code built without frame pointers)",
            losses.truncated
        );
    }
    if losses.lost_stacks + losses.uncounted > 0 {
        println!(
            "periscope: {} samples lost a stack to a collision in the stack map, {} were not counted (count map full)",
            losses.lost_stacks, losses.uncounted
        );
    }
    Ok(())
}

fn list_probes(config: &Config, features: bool) -> Result<()> {
    let mut kernel = agent::check_kernel()?;
    let yes_no = |b: bool| if b { "yes" } else { "no" };
    println!("kernel {}", kernel.release);
    println!("  BTF:              {}", yes_no(kernel.btf));
    println!(
        "  tracefs:          {}",
        kernel
            .tracefs
            .unwrap_or("not mounted (mounted at start when a probe needs it)")
    );
    println!();
    if features {
        list_features(kernel.tracefs.is_some());
    }
    let (_probes, reports) = agent::load_probes(
        config,
        &mut kernel,
        false,
        &periscope::enrich::Workloads::default(),
        &periscope::model::connections::AgentConnections::default(),
    );
    println!("PROBE      SUPPORTED  ATTACH METHOD / REASON");
    for report in reports {
        let enabled = BUILT_IN
            .iter()
            .any(|spec| spec.name() == report.probe && spec.enabled(&config.probes));
        let (supported, detail) = match report.outcome {
            Ok(method) => ("yes", method),
            Err(reason) if !enabled => ("off", reason),
            Err(reason) => ("no", reason),
        };
        let supported = if report.degraded.is_empty() || supported != "yes" {
            supported
        } else {
            "degraded"
        };
        println!("{:<10} {:<10} {}", report.probe, supported, detail);
        for degraded in &report.degraded {
            println!("{:<21} {degraded}", "");
        }
    }
    Ok(())
}

/// Each kernel feature the probes use, as a real load on this kernel answers.
fn list_features(tracefs: bool) {
    let reports = periscope::kernel::features::probe(tracefs);
    let width = reports.iter().map(|r| r.name.len()).max().unwrap_or(0);
    println!("{:<width$}  {:<24}  USED BY", "KERNEL FEATURE", "HERE");
    for report in reports {
        let here = match &report.outcome {
            Ok(()) => "yes".to_string(),
            Err(why) => format!("no ({why})"),
        };
        println!("{:<width$}  {:<24}  {}", report.name, here, report.used_by);
    }
    println!();
}
