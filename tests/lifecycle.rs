//! End-to-end: SIGTERM and SIGKILL leave nothing of ours attached or loaded.

mod common;

use std::time::Duration;

use common::{have_root, kernel_lock, our_programs, Agent};

fn wait_until_no_programs_of_ours() -> Vec<String> {
    // Program teardown after the last descriptor closes is deferred by the kernel (RCU).
    let mut left = our_programs();
    for _ in 0..50 {
        if left.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        left = our_programs();
    }
    left
}

#[test]
fn sigterm_detaches_everything() {
    if !have_root("sigterm_detaches_everything") {
        return;
    }
    let _kernel = kernel_lock();
    assert_eq!(
        wait_until_no_programs_of_ours(),
        Vec::<String>::new(),
        "clean start"
    );
    let mut agent = Agent::start("");
    assert!(
        !our_programs().is_empty(),
        "the agent's programs are loaded"
    );
    agent.signal(libc::SIGTERM);
    let status = agent.child.wait().expect("agent exits");
    assert!(status.success(), "clean exit on SIGTERM: {status}");
    assert_eq!(wait_until_no_programs_of_ours(), Vec::<String>::new());
}

#[test]
fn sigint_detaches_everything() {
    if !have_root("sigint_detaches_everything") {
        return;
    }
    let _kernel = kernel_lock();
    let mut agent = Agent::start("");
    agent.signal(libc::SIGINT);
    let status = agent.child.wait().expect("agent exits");
    assert!(status.success(), "clean exit on SIGINT: {status}");
    assert_eq!(wait_until_no_programs_of_ours(), Vec::<String>::new());
}

#[test]
fn sigkill_leaves_nothing_behind() {
    if !have_root("sigkill_leaves_nothing_behind") {
        return;
    }
    let _kernel = kernel_lock();
    let mut agent = Agent::start("");
    assert!(!our_programs().is_empty());
    agent.signal(libc::SIGKILL);
    let _ = agent.child.wait();
    assert_eq!(wait_until_no_programs_of_ours(), Vec::<String>::new());
}
