//! End-to-end: local processes cannot take :9101 away from a scraper, by holding idle
//! connections, by trickling request heads, or by a storm of scrapes.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{have_root, kernel_lock, Agent};

/// Lets this process hold the attack's connections (its soft limit may be 1024).
fn raise_own_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain getrlimit/setrlimit on a struct of ours.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_max.min(65_536);
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
}

/// One scrape on a fresh connection, within `timeout`: did it get the exposition?
fn scrape_once(port: u16, timeout: Duration) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), timeout) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(timeout));
    let _ = stream.set_write_timeout(Some(timeout));
    if stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut body = Vec::new();
    let _ = stream.read_to_end(&mut body);
    let text = String::from_utf8_lossy(&body);
    text.starts_with("HTTP/1.1 200") && text.contains("periscope_build_info")
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

#[test]
fn a_scraper_is_served_through_idle_trickling_and_storming_clients() {
    if !have_root("a_scraper_is_served_through_idle_trickling_and_storming_clients") {
        return;
    }
    let _kernel = kernel_lock();
    raise_own_fd_limit();
    // The agent under the soft and hard limit of 1024 files a unit may give it.
    let agent = Agent::start_wrapped("", &[], &["prlimit", "--nofile=1024:1024", "--"]);
    let port = agent.port;
    let stop = Arc::new(AtomicBool::new(false));

    // 1,100 idle connections, opened at once.
    let idle: Vec<TcpStream> = (0..1100)
        .filter_map(|_| TcpStream::connect(("127.0.0.1", port)).ok())
        .collect();
    // 500 connections trickling a request head, a byte a second.
    let trickle = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut conns: Vec<TcpStream> = (0..500)
                .filter_map(|_| TcpStream::connect(("127.0.0.1", port)).ok())
                .collect();
            let head = b"GET /metrics HTTP/1.1\r\nHost: t\r\nX-Slow: ";
            let mut at = 0;
            while !stop.load(Ordering::Relaxed) {
                let byte = [head[at % head.len()]];
                // A connection the agent closed fails here and is dropped.
                conns.retain_mut(|c| c.write_all(&byte).is_ok());
                at += 1;
                std::thread::sleep(Duration::from_secs(1));
            }
            conns.len()
        })
    };
    // A storm: 50 clients scraping as fast as they are answered.
    let storm = Command::new("wrk")
        .args(["-t2", "-c50", "-d40s"])
        .arg(format!("http://127.0.0.1:{port}/metrics"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("wrk runs (scripts/setup.sh --test installs it)");
    std::thread::sleep(Duration::from_secs(2));

    // A scraper at 2 Hz, each scrape on a fresh connection with a 2 s timeout.
    let (mut served, mut total) = (0, 0);
    for _ in 0..40 {
        total += 1;
        if scrape_once(port, Duration::from_secs(2)) {
            served += 1;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let during = rss_kib(agent.pid());
    stop.store(true, Ordering::Relaxed);
    let mut storm = storm;
    let _ = storm.kill();
    let _ = storm.wait();
    let _ = trickle.join();
    drop(idle);

    eprintln!("served {served} of {total} scrapes under attack; agent RSS {during} KiB");
    assert!(
        served * 100 >= total * 99,
        "a 2 Hz scraper was served {served} of {total} times under attack"
    );
    let m = agent.metrics();
    let open = m.one("periscope_endpoint_connections", &[]);
    assert!(
        open <= 256.0,
        "open connections stay within the cap: {open}"
    );
    assert!(
        m.one(
            "periscope_endpoint_connections_closed_total",
            &[("reason", "evicted")]
        ) > 0.0,
        "idle connections were closed to make room"
    );
    assert!(
        during < 64 * 1024,
        "the agent's memory stays bounded under attack: {during} KiB"
    );
}
