//! A tight TCP connect/accept/close loop over loopback, for the tcp probe's benchmark:
//! prints connections per second.
//!
//! The server closes first, so TIME_WAIT sockets are the server's: a client's would hold
//! its ephemeral port, and the 28,000 of them would run out within seconds. The client
//! waits for the server's FIN, then closes.
//!
//! `cargo run --release --example tcp_connect_loop -- SECONDS [THREADS]`

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn main() {
    let mut args = std::env::args().skip(1);
    let seconds: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(5);
    let threads: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(1);
    let listener = match TcpListener::bind("127.0.0.1:0") {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!("tcp_connect_loop: cannot listen on loopback: {err}");
            std::process::exit(1);
        }
    };
    let Ok(address) = listener.local_addr() else {
        eprintln!("tcp_connect_loop: the listener has no address");
        std::process::exit(1);
    };
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            drop(conn);
        }
    });
    let running = Arc::new(AtomicBool::new(true));
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let (running, done, failed) = (running.clone(), done.clone(), failed.clone());
            std::thread::spawn(move || {
                while running.load(Ordering::Relaxed) {
                    match TcpStream::connect(address) {
                        Ok(mut stream) => {
                            let mut sink = [0u8; 16];
                            let _ = stream.read(&mut sink);
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(seconds));
    running.store(false, Ordering::Relaxed);
    let elapsed = start.elapsed().as_secs_f64();
    for worker in workers {
        let _ = worker.join();
    }
    let failed = failed.load(Ordering::Relaxed);
    if failed > 0 {
        eprintln!("tcp_connect_loop: {failed} connects failed");
    }
    println!("{:.0}", done.load(Ordering::Relaxed) as f64 / elapsed);
}
